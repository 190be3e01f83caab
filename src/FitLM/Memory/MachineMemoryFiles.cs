using System.Globalization;

namespace FitLM.Memory;

/// <summary>
/// The kernel files a moving budget is read from (/proc/meminfo, /proc/self/status, /proc/self/cgroup,
/// /sys/fs/cgroup), under a root that tests replace with a temporary directory. Only ever read.
/// </summary>
public sealed class MachineMemoryFiles(string root)
{
    public static MachineMemoryFiles Real { get; } = new("/");

    public string Root { get; } = root;

    public string ProcPath(string relative) => Path.Combine(Root, "proc", relative);

    public string CgroupMount => Path.Combine(Root, "sys", "fs", "cgroup");

    /// <summary>A field of /proc/meminfo in bytes (e.g. "MemAvailable"), or -1 when absent or unreadable.</summary>
    public long MeminfoBytes(string field) => Runtime.ProcessMemory.KbField(ProcPath("meminfo"), field);

    /// <summary>A field of /proc/self/status in bytes (e.g. "RssAnon"), or 0 when absent or unreadable.</summary>
    public long SelfStatusBytes(string field) => Math.Max(0, Runtime.ProcessMemory.KbField(ProcPath(Path.Combine("self", "status")), field));

    /// <summary>The machine's memory: MemTotal, or what the runtime reports where there is no /proc.</summary>
    public long TotalBytes()
    {
        long total = MeminfoBytes("MemTotal");
        return total > 0 ? total : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
    }

    /// <summary>The lines of /proc/self/cgroup, or none when it cannot be read (not Linux, no procfs).</summary>
    public IReadOnlyList<string> SelfCgroupLines()
    {
        try { return File.ReadAllLines(ProcPath(Path.Combine("self", "cgroup"))); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
    }

    /// <summary>A "key value" line of a memory.stat file, or 0.</summary>
    public static long StatField(string file, string key)
    {
        try
        {
            foreach (var line in File.ReadLines(file))
                if (line.Length > key.Length && line.StartsWith(key, StringComparison.Ordinal) && line[key.Length] == ' '
                    && long.TryParse(line.AsSpan(key.Length + 1).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long v))
                    return v;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return 0;
    }
}
