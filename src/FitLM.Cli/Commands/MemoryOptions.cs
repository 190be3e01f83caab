using System.CommandLine;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Weights;

namespace FitLM.Cli.Commands;

/// <summary>`--memory` and `--stream`: the budget the planner fits the model into, and how streamed weights are read.</summary>
internal sealed class MemoryOptions
{
    public readonly Option<string?> Memory = new("--memory")
    {
        Description = "memory budget for the whole process: a size (512MiB, 2GiB); auto (what the machine has available for this process: " +
            "MemAvailable plus what it holds, less 1/16 of the machine's memory (128 MiB to 2 GiB), re-read as it changes); cgroup (the enclosing cgroup's memory.max/memory.high, or " +
            "v1 memory.limit_in_bytes/soft_limit_in_bytes, the lowest; only read); or cgroup:PATH (a file in memory.max format: bytes or max). " +
            "run and serve follow a moving budget; other commands read it once at start (default: what the machine has free)",
    };

    public readonly Option<string> Stream = new("--stream")
    {
        Description = "how streamed weights are read: prefetch (next layer read while this one computes) or naive (every weight read for every token)",
        DefaultValueFactory = _ => "prefetch",
    };

    public readonly Option<double> FfnFraction = new("--ffn-fraction")
    {
        Description = "prepared models: fraction of FFN neurons fetched per token, chosen by the calibrated predictor if there is one, else at random (1: all; ReLU models with a predictor: those predicted active)",
        DefaultValueFactory = _ => 1.0,
    };

    public readonly Option<int> FfnWindow = new("--ffn-window")
    {
        Description = "prepared models: keep the FFN neurons used by the previous N tokens in memory (LLM in a flash windowing; 0: none)",
        DefaultValueFactory = _ => 4,
    };

    public readonly Option<string?> RuntimeMemory = new("--runtime-memory")
    {
        Description = "memory the process holds besides the model (runtime, code, tokenizer), e.g. 64MiB, counted instead of the measured " +
            "footprint that plan, run and info share (docs/memory.md)",
    };

    public readonly Option<string?> Predictor = new("--predictor")
    {
        Description = "prepared models: neuron predictor file from fitlm calibrate (default: MODEL.predictor.gguf beside the model, if there)",
    };

    public readonly Option<bool> RandomNeurons = new("--random-neurons")
    {
        Description = "prepared models: choose the --ffn-fraction of neurons at random even when a predictor exists (a baseline)",
    };

    public readonly Option<bool> FfnRecall = new("--ffn-recall")
    {
        Description = "prepared models: also compute every FFN neuron to report how many of the important ones were chosen (slower)",
    };

    public void AddTo(Command command)
    {
        command.Add(Memory);
        command.Add(RuntimeMemory);
        command.Add(Stream);
        command.Add(FfnFraction);
        command.Add(FfnWindow);
        command.Add(Predictor);
        command.Add(RandomNeurons);
        command.Add(FfnRecall);
    }

    /// <summary>What --runtime-memory gives in bytes, or 0 (measure at load).</summary>
    public long RuntimeBytes(ParseResult r) => r.GetValue(RuntimeMemory) is { } s ? MemorySize.Parse(s) : 0;

    /// <summary>
    /// What --memory says (a size, auto, cgroup or cgroup:PATH), checked readable; null when not given. Start a
    /// <see cref="MemoryWatcher"/> on it to follow a budget that moves.
    /// </summary>
    public BudgetSpec? ReadSpec(ParseResult r) => r.GetValue(Memory) is { } m ? BudgetSpec.Parse(m) : null;

    /// <summary>The budget in bytes now (0 when not given: auto, cgroup and cgroup:PATH are read once, here) and the stream mode, validated.</summary>
    public (long Budget, StreamMode Mode) Read(ParseResult r)
    {
        long budget = ReadSpec(r)?.Read() ?? 0;
        var mode = r.GetValue(Stream) switch
        {
            "prefetch" => StreamMode.Prefetch,
            "naive" => StreamMode.Naive,
            var s => throw new FitLMException($"--stream '{s}' is not a stream mode (prefetch, naive)"),
        };
        return (budget, mode);
    }

    public LoadOptions Apply(ParseResult r, LoadOptions o)
    {
        var (budget, mode) = Read(r);
        double f = r.GetValue(FfnFraction);
        if (!(f is > 0 and <= 1)) throw new FitLMException($"--ffn-fraction {f} is out of range (0, 1]");
        int window = r.GetValue(FfnWindow);
        if (window is < 0 or > 1024) throw new FitLMException($"--ffn-window {window} is out of range (0..1024)");
        return o with
        {
            MemoryBudget = budget, Stream = mode, FfnFraction = f >= 1 ? 0 : f, FfnWindow = window, RuntimeBytes = RuntimeBytes(r),
            PredictorPath = r.GetValue(Predictor), RandomNeurons = r.GetValue(RandomNeurons), FfnAudit = r.GetValue(FfnRecall),
        };
    }

    /// <summary>One line about the plan after a run: what was streamed and whether the budget held. Returns whether it printed the peak RSS (so the caller does not print it twice).</summary>
    public static bool Report(LanguageModel lm)
    {
        var p = lm.Plan;
        if (lm.ContextChosenByBudget)
            Console.Error.WriteLine($"context: {lm.Transformer.MaxContext} positions, the most this budget holds (give -c to choose)");
        if (p.Streams)
            Console.Error.WriteLine($"plan: {Runtime.ProcessMemory.Format(p.ResidentWeightBytes)} of weights resident, {Runtime.ProcessMemory.Format(p.StreamedWeightBytes)} streamed " +
                $"({Runtime.ProcessMemory.Format(p.StreamedBytesPerToken)} read per token, {p.Mode.ToString().ToLowerInvariant()})");
        long peak = Runtime.ProcessMemory.PeakRssBytes();
        if (!(p.BudgetBytes > 0 && p.Streams || p.BudgetBytes > 0 && p.TotalBytes < p.BudgetBytes)) return false;
        Console.Error.WriteLine($"budget {Runtime.ProcessMemory.Format(p.BudgetBytes)}: peak RSS {Runtime.ProcessMemory.Format(peak)} ({100.0 * peak / p.BudgetBytes:F0}% of the budget)");
        return true;
    }
}
