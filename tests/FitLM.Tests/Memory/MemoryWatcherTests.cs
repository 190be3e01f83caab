using System.Diagnostics;
using FitLM.Memory;
using Xunit;

namespace FitLM.Tests.Memory;

/// <summary>The watcher follows a moving budget: sees a rewritten limit file, coalesces quick changes, ignores jitter, polls without PSI.</summary>
public class MemoryWatcherTests
{
    private const long MiB = FakeMachine.MiB;

    /// <summary>Long enough that a loaded 2-core machine never fails the test; the watcher itself polls every 100 ms.</summary>
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    /// <summary>So long that only <see cref="MemoryWatcher.Refresh"/> reads: the test decides when.</summary>
    private static readonly TimeSpan Never = TimeSpan.FromHours(1);

    [Fact]
    public void A_rewritten_limit_file_is_seen_by_the_polling_thread()
    {
        using var m = new FakeMachine();
        m.Write("memory.max", "1073741824\n");
        using var w = MemoryWatcher.Start(BudgetSpec.Parse("cgroup:" + Path.Combine(m.Root, "memory.max"), m.Files));
        Assert.Equal(1024 * MiB, w.Current);
        Assert.Equal(0, w.Version);
        BudgetChange? seen = null;
        w.Changed += c => seen = c;
        var clock = Stopwatch.StartNew();
        m.Write("memory.max", "268435456\n");
        Assert.True(w.WaitForChange(0, Patience));
        Console.WriteLine($"limit file change seen after {clock.ElapsedMilliseconds} ms (polling every {MemoryWatcher.DefaultInterval.TotalMilliseconds} ms)");
        Assert.Equal(256 * MiB, w.Current);
        Assert.Equal(1, w.Version);
        Assert.True(SpinWait.SpinUntil(() => seen != null, Patience));
        Assert.Equal(new BudgetChange(1024 * MiB, 256 * MiB, 1, "limit file"), seen);
    }

    [Fact]
    public void Quick_rewrites_are_coalesced_into_the_latest()
    {
        using var m = new FakeMachine();
        string file = m.Write("memory.max", "1073741824\n");
        using var w = MemoryWatcher.Start(BudgetSpec.Parse("cgroup:" + file, m.Files), Never);
        var changes = new List<BudgetChange>();
        w.Changed += changes.Add;
        foreach (var mib in new[] { 900, 700, 300, 512 })
            m.Write("memory.max", $"{mib * MiB}\n");
        w.Refresh();
        Assert.Equal(512 * MiB, w.Current);
        Assert.Equal(1, w.Version);
        Assert.Single(changes);

        // A consumer that was busy through several changes wakes once and reads only the latest.
        w.SetBudget(100 * MiB);
        w.SetBudget(200 * MiB);
        w.SetBudget(150 * MiB);
        Assert.True(w.WaitForChange(1, TimeSpan.Zero));
        Assert.Equal((150 * MiB, 4L), w.Read());
    }

    [Fact]
    public void Jitter_below_one_percent_or_2_MiB_is_not_a_change()
    {
        using var m = new FakeMachine();
        string file = m.Write("memory.max", $"{1000 * MiB}\n");
        using var w = MemoryWatcher.Start(BudgetSpec.Parse("cgroup:" + file, m.Files), Never);
        m.Write("memory.max", $"{1001 * MiB}\n");   // 1 MiB: under both
        w.Refresh();
        m.Write("memory.max", $"{995 * MiB}\n");    // 5 MiB: over 2 MiB, under 1% (10 MiB)
        w.Refresh();
        Assert.Equal((1000 * MiB, 0L), w.Read());
        m.Write("memory.max", $"{980 * MiB}\n");    // 20 MiB: a change
        w.Refresh();
        Assert.Equal((980 * MiB, 1L), w.Read());

        using var small = new FakeMachine();
        string smallFile = small.Write("memory.max", $"{50 * MiB}\n");
        using var ws = MemoryWatcher.Start(BudgetSpec.Parse("cgroup:" + smallFile, small.Files), Never);
        small.Write("memory.max", $"{51 * MiB}\n");   // 2% of a small budget, but under 2 MiB
        ws.Refresh();
        Assert.Equal(0, ws.Version);
    }

    [Fact]
    public void Without_PSI_auto_still_follows_MemAvailable_by_polling()
    {
        using var m = new FakeMachine(availableMiB: 4000); // no proc/pressure/memory under this root
        using var w = MemoryWatcher.Start(BudgetSpec.Parse("auto", m.Files));
        Assert.Null(w.PressureThreshold);
        Assert.Equal(4030 * MiB - w.Spec.AutoReserveBytes, w.Current);
        m.Meminfo(16384, 1500); // a balloon took 2.5 GiB
        Assert.True(w.WaitForChange(0, Patience));
        Assert.Equal(1530 * MiB - w.Spec.AutoReserveBytes, w.Current);
        m.Meminfo(16384, 4000); // and gave it back
        Assert.True(w.WaitForChange(1, Patience));
        Assert.Equal(4030 * MiB - w.Spec.AutoReserveBytes, w.Current);
    }

    [Fact]
    public void A_fixed_size_never_moves_but_SetBudget_overrides_it_until_FollowSource()
    {
        using var w = MemoryWatcher.Start(BudgetSpec.Fixed(512 * MiB));
        w.Refresh();
        Assert.Equal((512 * MiB, 0L), w.Read());
        Assert.False(w.WaitForChange(0, TimeSpan.FromMilliseconds(1)));
        w.SetBudget(256 * MiB);
        Assert.Equal((256 * MiB, 1L), w.Read());
        w.SetBudget(255 * MiB); // an embedder's request is exact, jitter or not
        Assert.Equal((255 * MiB, 2L), w.Read());
        w.FollowSource();
        Assert.Equal((512 * MiB, 3L), w.Read());
        Assert.Throws<FitLMException>(() => w.SetBudget(0));
    }

    [Fact]
    public void SetBudget_holds_against_a_moving_source()
    {
        using var m = new FakeMachine();
        string file = m.Write("memory.max", $"{1000 * MiB}\n");
        using var w = MemoryWatcher.Start(BudgetSpec.Parse("cgroup:" + file, m.Files), Never);
        w.SetBudget(300 * MiB);
        m.Write("memory.max", $"{600 * MiB}\n");
        w.Refresh();
        Assert.Equal(300 * MiB, w.Current);
        w.FollowSource();
        Assert.Equal(600 * MiB, w.Current);
    }

    [Fact]
    public void A_read_error_keeps_the_budget_and_warns_once()
    {
        using var m = new FakeMachine();
        string file = m.Write("memory.max", $"{1000 * MiB}\n");
        using var w = MemoryWatcher.Start(BudgetSpec.Parse("cgroup:" + file, m.Files), Never);
        var warnings = new List<string>();
        w.ReadFailed += warnings.Add;
        m.Write("memory.max", "");
        w.Refresh();
        File.Delete(file);
        w.Refresh();
        Assert.Equal((1000 * MiB, 0L), w.Read());
        Assert.Single(warnings);
        Assert.Contains("keeping the budget at 1000.0 MiB", warnings[0]);
        m.Write("memory.max", $"{400 * MiB}\n");
        w.Refresh();
        Assert.Equal(400 * MiB, w.Current);
    }

    [Fact]
    public async Task Waiting_times_out_is_cancelled_and_wakes_on_change()
    {
        using var w = MemoryWatcher.Start(BudgetSpec.Fixed(64 * MiB));
        Assert.False(w.WaitForChange(0, TimeSpan.FromMilliseconds(20)));
        Assert.False(await w.WaitForChangeAsync(0, TimeSpan.FromMilliseconds(20)));
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => w.WaitForChange(0, Patience, cts.Token));
        var waiting = w.WaitForChangeAsync(0, Patience);
        w.SetBudget(32 * MiB);
        Assert.True(await waiting);
    }

    [Fact]
    public void Starting_on_this_machine_uses_PSI_where_the_kernel_offers_it()
    {
        if (!File.Exists("/proc/meminfo")) { Console.WriteLine("skipped: no /proc/meminfo"); return; }
        using var w = MemoryWatcher.Start(BudgetSpec.Parse("auto"));
        Console.WriteLine($"auto: {w.Current >> 20} MiB; PSI trigger: {w.PressureThreshold ?? "none (polling only)"}");
        Assert.True(w.Current >= BudgetSpec.MinimumBytes);
    }
}
