using System.CommandLine;
using System.Diagnostics;
using FitLM.Evaluation;
using FitLM.Model;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm perplexity`: llama-perplexity's protocol, ending with its "Final estimate" line.</summary>
internal static class PerplexityCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        var file = new Option<string>("--file", "-f") { Description = "text file to evaluate", Required = true };
        var ctx = Common.Context(512);
        var chunks = new Option<int>("--chunks") { Description = "maximum number of chunks (-1: all)", DefaultValueFactory = _ => -1 };
        var batch = new Option<int>("--batch-size", "-b") { Description = "tokens evaluated per batch", DefaultValueFactory = _ => 512 };
        var threads = Common.Threads();
        var memory = new MemoryOptions();
        var kv = new KvOptions();
        var cmd = new Command("perplexity", "measure perplexity on a text file (llama.cpp protocol)") { model, file, ctx, chunks, batch, threads };
        memory.AddTo(cmd);
        var stack = new StackOptions(); stack.AddTo(cmd); // BitStack: --weights, --stack-cache
        kv.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(ct =>
        {
            Common.ApplyThreads(r.GetValue(threads));
            string path = r.GetValue(file)!;
            if (Directory.Exists(path)) throw new FitLMException($"{path}: is a directory, not a text file");
            if (!File.Exists(path)) throw new FitLMException($"{path}: no such file");
            int nCtx = r.GetValue(ctx);
            if (nCtx < 8 || nCtx > 1 << 20) throw new FitLMException($"--ctx-size {nCtx} is out of range (8 or more)");
            int b = r.GetValue(batch);
            if (b < 1) throw new FitLMException($"--batch-size {b} is out of range");
            using var lm = LanguageModel.Load(r.GetValue(model)!, kv.Apply(r, stack.Apply(r, memory.Apply(r, new LoadOptions { ContextLength = nCtx, MaxBatch = Math.Min(b, nCtx), LogitRows = nCtx / 2 }))));
            var sw = Stopwatch.StartNew();
            string text = File.ReadAllText(path);
            var tokens = lm.Tokenizer.Encode(text, addSpecial: true);
            Console.Error.WriteLine($"tokenizing the input: {tokens.Length} tokens in {sw.Elapsed.TotalSeconds:F2} s");
            int maxChunks = r.GetValue(chunks);
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
            MemoryOptions.Report(lm);
            StackOptions.Report(lm);
            Common.PrintPeakRss();
            Console.Out.WriteLine($"Final estimate: PPL = {result.Ppl:F4} +/- {result.Error:F5}");
            return 0;
        }));
        return cmd;
    }
}
