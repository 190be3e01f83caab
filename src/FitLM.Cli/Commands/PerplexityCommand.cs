using System.CommandLine;
using System.Diagnostics;
using FitLM.Evaluation;
using FitLM.Model;
using FitLM.Memory;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm perplexity`: llama-perplexity's protocol, ending with its "Final estimate" line.</summary>
internal static class PerplexityCommand
{
    public static Command Create()
    {
        var load = new ModelLoadOptions(defaultContext: 512);
        var file = new Option<string>("--file", "-f") { Description = "text file to evaluate ('-': standard input)", Required = true };
        var chunks = ChunksOption();
        var batch = new Option<int>("--batch-size", "-b") { Description = "tokens evaluated per batch", DefaultValueFactory = _ => 512 };
        var cmd = new Command("perplexity", "measure perplexity on a text file (llama.cpp protocol)") { file, chunks, batch };
        load.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(ct =>
        {
            int maxChunks = ReadChunks(r, chunks);
            int nCtx = load.ContextSize(r);
            if (nCtx < 8) throw new FitLMException($"--ctx-size {nCtx} is out of range (8 or more)");
            int b = r.GetValue(batch);
            if (b < 1) throw new FitLMException($"--batch-size {b} is out of range");
            string path = r.GetValue(file)!;
            // Read before the load, so a missing file fails at once (stdin is read once, here).
            string text = TextInput.Read(path, "text file");
            using var lm = load.Load(r, load.Read(r, new LoadOptions { MaxBatch = Math.Min(b, nCtx), LogitRows = nCtx / 2, HostBytes = Footprint.TextBytes(text.Length) }));
            var sw = Stopwatch.StartNew();
            var tokens = lm.Tokenizer.Encode(text, addSpecial: true);
            Console.Error.WriteLine($"tokenizing the input: {tokens.Length} tokens in {sw.Elapsed.TotalSeconds:F2} s");
            int nChunks = maxChunks > 0 ? Math.Min(maxChunks, tokens.Length / nCtx) : tokens.Length / nCtx;
            Console.Error.WriteLine($"calculating perplexity over {nChunks} chunks, n_ctx={nCtx}");
            sw.Restart();
            var result = Progress.Run("perplexity", nChunks, report =>
                Perplexity.Run(lm, tokens, nCtx, maxChunks, (done, total, ppl) =>
                {
                    report(done, $"perplexity [{done}/{total}] PPL {ppl:F4}");
                    if (!Progress.Interactive) Console.Error.Write($"[{done}]{ppl:F4},");
                }, ct));
            if (!Progress.Interactive) Console.Error.WriteLine();
            Console.Error.WriteLine($"{result.TokensScored} tokens scored in {sw.Elapsed.TotalSeconds:F1} s ({result.TokensScored * 2 / sw.Elapsed.TotalSeconds:F1} tokens/s evaluated)");
            bool peakPrinted = MemoryOptions.Report(lm);
            Common.ReportWeights(lm);
            if (!peakPrinted) Common.PrintPeakRss();
            Console.Out.WriteLine($"Final estimate: PPL = {result.Ppl:F4} +/- {result.Error:F5}");
            return 0;
        }));
        return cmd;
    }

    /// <summary>--chunks as llama-perplexity takes it: -1 (the default) evaluates every chunk, N >= 1 the first N; anything else is refused.</summary>
    public static Option<int> ChunksOption() => new("--chunks")
    {
        Description = "evaluate only the first N chunks (-1: all, as llama-perplexity)",
        DefaultValueFactory = _ => -1,
    };

    public static int ReadChunks(ParseResult r, Option<int> chunks)
    {
        int n = r.GetValue(chunks);
        if (n == -1 || n >= 1) return n;
        throw new FitLMException($"--chunks must be >= 1 (or -1, the default, for all chunks); got {n}");
    }
}
