namespace FitLM.Memory;

/// <summary>Memory the process may use when the user gives no budget: free memory, within any cgroup limit.</summary>
public static class SystemMemory
{
    /// <summary>
    /// What `--memory auto` starts from, without its reserve (<see cref="BudgetSpec.AvailableBytes"/>: MemAvailable plus
    /// what this process holds, within the enclosing cgroup's limit, v1 or v2); where /proc cannot be read, what the
    /// runtime reports.
    /// </summary>
    public static long AvailableBytes()
    {
        try
        {
            return BudgetSpec.Parse("auto").AvailableBytes();
        }
        catch (FitLMException)
        {
            return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        }
    }
}
