using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using FitLM.Compression;
using FitLM.Evaluation;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Storage;
using FitLM.Weights;

namespace FitLM.Cli.Commands;

/// <summary>
/// `fitlm compress --method bitstack`: a stacked GGUF whose prefixes are models of every size (docs/bitstack.md);
/// `fitlm ladder`: perplexity along a stacked model's size ladder beside other files, as a table and an SVG plot.
/// </summary>
internal static class CompressCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        var method = new Option<string>("--method") { Description = "compression method (bitstack)", DefaultValueFactory = _ => "bitstack" };
        var calib = new Option<string>("--calib") { Description = "calibration text file (activation statistics and block order)", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "output .gguf (written under a temporary name, then renamed)", Required = true };
        var blocks = new Option<int>("--blocks") { Description = "blocks per matrix (each about 1 bit per weight)", DefaultValueFactory = _ => 16 };
        var rank = new Option<int>("--rank") { Description = "rank of each block's magnitude approximation", DefaultValueFactory = _ => new BitStackOptions().Rank };
        var calibCtx = new Option<int>("--calib-ctx") { Description = "tokens per calibration window", DefaultValueFactory = _ => 512 };
        var calibWindows = new Option<int>("--calib-windows") { Description = "calibration windows for the activation statistics", DefaultValueFactory = _ => 32 };
        var scoreCtx = new Option<int>("--score-ctx") { Description = "tokens per scoring window", DefaultValueFactory = _ => 256 };
        var scoreWindows = new Option<int>("--score-windows") { Description = "scoring windows per candidate block", DefaultValueFactory = _ => new BitStackOptions().ScoreWindows };
        var scoreLevels = new Option<int>("--score-levels") { Description = "levels ordered by measured loss (higher levels by an estimate)", DefaultValueFactory = _ => new BitStackOptions().ScoreLevels };
        var metric = new Option<string>("--score-metric") { Description = "what scores a block: kl (divergence from the uncompressed model) or nll (calibration perplexity, as BitStack)", DefaultValueFactory = _ => "kl" };
        var embdType = new Option<string>("--embd-type") { Description = "type of the token embeddings", DefaultValueFactory = _ => new BitStackOptions().EmbeddingType.ToString().ToLowerInvariant() };
        var headType = new Option<string>("--head-type") { Description = "type of the output head", DefaultValueFactory = _ => new BitStackOptions().HeadType.ToString().ToLowerInvariant() };
        var noScaling = new Option<bool>("--no-scaling") { Description = "skip the activation-aware scaling" };
        var scalingPower = new Option<double>("--scaling-power") { Description = "exponent of the activation scale (s^power)", DefaultValueFactory = _ => new BitStackOptions().ScalingPower };
        var threads = Common.Threads();
        var cmd = new Command("compress", "compress a model into a stacked (BitStack) GGUF that loads at any size")
        {
            model, method, calib, output, blocks, rank, calibCtx, calibWindows, scoreCtx, scoreWindows, scoreLevels, metric, embdType, headType, noScaling, scalingPower, threads,
        };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            Common.ApplyThreads(r.GetValue(threads));
            string m = r.GetValue(method)!;
            if (m != "bitstack") throw new FitLMException($"--method '{m}' is not a compression method (bitstack)");
            string calibPath = r.GetValue(calib)!;
            if (Directory.Exists(calibPath)) throw new FitLMException($"{calibPath}: is a directory, not a text file");
            if (!File.Exists(calibPath)) throw new FitLMException($"{calibPath}: no such file");
            OutputFile.EnsureNotInput(r.GetValue(output)!, r.GetValue(model)!, calibPath);
            string text = File.ReadAllText(calibPath);
            var o = new BitStackOptions
            {
                Blocks = r.GetValue(blocks),
                Rank = r.GetValue(rank),
                CalibContext = r.GetValue(calibCtx),
                CalibWindows = r.GetValue(calibWindows),
                ScoreContext = r.GetValue(scoreCtx),
                ScoreWindows = r.GetValue(scoreWindows),
                ScoreLevels = r.GetValue(scoreLevels),
                EmbeddingType = StackOptions.ParseType(r.GetValue(embdType)!, "--embd-type"),
                HeadType = StackOptions.ParseType(r.GetValue(headType)!, "--head-type"),
                ActivationScaling = !r.GetValue(noScaling),
                ScalingPower = r.GetValue(scalingPower),
                Metric = r.GetValue(metric) switch
                {
                    "kl" => ScoreMetric.Kl,
                    "nll" => ScoreMetric.Nll,
                    var x => throw new FitLMException($"--score-metric '{x}' is not a metric (kl, nll)"),
                },
                CalibrationNote = $"{Path.GetFileName(calibPath)} ({new FileInfo(calibPath).Length:N0} bytes)",
            };
            o = o with
            {
                CalibrationNote = o.CalibrationNote + $", {o.CalibWindows}x{o.CalibContext} tokens for statistics, {o.ScoreWindows}x{o.ScoreContext} per candidate, {o.ScoreLevels} levels scored by {o.Metric.ToString().ToLowerInvariant()}",
            };
            var sw = Stopwatch.StartNew();
            double lastPrinted = -1;
            var result = Progress.Run("compressing", 1000, report =>
                BitStackCompressor.Compress(r.GetValue(model)!, text, r.GetValue(output)!, o, (phase, f) =>
                {
                    report(f * 1000, phase);
                    if (!Progress.Interactive && f - lastPrinted >= 0.05)
                    {
                        lastPrinted = f;
                        Console.Error.WriteLine($"[{sw.Elapsed.TotalSeconds,6:F0} s] {100 * f,3:F0}% {phase}");
                    }
                }, ct));
            var w = Console.Out;
            w.WriteLine($"wrote {result.Path}: {result.FileBytes:N0} bytes, {result.Matrices} matrices x {result.Blocks} blocks in {result.Seconds:F0} s");
            w.WriteLine($"conventional tensors {result.FixedBytes:N0} bytes; smallest whole model (one block per matrix) {result.MinimumBytes:N0} bytes");
            if (result.LevelLoss.Count > 0)
                w.WriteLine("calibration loss with every matrix at b blocks: " +
                    string.Join(", ", result.LevelLoss.Select((x, i) => $"b={i + 1}: {x.ToString("F4", CultureInfo.InvariantCulture)}")));
            using var src = ModelSource.Open(result.Path);
            StackOptions.PrintLadder(src, w);
            return 0;
        }));
        return cmd;
    }

    /// <summary>`fitlm ladder`: perplexity of a stacked model at many sizes (resizing one loaded model) and of other files.</summary>
    public static Command CreateLadder()
    {
        var model = Common.Model();
        model.Description = "stacked (BitStack) .gguf";
        var file = new Option<string>("--file", "-f") { Description = "text file to evaluate", Required = true };
        var ctx = Common.Context(512);
        var chunks = PerplexityCommand.ChunksOption();
        var bits = new Option<string?>("--bits") { Description = "sizes to evaluate, as bits per weight over all parameters, comma-separated (e.g. 2.5,3,3.5,4,4.5,5)" };
        var compare = new Option<string[]>("--compare") { Description = "other models to evaluate; the stack is also evaluated at each one's weight bytes", AllowMultipleArgumentsPerToken = true };
        var reference = new Option<string?>("--reference") { Description = "an uncompressed model, drawn as a horizontal line" };
        var plot = new Option<string?>("--plot") { Description = "write the plot as SVG to this file" };
        var table = new Option<string?>("--table") { Description = "also write the markdown table to this file" };
        var resize = new Option<double>("--resize-test") { Description = "before evaluating: shrink the loaded stack by this percent of its weight bytes and grow it back, reporting time and RSS" };
        var threads = Common.Threads();
        var stackOptions = new StackOptions();
        var cmd = new Command("ladder", "perplexity along a stacked model's size ladder beside other models (table and SVG plot)")
        {
            model, file, ctx, chunks, bits, compare, reference, plot, table, resize, threads,
        };
        stackOptions.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(ct =>
        {
            Common.ApplyThreads(r.GetValue(threads));
            string path = r.GetValue(file)!;
            if (!File.Exists(path)) throw new FitLMException($"{path}: no such file");
            string[] inputs = [r.GetValue(model)!, path, r.GetValue(reference) ?? "", .. r.GetValue(compare) ?? []];
            foreach (var written in new[] { r.GetValue(table), r.GetValue(plot) })
                if (written != null) OutputFile.EnsureNotInput(written, inputs);
            if (r.GetValue(table) is { } tableOut && r.GetValue(plot) is { } plotOut) OutputFile.EnsureNotInput(plotOut, tableOut);
            string text = File.ReadAllText(path);
            int nCtx = r.GetValue(ctx);
            if (nCtx < 8) throw new FitLMException($"--ctx-size {nCtx} is out of range (8 or more)");
            int maxChunks = PerplexityCommand.ReadChunks(r, chunks);
            var load = new LoadOptions { ContextLength = nCtx, MaxBatch = nCtx, LogitRows = nCtx / 2 };
            var rows = new List<Row>();

            PerplexityResult Eval(LanguageModel lm, string what)
            {
                var tokens = lm.Tokenizer.Encode(text, addSpecial: true);
                var sw = Stopwatch.StartNew();
                var res = Progress.Run(what, Math.Max(1, maxChunks > 0 ? Math.Min(maxChunks, tokens.Length / nCtx) : tokens.Length / nCtx), report =>
                    Perplexity.Run(lm, tokens, nCtx, maxChunks, (done, total, ppl) => report(done, $"{what} [{done}/{total}] PPL {ppl:F4}"), ct));
                Console.Error.WriteLine($"{what}: PPL {res.Ppl:F4} +/- {res.Error:F5} ({sw.Elapsed.TotalSeconds:F0} s)");
                return res;
            }

            var others = new List<(string Path, long Bytes, long FileBytes, double Bits, PerplexityResult Result)>();
            foreach (var c in r.GetValue(compare) ?? [])
            {
                using var lm = LanguageModel.Load(c, load);
                long bytes = lm.Source.Tensors.Sum(t => t.ByteSize);
                long parameters = lm.Source.Tensors.Sum(t => t.Elements);
                others.Add((c, bytes, File.Exists(c) ? new FileInfo(c).Length : bytes, bytes * 8.0 / parameters, Eval(lm, Path.GetFileName(c))));
            }
            PerplexityResult? refResult = null;
            string? refPath = r.GetValue(reference);
            if (refPath != null)
            {
                using var lm = LanguageModel.Load(refPath, load);
                refResult = Eval(lm, Path.GetFileName(refPath.TrimEnd('/')));
            }

            using (var stack = LanguageModel.Load(r.GetValue(model)!, stackOptions.Apply(r, load)))
            {
                if (stack.Stacked is not { Layout: { } layout } sw)
                    throw new FitLMException($"{r.GetValue(model)}: is not a stacked model (make one with fitlm compress)");
                if (r.GetValue(resize) is > 0 and var percent) ResizeTest(stack, sw, layout, percent, text, nCtx);
                var targets = new List<(long Bytes, string Why)>();
                foreach (var b in (r.GetValue(bits) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries))
                {
                    if (!double.TryParse(b, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || v <= 0)
                        throw new FitLMException($"--bits '{b}' is not a number of bits per weight");
                    targets.Add(((long)(v * layout.Parameters / 8), $"{v:0.##} bits/weight"));
                }
                foreach (var o in others) targets.Add((o.Bytes, $"= {Path.GetFileName(o.Path)}"));
                long max = sw.WeightBytes;
                var done = new Dictionary<int, PerplexityResult>();
                foreach (var (bytes, why) in targets.OrderByDescending(t => t.Bytes))
                {
                    ct.ThrowIfCancellationRequested();
                    int k = layout.EntriesFor(bytes);
                    if (k < layout.BaseEntries || bytes > max)
                    {
                        Console.Error.WriteLine($"skipping {why}: {bytes:N0} bytes is outside this stack's ladder ({layout.BytesAt(layout.BaseEntries):N0} .. {max:N0})");
                        continue;
                    }
                    if (!done.TryGetValue(k, out var res))
                    {
                        var t0 = Stopwatch.StartNew();
                        sw.ResizeEntries(k);
                        Console.Error.WriteLine($"resized to {k} blocks ({layout.BytesAt(k):N0} bytes) in {t0.Elapsed.TotalMilliseconds:F0} ms");
                        done[k] = res = Eval(stack, $"bitstack {why}");
                    }
                    rows.Add(new Row($"BitStack {why}", layout.BytesAt(k), 0, layout.TotalBitsPerWeight(k), layout.StackBitsPerWeight(k), k, res, true));
                }
            }
            foreach (var o in others) rows.Add(new Row(Path.GetFileName(o.Path), o.Bytes, o.FileBytes, o.Bits, double.NaN, -1, o.Result, false));

            var md = new System.Text.StringBuilder();
            md.AppendLine($"| model | weight bytes | file bytes | bits/weight (all) | bits/weight (stacked matrices) | blocks | PPL |");
            md.AppendLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            foreach (var x in rows.OrderBy(x => x.Bytes).ThenBy(x => x.Stack ? 0 : 1))
                md.AppendLine($"| {x.Name} | {x.Bytes:N0} | {(x.FileBytes > 0 ? x.FileBytes.ToString("N0") : "")} | {x.Bits:F2} | " +
                    $"{(double.IsNaN(x.StackBits) ? "" : x.StackBits.ToString("F2"))} | {(x.Blocks >= 0 ? x.Blocks.ToString() : "")} | {x.Result.Ppl:F4} ± {x.Result.Error:F4} |");
            if (refResult != null) md.AppendLine($"| {Path.GetFileName(refPath!.TrimEnd('/'))} (reference) | | | | | | {refResult.Ppl:F4} ± {refResult.Error:F4} |");
            Console.Out.Write(md.ToString());
            if (r.GetValue(table) is { } tablePath) OutputFile.WriteAtomically(tablePath, tmp => File.WriteAllText(tmp, md.ToString()));
            if (r.GetValue(plot) is { } plotPath)
            {
                var series = new List<LadderPlot.Series>
                {
                    new("BitStack (FitLM)", "#1f6fb4", rows.Where(x => x.Stack).Select(x => (x.Bytes / 1e6, x.Result.Ppl, (string?)null)).ToList(), true),
                };
                if (others.Count > 0)
                    series.Add(new("llama.cpp / other files", "#d1495b", others.Select(o => (o.Bytes / 1e6, o.Result.Ppl,
                        (string?)Path.GetFileNameWithoutExtension(o.Path).Split('-').Last())).ToList(), false));
                string svg = LadderPlot.Svg($"Perplexity vs size ({Path.GetFileName(path)}, -c {nCtx}{(maxChunks > 0 ? $", {maxChunks} chunks" : "")})",
                    "weight bytes (MB, 10^6)", "perplexity", series, refResult?.Ppl, refResult != null ? $"{Path.GetFileName(refPath!.TrimEnd('/'))} {refResult.Ppl:F3}" : null,
                    others.Count > 0 ? 1.6 * others.Max(o => o.Result.Ppl) : null);
                OutputFile.WriteAtomically(plotPath, tmp => File.WriteAllText(tmp, svg));
                Console.Error.WriteLine($"wrote {plotPath}");
            }
            return 0;
        }));
        return cmd;
    }

    /// <summary>Shrinks the live stack by <paramref name="percent"/>% of its weight bytes and grows it back: time, RSS, blocks read, and logits.</summary>
    private static void ResizeTest(LanguageModel lm, StackedWeights w, StackLayout layout, double percent, string text, int nCtx)
    {
        var tokens = lm.Tokenizer.Encode(text, addSpecial: true).Take(Math.Min(nCtx - 1, 64)).ToArray();
        var logits = new float[lm.Config.Vocab];
        float[] Logits()
        {
            lm.Transformer.Forward(tokens, 0, logits, tokens.Length - 1);
            return logits.ToArray();
        }
        static long Rss()
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            HeapTrim.Native();
            return ProcessMemory.RssBytes();
        }
        var o = Console.Out;
        long bytes = w.WeightBytes;
        int entries = w.LoadedEntries;
        var before = Logits();
        long rss0 = Rss();
        var t = Stopwatch.StartNew();
        lm.Resize((long)(bytes * (1 - percent / 100)));
        double shrinkMs = t.Elapsed.TotalMilliseconds;
        long rss1 = Rss();
        int smaller = w.LoadedEntries;
        long smallBytes = w.WeightBytes;
        var shrunk = Logits();
        long read0 = w.BytesRead;
        t.Restart();
        lm.Resize(bytes);
        double growMs = t.Elapsed.TotalMilliseconds;
        long rss2 = Rss();
        var grown = Logits();
        o.WriteLine($"resize test ({percent:0.#}% of {bytes:N0} weight bytes, {entries} blocks, matrices {(w.CacheType is { } ct ? $"cached as {ct}" : "direct")}):");
        o.WriteLine($"| step | blocks | weight bytes | time | RSS | blocks read |");
        o.WriteLine($"| --- | ---: | ---: | ---: | ---: | ---: |");
        o.WriteLine($"| loaded | {entries} | {bytes:N0} | | {rss0 / 1048576.0:F1} MiB | |");
        o.WriteLine($"| shrink | {smaller} | {smallBytes:N0} | {shrinkMs:F1} ms | {rss1 / 1048576.0:F1} MiB ({(rss1 - rss0) / 1048576.0:+0.0;-0.0} MiB) | 0 B |");
        o.WriteLine($"| grow back | {w.LoadedEntries} | {w.WeightBytes:N0} | {growMs:F1} ms | {rss2 / 1048576.0:F1} MiB ({(rss2 - rss1) / 1048576.0:+0.0;-0.0} MiB) | {w.BytesRead - read0:N0} B ({layout.BlockBytesBetween(smaller, entries):N0} B of new blocks) |");
        o.WriteLine($"logits after growing back are {(before.SequenceEqual(grown) ? "identical to" : "DIFFERENT from")} those before shrinking; the smaller model's differ by up to {before.Zip(shrunk, (a, b) => Math.Abs(a - b)).Max():F3}");
    }

    private sealed record Row(string Name, long Bytes, long FileBytes, double Bits, double StackBits, int Blocks, PerplexityResult Result, bool Stack);
}
