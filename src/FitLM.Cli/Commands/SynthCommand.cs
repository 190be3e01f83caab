using System.CommandLine;
using System.Diagnostics;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Storage;
using FitLM.Conversion;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm synth`: a random-weight GGUF at a real model's shapes, for benchmarks (llama.cpp loads it too).</summary>
internal static class SynthCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--output", "-o") { Description = "GGUF file to write", Required = true };
        var shape = new Option<string>("--shape")
        {
            Description = "model shape: " + string.Join(", ", SyntheticShape.Known.Select(s => s.Description)),
            DefaultValueFactory = _ => "llama-0.8b",
        };
        var type = new Option<string>("--type")
        {
            Description = "weight type, as llama-quantize would mix it",
            HelpName = string.Join("|", SyntheticModel.FileTypes),
            DefaultValueFactory = _ => "q8_0",
        };
        var vocab = new Option<string>("--vocab")
        {
            Description = "GGUF whose tokenizer the model gets (its size sets the vocabulary)",
            DefaultValueFactory = _ => Path.Combine("..", "shared", "tokenizer-tests", "ggml-vocab-llama-spm.gguf"),
        };
        var seed = new Option<ulong>("--seed", "-s") { Description = "random seed", DefaultValueFactory = _ => 42UL };
        var threads = Common.Threads();
        var cmd = new Command("synth", "write a random-weight model at real shapes (for benchmarks)") { output, shape, type, vocab, seed, threads };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            Common.ApplyThreads(r.GetValue(threads));
            string outPath = r.GetValue(output)!;
            if (Directory.Exists(outPath)) throw new FitLMException($"{outPath}: is a folder; give the GGUF file to write");
            string vocabPath = r.GetValue(vocab)!;
            if (!File.Exists(vocabPath)) throw new FitLMException($"{vocabPath}: vocabulary GGUF not found (give one with --vocab)");
            OutputFile.EnsureNotInput(outPath, vocabPath);
            var s = SyntheticShape.Parse(r.GetValue(shape)!);
            string t = r.GetValue(type)!;
            var sw = Stopwatch.StartNew();
            var result = Progress.Run($"synth {s.Name} {t}", 1000, report =>
                SyntheticModel.Write(outPath, s, t, vocabPath, r.GetValue(seed),
                    (done, total) => report(total > 0 ? 1000.0 * done / total : 0, null), ct));
            Console.Out.WriteLine($"wrote {result.Path}: {s.Name} {t}, {result.Tensors} tensors, {result.Parameters:N0} parameters, " +
                $"{ProcessMemory.Format(result.Bytes)} in {sw.Elapsed.TotalSeconds:F1} s");
            return 0;
        }));
        return cmd;
    }
}
