using System.CommandLine;
using FitLM.Memory;
using FitLM.Runtime;

namespace FitLM.Cli.Commands;

/// <summary>
/// `run` and `serve` with a budget that moves (`--memory auto|cgroup|cgroup:PATH`, docs/variable-memory.md): a
/// <see cref="MemoryWatcher"/> follows the source and hands each change to the model's governor, which adapts between
/// forward passes; `--verbose` prints each adaptation as one line on stderr.
/// </summary>
internal sealed class MovingBudget
{
    public readonly Option<bool> Verbose = new("--verbose")
    {
        Description = "print each adaptation to a new memory budget (time, old -> new budget, what changed, how long it took) on stderr",
    };

    public void AddTo(Command command) => command.Add(Verbose);

    /// <summary>A watcher on --memory when it can move (null for a size or no --memory); start it before loading so no change is missed.</summary>
    public static MemoryWatcher? Start(ParseResult r, ModelLoadOptions load) =>
        load.Memory.ReadSpec(r) is { Moves: true } spec ? MemoryWatcher.Start(spec) : null;

    /// <summary>
    /// Connects <paramref name="watcher"/> to <paramref name="lm"/>'s governor (and <paramref name="wake"/>, the server's
    /// scheduler), and with --verbose prints the source and every adaptation.
    /// </summary>
    public void Attach(ParseResult r, MemoryWatcher? watcher, LanguageModel lm, Action? wake = null)
    {
        bool verbose = r.GetValue(Verbose);
        lm.Governor.LimitsGcHeap = true; // this process is fitlm alone: its GC may follow the budget
        if (verbose) lm.Governor.Adapted += a => Console.Error.WriteLine(a);
        if (watcher == null) return;
        watcher.Changed += c =>
        {
            lm.Governor.Request(c.NewBytes);
            wake?.Invoke();
        };
        watcher.ReadFailed += message => Console.Error.WriteLine($"warning: {message}"); // it says the budget is kept
        // Whatever moved while the model loaded.
        if (watcher.Current != lm.Governor.Budget) lm.Governor.Request(watcher.Current);
        if (verbose)
            Console.Error.WriteLine($"memory: following {watcher.Spec} (now {ProcessMemory.Format(watcher.Current)}; " +
                (watcher.Spec.Source == BudgetSource.Available ? $"a reserve of {ProcessMemory.Format(watcher.Spec.AutoReserveBytes)} ({watcher.Spec.AutoReserveBytes} bytes) left to the machine; " : "") +
                (watcher.PressureThreshold is { } t ? $"PSI trigger '{t}' and polling" : "polling") + $" every {MemoryWatcher.DefaultInterval.TotalMilliseconds:F0} ms)");
    }
}
