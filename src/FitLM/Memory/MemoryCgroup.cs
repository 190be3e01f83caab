using System.Globalization;

namespace FitLM.Memory;

/// <summary>
/// The memory cgroup this process runs in, found through /proc/self/cgroup under /sys/fs/cgroup: v2
/// (memory.max, memory.high), v1 (memory.limit_in_bytes, memory.soft_limit_in_bytes) or both in a hybrid layout.
/// Its limit is the lowest of those files in the cgroup and every ancestor up to the hierarchy's root, since an
/// ancestor's limit caps its children too. Only read, never written.
/// </summary>
public sealed class MemoryCgroup
{
    private static readonly string[] V2Limits = ["memory.max", "memory.high"];
    private static readonly string[] V1Limits = ["memory.limit_in_bytes", "memory.soft_limit_in_bytes"];

    private readonly List<(string Dir, bool V2)> _levels;

    private MemoryCgroup(List<(string Dir, bool V2)> levels) => _levels = levels;

    /// <summary>The process's own cgroup directory (the first hierarchy found: v2, else v1).</summary>
    public string Directory => _levels[0].Dir;

    /// <summary>The process's memory cgroup, or null when there is none (not Linux, or no memory controller mounted).</summary>
    public static MemoryCgroup? Find(MachineMemoryFiles files)
    {
        var levels = new List<(string, bool)>();
        foreach (var line in files.SelfCgroupLines())
        {
            var parts = line.Split(':', 3);
            if (parts.Length != 3) continue;
            string relative = parts[2].TrimStart('/');
            if (parts[0] == "0" && parts[1].Length == 0)
            {
                // v2 is mounted at /sys/fs/cgroup, or at /sys/fs/cgroup/unified beside v1 (hybrid), where it
                // may hold no memory controller: then its files say nothing about memory.
                foreach (var mount in new[] { files.CgroupMount, Path.Combine(files.CgroupMount, "unified") })
                    if (HasMemoryController(mount)) { AddLevels(levels, mount, relative, v2: true); break; }
            }
            else if (parts[1].Split(',').Contains("memory"))
            {
                string mount = Path.Combine(files.CgroupMount, "memory");
                if (System.IO.Directory.Exists(mount)) AddLevels(levels, mount, relative, v2: false);
            }
        }
        return levels.Count == 0 ? null : new MemoryCgroup(levels);
    }

    /// <summary>The lowest limit over the cgroup and its ancestors, in bytes; long.MaxValue when none is set ("max").</summary>
    public long LimitBytes()
    {
        long limit = long.MaxValue;
        foreach (var (dir, v2) in _levels)
            foreach (var name in v2 ? V2Limits : V1Limits)
            {
                string file = Path.Combine(dir, name);
                if (File.Exists(file)) limit = Math.Min(limit, LimitFile.Read(file));
            }
        return limit;
    }

    /// <summary>
    /// What the cgroup holds that it cannot simply drop: its usage less its inactive page cache (the kernel
    /// reclaims that first), as container runtimes count a working set; -1 when the files are missing.
    /// </summary>
    public long WorkingSetBytes()
    {
        var (dir, v2) = _levels[0];
        string usageFile = Path.Combine(dir, v2 ? "memory.current" : "memory.usage_in_bytes");
        try
        {
            if (!long.TryParse(File.ReadAllText(usageFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long usage)) return -1;
            string stat = Path.Combine(dir, "memory.stat");
            long inactive = v2 ? MachineMemoryFiles.StatField(stat, "inactive_file") : MachineMemoryFiles.StatField(stat, "total_inactive_file");
            if (!v2 && inactive == 0) inactive = MachineMemoryFiles.StatField(stat, "inactive_file");
            return Math.Max(0, usage - inactive);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return -1; }
    }

    private static bool HasMemoryController(string mount)
    {
        try
        {
            string file = Path.Combine(mount, "cgroup.controllers");
            return File.Exists(file) && File.ReadAllText(file).Split((char[])[' ', '\n'], StringSplitOptions.RemoveEmptyEntries).Contains("memory");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    private static void AddLevels(List<(string, bool)> levels, string mount, string relative, bool v2)
    {
        string full = Path.GetFullPath(Path.Combine(mount, relative));
        // A container without its own cgroup namespace mounts its cgroup at the root, where the path the
        // host gives does not exist: then the root is the process's cgroup.
        string dir = System.IO.Directory.Exists(full) && full.StartsWith(Path.GetFullPath(mount), StringComparison.Ordinal) ? full : Path.GetFullPath(mount);
        string top = Path.GetFullPath(mount);
        for (string? d = dir; d != null && d.Length >= top.Length; d = Path.GetDirectoryName(d))
        {
            levels.Add((d, v2));
            if (d == top) break;
        }
    }
}
