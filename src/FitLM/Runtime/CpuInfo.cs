namespace FitLM.Runtime;

/// <summary>What the CPU offers the compute threads.</summary>
public static class CpuInfo
{
    /// <summary>
    /// Physical cores this process may use: distinct (package, core) pairs in /proc/cpuinfo, capped by
    /// Environment.ProcessorCount (which honours affinity and cgroup quotas). Hyper-threads share a core's
    /// vector units and its share of memory bandwidth, so decode gains nothing from them (llama.cpp's default too).
    /// </summary>
    public static int PhysicalCores { get; } = CountPhysicalCores();

    private static int CountPhysicalCores()
    {
        int logical = Math.Max(1, Environment.ProcessorCount);
        try
        {
            var cores = new HashSet<(string, string)>();
            string physical = "0";
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
            {
                int colon = line.IndexOf(':');
                if (colon < 0) continue;
                string key = line[..colon].Trim(), value = line[(colon + 1)..].Trim();
                if (key == "physical id") physical = value;
                else if (key == "core id") cores.Add((physical, value));
            }
            return cores.Count > 0 ? Math.Min(cores.Count, logical) : logical;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return logical;
        }
    }
}
