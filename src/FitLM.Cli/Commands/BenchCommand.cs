using System.CommandLine;
using FitLM.Evaluation;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Memory;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm bench`: llama-bench's pp/tg tests, with a table or JSON llama-bench scripts can read.</summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var load = new ModelLoadOptions();
        load.Context.Description = "context size in tokens (0: what the tests need, the larger of -p and -n plus one)";
        var prompt = new Option<int>("--n-prompt", "-p") { Description = "prompt tokens for the pp test (0: skip)", DefaultValueFactory = _ => 128 };
        var gen = new Option<int>("--n-gen", "-n") { Description = "generated tokens for the tg test (0: skip)", DefaultValueFactory = _ => 64 };
        var reps = new Option<int>("--repetitions", "-r") { Description = "repetitions of each test", DefaultValueFactory = _ => 3 };
        var json = new Option<bool>("--json") { Description = "print a JSON array (llama-bench's fields) instead of a table" };
        var noBandwidth = new Option<bool>("--no-bandwidth") { Description = "skip measuring the machine's memory bandwidth" };
        var profile = new Option<bool>("--profile") { Description = "print where each test's time goes, by phase of the forward pass (to stderr)" };
        var parallel = new Option<int>("--parallel", "-np") { Description = "also decode N sequences together, as the server batches them (test tgNxP: all sequences' tokens per second)", DefaultValueFactory = _ => 1 };
        var batchInvariant = new Option<bool>("--batch-invariant") { Description = "with --parallel: each sequence's rows computed as alone (the server's default)", DefaultValueFactory = _ => true };
        var cmd = new Command("bench", "measure prompt processing and generation speed (llama-bench style)") { prompt, gen, reps, json, noBandwidth, profile, parallel, batchInvariant };
        load.AddTo(cmd);
        var speculative = new SpeculativeOptions();
        speculative.AddTo(cmd);
        var specPrompt = new Option<string?>("--spec-prompt") { Description = "with --lookup/--draft: the prompt of the speculative test (a file; default: -p random tokens)" };
        cmd.Add(specPrompt);
        cmd.SetAction(r => Common.Guard(ct =>
        {
            int t = r.GetValue(load.Threads);
            int np = r.GetValue(prompt), ng = r.GetValue(gen), nr = r.GetValue(reps);
            if (np < 0 || ng < 0 || np + ng == 0) throw new FitLMException("give -p and/or -n greater than 0");
            if (nr < 1 || nr > 1000) throw new FitLMException($"--repetitions {nr} is out of range (1..1000)");
            int npar = r.GetValue(parallel);
            if (npar < 1 || npar > 256) throw new FitLMException($"--parallel {npar} is out of range (1..256)");
            string path = load.ModelPath(r);
            int needed = Math.Max(np, ng) + 1;
            bool spec = speculative.Enabled(r);
            if (spec && ng == 0) throw new FitLMException("--lookup and --draft measure generation: give -n greater than 0");
            if (spec) needed = Math.Max(needed, ng + speculative.DraftMaxFor(r) + 1 + Math.Max(np, 512)); // room for the prompt
            var options = load.Read(r, new LoadOptions { ContextLength = needed, MaxBatch = Math.Max(npar, Math.Max(1, np)), DeviceSequences = npar });
            using var draft = speculative.LoadDraft(r, options);
            options = speculative.ForTarget(r, options, draft);
            if (options.ContextLength < needed) throw new FitLMException($"--ctx-size {options.ContextLength} is too small for the tests (at least {needed})");
            using var lm = load.Load(r, options);
            // BitStack: a stacked model's size is the prefix loaded, its parameters the matrices' logical shapes.
            var stackPlan = lm.Plan.Stack;
            long size = stackPlan?.WeightBytes ?? lm.Source.Tensors.Sum(x => x.ByteSize);
            long parameters = Benchmark.Parameters(lm);
            string type = stackPlan is { } sp ? $"BitStack-{sp.BitsPerWeight:F2}" : DominantType(lm.Source);
            string modelDesc = $"{lm.Config.Architecture} {parameters / 1e9:F1}B {type}";
            var results = new List<BenchResult>();
            PhaseTimes.Enabled = r.GetValue(profile);
            void Profiled(Func<BenchResult> test)
            {
                PhaseTimes.Reset();
                var result = test();
                results.Add(result);
                if (PhaseTimes.Enabled) PrintProfile(result);
            }
            if (np > 0) Profiled(() => Benchmark.Prompt(lm, np, nr, ct));
            Weights.ExpertCachedWeights.Of(lm.Weights)?.Statistics.Reset(); // the expert cache's line describes decoding (tg)
            if (ng > 0) Profiled(() => Benchmark.Generate(lm, ng, nr, ct));
            if (ng > 0 && npar > 1) Profiled(() => Benchmark.GenerateParallel(lm, ng, npar, nr, r.GetValue(batchInvariant), ct));
            SpeculativeBench.Outcome? specOutcome = null;
            if (spec)
            {
                using var drafter = speculative.CreateDrafter(r, lm, draft)!;
                var tokens = SpeculativeBench.Prompt(lm, r.GetValue(specPrompt), np, lm.Transformer.MaxContext - ng - speculative.DraftMaxFor(r) - 1);
                specOutcome = SpeculativeBench.Run(lm, drafter, speculative.DraftMaxFor(r), drafter.Name, tokens, ng, nr, ct) with
                {
                    PassCost = SpeculativeBench.PassCost(lm, tokens, speculative.DraftMaxFor(r), nr, ct),
                };
                results.Add(specOutcome.Plain);
                results.Add(specOutcome.Speculative);
            }
            PhaseTimes.Enabled = false;
            long bytesPerToken = Benchmark.WeightBytesPerToken(lm); // a stacked model: its caches (or blocks) at the loaded size
            // The bandwidth probe's buffer stays within the budget beside the loaded model; too little room: no probe.
            // On a GPU the yardstick is the card's own copy bandwidth, measured the same way `fitlm devices --check` does.
            var device = lm.Transformer.Device;
            long probeBytes = r.GetValue(noBandwidth) || device != null ? 0 : MemoryBandwidth.ProbeBytesWithin(lm.Plan.BudgetBytes);
            double bandwidth = device != null ? (r.GetValue(noBandwidth) ? 0 : device.MemoryBandwidth())
                : probeBytes > 0 ? MemoryBandwidth.Measure(t, probeBytes) : 0;
            if (device == null && probeBytes == 0 && !r.GetValue(noBandwidth))
                Console.Error.WriteLine($"memory bandwidth: not measured (the probe needs {ProcessMemory.Format(MemoryBandwidth.MinProbeBytes)} beside the model, more than the budget leaves)");
            long peak = ProcessMemory.PeakRssBytes(); // after every probe: the process's real peak

            if (r.GetValue(json))
            {
                var rows = results.Select(x => new Dictionary<string, object>
                {
                    ["build_commit"] = "fitlm",
                    ["model_filename"] = path,
                    ["model_type"] = modelDesc,
                    ["model_size"] = size,
                    ["model_n_params"] = parameters,
                    ["n_threads"] = t,
                    ["n_prompt"] = x.Test.StartsWith("pp") ? x.Tokens : 0,
                    ["n_gen"] = x.Test.StartsWith("tg") ? x.Tokens : 0,
                    ["test"] = x.Test,
                    ["avg_ns"] = (long)(1e9 * x.Tokens / x.Mean),
                    ["stddev_ns"] = (long)(1e9 * x.Tokens * x.StdDev / (x.Mean * x.Mean)),
                    ["avg_ts"] = x.Mean,
                    ["stddev_ts"] = x.StdDev,
                    ["samples_ts"] = x.TokensPerSecond,
                    ["peak_rss_bytes"] = peak,
                    ["weight_bytes_per_token"] = bytesPerToken,
                    ["memory_bandwidth_bytes_per_s"] = bandwidth,
                }).ToArray();
                Console.Out.WriteLine(CliJson.Indented(rows));
                if (specOutcome != null) SpeculativeBench.Print(Console.Error, speculative.Describe(r), specOutcome);
                return 0;
            }

            var o = Console.Out;
            o.WriteLine($"| {"model",-24} | {"size",10} | {"params",10} | {"backend",7} | {"threads",7} | {"test",6} | {"t/s",20} |");
            o.WriteLine($"| {new string('-', 24)} | {new string('-', 9)}: | {new string('-', 9)}: | {new string('-', 7)} | {new string('-', 6)}: | {new string('-', 6)} | {new string('-', 19)}: |");
            foreach (var x in results)
                o.WriteLine($"| {modelDesc,-24} | {ProcessMemory.Format(size),10} | {parameters / 1e6,8:F2} M | {(device != null ? "CUDA" : "CPU"),7} | {t,7} | {x.Test,6} | {$"{x.Mean:F2} ± {x.StdDev:F2}",20} |");
            o.WriteLine();
            var tg = results.FirstOrDefault(x => x.Test.StartsWith("tg"));
            if (tg != null)
            {
                double achieved = bytesPerToken * tg.Mean;
                o.WriteLine($"decode reads {ProcessMemory.Format(bytesPerToken)} of weights per token: {achieved / 1e9:F2} GB/s achieved" +
                    (bandwidth <= 0 ? "" : device != null
                        ? $", {100 * achieved / bandwidth:F0}% of the {bandwidth / 1e9:F0} GB/s the GPU copies (read + write)"
                        : $", {100 * achieved / bandwidth:F0}% of the {bandwidth / 1e9:F1} GB/s this machine reads with {t} thread(s)"));
            }
            if (tg != null && device is { StreamedBytesPerToken: > 0 } streaming)
            {
                // Streamed layers: the bound is the host-to-device copy of every streamed byte once per token; layers read from
                // the model file each token (--memory, --stream naive) are bound by that read as well, which is said.
                double h2d = r.GetValue(noBandwidth) ? 0 : streaming.HostToDeviceBandwidth();
                double copied = streaming.StreamedBytesPerToken * tg.Mean;
                long fromFile = streaming.FileBytesPerToken;
                o.WriteLine($"decode streams {ProcessMemory.Format(streaming.StreamedBytesPerToken)} of layers to the GPU per token: {copied / 1e9:F2} GB/s" +
                    (h2d > 0 ? $", {100 * copied / h2d:F0}% of the {h2d / 1e9:F1} GB/s host-to-device copy (bound: {h2d / streaming.StreamedBytesPerToken:F2} tokens/s)" : "") +
                    (fromFile > 0 ? $"; {ProcessMemory.Format(fromFile)} of it read from the model file each token ({fromFile * tg.Mean / 1e9:F2} GB/s), which bounds it further" : ""));
            }
            if (specOutcome != null) SpeculativeBench.Print(o, speculative.Describe(r), specOutcome);
            Common.ReportWeights(lm);
            o.WriteLine($"peak RSS: {ProcessMemory.Format(Math.Max(peak, ProcessMemory.PeakRssBytes()))}"); // read again: the table's printing included
            return 0;
        }));
        return cmd;
    }

    /// <summary>Phase shares of one test (warm-up included), so a slow phase stands out.</summary>
    private static void PrintProfile(BenchResult result)
    {
        var phases = PhaseTimes.Snapshot();
        double total = phases.Sum(p => p.Seconds);
        if (total <= 0) return;
        Console.Error.WriteLine($"{result.Test}: " + string.Join(", ", phases.Where(p => p.Seconds > 0)
            .Select(p => $"{p.Phase} {100 * p.Seconds / total:F1}%")) + $" of {total:F2} s");
    }

    private static string DominantType(IModelSource src) =>
        src.Tensors.GroupBy(x => x.Type).OrderByDescending(g => g.Sum(x => x.ByteSize)).First().Key.ToString();
}
