using System.CommandLine;
using FitLM.Memory;
using FitLM.Model;

namespace FitLM.Cli.Commands;

/// <summary>`--memory` and `--stream`: the budget the planner fits the model into, and how streamed weights are read.</summary>
internal sealed class MemoryOptions
{
    public readonly Option<string?> Memory = new("--memory")
    {
        Description = "memory budget for the whole process, e.g. 512MiB or 2GiB (default: what the machine has free)",
    };

    public readonly Option<string> Stream = new("--stream")
    {
        Description = "how streamed weights are read: prefetch (next layer read while this one computes) or naive (every weight read for every token)",
        DefaultValueFactory = _ => "prefetch",
    };

    public void AddTo(Command command)
    {
        command.Add(Memory);
        command.Add(Stream);
    }

    /// <summary>The budget in bytes (0 when not given) and the stream mode, validated.</summary>
    public (long Budget, StreamMode Mode) Read(ParseResult r)
    {
        string? m = r.GetValue(Memory);
        long budget = m == null ? 0 : MemorySize.Parse(m);
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
        return o with { MemoryBudget = budget, Stream = mode };
    }

    /// <summary>One line about the plan after a run: what was streamed and whether the budget held.</summary>
    public static void Report(LanguageModel lm)
    {
        var p = lm.Plan;
        if (p.Streams)
            Console.Error.WriteLine($"plan: {Runtime.ProcessMemory.Format(p.ResidentWeightBytes)} of weights resident, {Runtime.ProcessMemory.Format(p.StreamedWeightBytes)} streamed " +
                $"({Runtime.ProcessMemory.Format(p.StreamedBytesPerToken)} read per token, {p.Mode.ToString().ToLowerInvariant()})");
        long peak = Runtime.ProcessMemory.PeakRssBytes();
        if (p.BudgetBytes > 0 && lm.Weights is StreamingWeights || p.BudgetBytes > 0 && p.TotalBytes < p.BudgetBytes)
            Console.Error.WriteLine($"budget {Runtime.ProcessMemory.Format(p.BudgetBytes)}: peak RSS {Runtime.ProcessMemory.Format(peak)} ({100.0 * peak / p.BudgetBytes:F0}% of the budget)");
    }
}
