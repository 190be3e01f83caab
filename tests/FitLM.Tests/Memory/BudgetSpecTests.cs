using FitLM.Memory;
using Xunit;

namespace FitLM.Tests.Memory;

/// <summary>What --memory accepts: a size, auto, cgroup (v2, v1, hybrid) and cgroup:PATH, read from a fake /proc and /sys/fs/cgroup.</summary>
public class BudgetSpecTests
{
    private const long MiB = FakeMachine.MiB;

    [Fact]
    public void A_size_is_a_fixed_budget_as_before()
    {
        var spec = BudgetSpec.Parse("512MiB");
        Assert.Equal(BudgetSource.Fixed, spec.Source);
        Assert.False(spec.Moves);
        Assert.Equal(MemorySize.Parse("512MiB"), spec.Read());
        Assert.Equal(1536 * MiB, BudgetSpec.Parse(" 1.5G ").Read());
    }

    [Theory]
    [InlineData("lots", "is not a size (512MiB, 2GiB), auto, cgroup or cgroup:PATH")]
    [InlineData("", "is not a size")]
    [InlineData("cgroup:", "needs a file after 'cgroup:'")]
    [InlineData("0", "out of range")]
    public void Bad_words_are_one_line_errors(string text, string expected)
    {
        var e = Assert.Throws<FitLMException>(() => BudgetSpec.Parse(text));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void A_limit_file_gives_its_bytes_and_max_means_the_machine()
    {
        using var m = new FakeMachine(totalMiB: 4096);
        string file = m.Write("limit", "268435456\n");
        var spec = BudgetSpec.Parse("cgroup:" + file, m.Files);
        Assert.Equal(BudgetSource.LimitFile, spec.Source);
        Assert.True(spec.Moves);
        Assert.Equal(256 * MiB, spec.Read());
        m.Write("limit", "max\n");
        Assert.Equal(4096 * MiB, spec.Read());
    }

    [Fact]
    public void An_unreadable_or_malformed_limit_file_is_named()
    {
        using var m = new FakeMachine();
        string missing = Path.Combine(m.Root, "no-such-file");
        Assert.Contains("cannot read the memory limit file " + missing, Assert.Throws<FitLMException>(() => BudgetSpec.Parse("cgroup:" + missing, m.Files)).Message);
        string bad = m.Write("bad", "1.5GiB\n");
        Assert.Contains("holds '1.5GiB', not a memory limit", Assert.Throws<FitLMException>(() => BudgetSpec.Parse("cgroup:" + bad, m.Files)).Message);
    }

    [Fact]
    public void Cgroup_v2_takes_the_lowest_of_max_and_high_over_the_cgroup_and_its_ancestors()
    {
        using var m = new FakeMachine();
        m.Write("proc/self/cgroup", "0::/app.slice/fitlm.scope\n");
        m.Write("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n");
        m.Write("sys/fs/cgroup/app.slice/memory.max", "max\n");
        m.Write("sys/fs/cgroup/app.slice/fitlm.scope/memory.max", "1073741824\n");
        m.Write("sys/fs/cgroup/app.slice/fitlm.scope/memory.high", "805306368\n");
        var spec = BudgetSpec.Parse("cgroup", m.Files);
        Assert.Equal(BudgetSource.Cgroup, spec.Source);
        Assert.EndsWith(Path.Combine("app.slice", "fitlm.scope"), spec.Cgroup!.Directory);
        Assert.Equal(768 * MiB, spec.Read());
        // A parent's limit caps its children.
        m.Write("sys/fs/cgroup/app.slice/memory.max", "536870912\n");
        Assert.Equal(512 * MiB, spec.Read());
    }

    [Fact]
    public void Cgroup_v1_reads_limit_and_soft_limit_and_its_huge_number_means_no_limit()
    {
        using var m = new FakeMachine(totalMiB: 2048);
        m.Write("proc/self/cgroup", "9:pids:/docker/abc\n4:memory:/docker/abc\n1:cpu:/\n");
        string dir = "sys/fs/cgroup/memory/docker/abc/";
        m.Write(dir + "memory.limit_in_bytes", "9223372036854771712\n");
        m.Write(dir + "memory.soft_limit_in_bytes", "9223372036854771712\n");
        m.Write("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
        var spec = BudgetSpec.Parse("cgroup", m.Files);
        Assert.Equal(2048 * MiB, spec.Read()); // no limit anywhere: the machine's memory
        m.Write(dir + "memory.limit_in_bytes", "1073741824\n");
        Assert.Equal(1024 * MiB, spec.Read());
        m.Write(dir + "memory.soft_limit_in_bytes", "671088640\n");
        Assert.Equal(640 * MiB, spec.Read());
    }

    [Fact]
    public void Hybrid_layout_reads_v1_memory_when_the_unified_tree_has_no_memory_controller()
    {
        using var m = new FakeMachine();
        m.Write("proc/self/cgroup", "4:memory:/job\n0::/\n");
        m.Write("sys/fs/cgroup/unified/cgroup.controllers", "\n");
        m.Write("sys/fs/cgroup/memory/job/memory.limit_in_bytes", "314572800\n");
        Assert.Equal(300 * MiB, BudgetSpec.Parse("cgroup", m.Files).Read());
    }

    [Fact]
    public void A_container_without_its_own_cgroup_namespace_reads_the_mounted_root()
    {
        using var m = new FakeMachine();
        m.Write("proc/self/cgroup", "4:memory:/kubepods/pod1/ctr\n");
        m.Write("sys/fs/cgroup/memory/memory.limit_in_bytes", "209715200\n");
        Assert.Equal(200 * MiB, BudgetSpec.Parse("cgroup", m.Files).Read());
    }

    [Fact]
    public void No_memory_cgroup_is_an_error_that_says_what_to_use()
    {
        using var m = new FakeMachine();
        m.Write("proc/self/cgroup", "1:cpu:/\n");
        var e = Assert.Throws<FitLMException>(() => BudgetSpec.Parse("cgroup", m.Files));
        Assert.Contains("in no memory cgroup", e.Message);
        Assert.Contains("auto", e.Message);
    }

    [Fact]
    public void Auto_is_what_is_available_plus_what_this_process_holds_less_the_reserve()
    {
        using var m = new FakeMachine(totalMiB: 16384, availableMiB: 1000);
        var spec = BudgetSpec.Parse("AUTO", m.Files);
        Assert.Equal(BudgetSource.Available, spec.Source);
        // 1000 MiB available + 30 MiB anonymous RSS (file pages are already in MemAvailable) - the reserve, 1/16 of 16 GiB.
        Assert.Equal(1024 * MiB, spec.AutoReserveBytes);
        Assert.Equal(1000 * MiB + 30 * MiB - spec.AutoReserveBytes, spec.Read());
        m.Meminfo(16384, 10);
        Assert.Equal(BudgetSpec.MinimumBytes, spec.Read()); // never below the minimum, never 0 ("no budget")
    }

    [Fact]
    public void Auto_within_a_limited_cgroup_counts_the_room_its_limit_leaves()
    {
        using var m = new FakeMachine(totalMiB: 4096, availableMiB: 3000); // a reserve of 256 MiB
        m.Write("proc/self/cgroup", "0::/\n");
        m.Write("sys/fs/cgroup/cgroup.controllers", "memory\n");
        m.Write("sys/fs/cgroup/memory.max", "838860800\n");       // 800 MiB
        m.Write("sys/fs/cgroup/memory.current", "314572800\n");   // 300 MiB used, 50 MiB of it inactive page cache
        m.Write("sys/fs/cgroup/memory.stat", "anon 1000\nfile 2000\ninactive_file 52428800\n");
        // Working set 250 MiB, 30 MiB of it ours: others hold 220 MiB; 800 - 220 = 580 MiB, less the reserve.
        var spec = BudgetSpec.Parse("auto", m.Files);
        Assert.Equal(580 * MiB - spec.AutoReserveBytes, spec.Read());
    }

    [Fact]
    public void Auto_without_meminfo_says_to_give_a_size()
    {
        using var m = new FakeMachine();
        File.Delete(Path.Combine(m.Root, "proc", "meminfo"));
        Assert.Contains("give a size", Assert.Throws<FitLMException>(() => BudgetSpec.Parse("auto", m.Files)).Message);
    }

    [Fact]
    public void Auto_and_cgroup_read_this_machine()
    {
        long total = MachineMemoryFiles.Real.TotalBytes();
        if (!File.Exists("/proc/meminfo")) { Console.WriteLine("skipped: no /proc/meminfo"); return; }
        long auto = BudgetSpec.Parse("auto").Read();
        Assert.InRange(auto, BudgetSpec.MinimumBytes, total);
        if (MemoryCgroup.Find(MachineMemoryFiles.Real) != null)
            Assert.True(BudgetSpec.Parse("cgroup").Read() >= BudgetSpec.MinimumBytes);
    }
}
