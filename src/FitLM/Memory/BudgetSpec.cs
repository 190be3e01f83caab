using FitLM.Runtime;

namespace FitLM.Memory;

/// <summary>Where a memory budget comes from.</summary>
public enum BudgetSource
{
    /// <summary>A size the user gave; it never moves by itself.</summary>
    Fixed,
    /// <summary>`auto`: what the machine (and the enclosing cgroup, if it has a limit) has available for this process.</summary>
    Available,
    /// <summary>`cgroup`: the enclosing cgroup's limit.</summary>
    Cgroup,
    /// <summary>`cgroup:PATH`: another file in memory.max format.</summary>
    LimitFile,
}

/// <summary>
/// What `--memory` accepts: a size (512MiB), `auto`, `cgroup` or `cgroup:PATH`. <see cref="Read"/> gives the
/// budget in bytes now; a <see cref="MemoryWatcher"/> follows it while the model runs.
/// </summary>
public sealed class BudgetSpec
{
    /// <summary>
    /// What `auto` leaves for everything else: 1/16 of the machine's memory, between 128 MiB and 2 GiB (1.5 GiB on a
    /// 24 GiB machine, 512 MiB on 8 GiB). MemAvailable is the kernel's estimate, other processes grow between two reads
    /// (100 ms apart), and the kernel needs room to reclaim before it would stall everyone: following the budget
    /// must start well before the machine is at its last megabytes, not when the OOM killer is about to choose.
    /// </summary>
    public long AutoReserveBytes => Math.Clamp(Files.TotalBytes() / 16, 128L << 20, 2L << 30);

    /// <summary>The smallest budget a moving source yields (never 0: 0 means "no budget given" to <see cref="LoadOptions"/>).</summary>
    public const long MinimumBytes = 1L << 20;

    public const string Forms = "a size (512MiB, 2GiB), auto, cgroup or cgroup:PATH";

    public BudgetSource Source { get; }
    public long FixedBytes { get; }
    /// <summary>The file of `cgroup:PATH`, made absolute.</summary>
    public string? LimitPath { get; }
    /// <summary>The enclosing cgroup (`cgroup`; `auto` too when there is one).</summary>
    public MemoryCgroup? Cgroup { get; }
    public MachineMemoryFiles Files { get; }

    /// <summary>Whether the budget can change while the model runs (every form but a size).</summary>
    public bool Moves => Source != BudgetSource.Fixed;

    private BudgetSpec(BudgetSource source, long fixedBytes, string? limitPath, MemoryCgroup? cgroup, MachineMemoryFiles files)
    {
        Source = source;
        FixedBytes = fixedBytes;
        LimitPath = limitPath;
        Cgroup = cgroup;
        Files = files;
    }

    public static BudgetSpec Fixed(long bytes)
    {
        if (bytes <= 0) throw new FitLMException($"a memory budget must be positive (got {bytes} bytes)");
        return new(BudgetSource.Fixed, bytes, null, null, MachineMemoryFiles.Real);
    }

    public static BudgetSpec Parse(string text) => Parse(text, MachineMemoryFiles.Real);

    /// <summary>Parses and checks that the source can be read now (a FitLMException naming the problem if not).</summary>
    public static BudgetSpec Parse(string text, MachineMemoryFiles files)
    {
        string s = (text ?? "").Trim();
        BudgetSpec spec;
        if (s.Length > 0 && char.IsAsciiDigit(s[0]))
            return new(BudgetSource.Fixed, MemorySize.Parse(s), null, null, files);
        if (s.Equals("auto", StringComparison.OrdinalIgnoreCase))
        {
            if (files.MeminfoBytes("MemAvailable") < 0)
                throw new FitLMException($"--memory auto reads MemAvailable from {files.ProcPath("meminfo")}, which this system does not have; give a size instead");
            spec = new(BudgetSource.Available, 0, null, MemoryCgroup.Find(files), files);
        }
        else if (s.Equals("cgroup", StringComparison.OrdinalIgnoreCase))
        {
            var cgroup = MemoryCgroup.Find(files)
                ?? throw new FitLMException($"--memory cgroup: this process is in no memory cgroup ({files.ProcPath("self/cgroup")} under {files.CgroupMount}); give a size, auto or cgroup:PATH");
            spec = new(BudgetSource.Cgroup, 0, null, cgroup, files);
        }
        else if (s.StartsWith("cgroup:", StringComparison.OrdinalIgnoreCase))
        {
            string path = s["cgroup:".Length..];
            if (path.Length == 0) throw new FitLMException("--memory cgroup:PATH needs a file after 'cgroup:' (in memory.max format: bytes or 'max')");
            spec = new(BudgetSource.LimitFile, 0, Path.GetFullPath(path), null, files);
        }
        else throw new FitLMException($"--memory '{text}' is not {Forms}");
        spec.Read();
        return spec;
    }

    /// <summary>The budget in bytes now. A FitLMException when the source cannot be read or holds something else.</summary>
    public long Read() => Source switch
    {
        BudgetSource.Fixed => FixedBytes,
        BudgetSource.Available => AtLeastMinimum(AvailableBytes() - AutoReserveBytes),
        BudgetSource.Cgroup => AtLeastMinimum(OrMachine(Cgroup!.LimitBytes())),
        _ => AtLeastMinimum(OrMachine(Memory.LimitFile.Read(LimitPath!))),
    };

    /// <summary>
    /// MemAvailable plus what this process already holds (its anonymous and shared pages: its file pages are
    /// page cache, which MemAvailable already counts), lowered to the room the cgroup's limit leaves besides
    /// the cgroup's other working set.
    /// </summary>
    public long AvailableBytes()
    {
        long available = Files.MeminfoBytes("MemAvailable");
        if (available < 0) throw new FitLMException($"cannot read MemAvailable from {Files.ProcPath("meminfo")}");
        long own = Files.SelfStatusBytes("RssAnon") + Files.SelfStatusBytes("RssShmem");
        if (own == 0) own = Files.SelfStatusBytes("VmRSS");
        long room = available + own;
        if (Cgroup != null)
        {
            long limit = Cgroup.LimitBytes();
            long workingSet = limit == long.MaxValue ? -1 : Cgroup.WorkingSetBytes();
            if (workingSet >= 0) room = Math.Min(room, limit - Math.Max(0, workingSet - own));
        }
        return room;
    }

    /// <summary>"max" with no other limit: the machine's memory.</summary>
    private long OrMachine(long limit) => limit == long.MaxValue ? Files.TotalBytes() : limit;

    private static long AtLeastMinimum(long bytes) => Math.Max(MinimumBytes, bytes);

    public override string ToString() => Source switch
    {
        BudgetSource.Fixed => ProcessMemory.Format(FixedBytes),
        BudgetSource.Available => "auto",
        BudgetSource.Cgroup => $"cgroup {Cgroup!.Directory}",
        _ => $"cgroup:{LimitPath}",
    };
}
