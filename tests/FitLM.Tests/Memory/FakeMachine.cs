using FitLM.Memory;

namespace FitLM.Tests.Memory;

/// <summary>A temporary directory laid out as /proc and /sys/fs/cgroup, for the budget readers to read instead of the machine's.</summary>
internal sealed class FakeMachine : IDisposable
{
    public const long MiB = 1L << 20;

    public FakeMachine(long totalMiB = 16384, long availableMiB = 8192)
    {
        Root = Path.Combine(Path.GetTempPath(), "fitlm-fake-machine-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path.Combine(Root, "proc", "self"));
        Meminfo(totalMiB, availableMiB);
        Write("proc/self/status", "Name:\tfitlm\nVmRSS:\t  40960 kB\nRssAnon:\t  30720 kB\nRssFile:\t  10240 kB\nRssShmem:\t      0 kB\n");
        Files = new MachineMemoryFiles(Root);
    }

    public string Root { get; }
    public MachineMemoryFiles Files { get; }

    public void Meminfo(long totalMiB, long availableMiB) =>
        Write("proc/meminfo", $"MemTotal:       {totalMiB * 1024} kB\nMemFree:        {availableMiB * 512} kB\nMemAvailable:   {availableMiB * 1024} kB\n");

    /// <summary>Writes a file under the root through a temporary name and a rename, as a kernel file changes: all at once.</summary>
    public string Write(string relative, string text)
    {
        string path = Path.Combine(Root, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        string tmp = path + ".tmp";
        File.WriteAllText(tmp, text);
        File.Move(tmp, path, overwrite: true);
        return path;
    }

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); } catch (IOException) { }
    }
}
