namespace FitLM.Memory;

/// <summary>Memory the process may use when the user gives no budget: free memory, within any cgroup limit.</summary>
public static class SystemMemory
{
    /// <summary>MemAvailable from /proc/meminfo, lowered to the cgroup's remaining allowance if there is one.</summary>
    public static long AvailableBytes()
    {
        long available = ReadMeminfoKb("MemAvailable:") * 1024;
        if (available <= 0) available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        long limit = ReadCgroupNumber("/sys/fs/cgroup/memory.max");
        if (limit > 0)
        {
            long used = Math.Max(0, ReadCgroupNumber("/sys/fs/cgroup/memory.current"));
            available = Math.Min(available, Math.Max(0, limit - used) + Runtime.ProcessMemory.RssBytes());
        }
        return available;
    }

    private static long ReadMeminfoKb(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith(key, StringComparison.Ordinal))
                    return long.Parse(line.AsSpan(key.Length).Trim().TrimEnd("kB").Trim());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        return 0;
    }

    private static long ReadCgroupNumber(string path)
    {
        try
        {
            string s = File.ReadAllText(path).Trim();
            return s == "max" ? 0 : long.Parse(s);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { return 0; }
    }
}
