using System.Text.Json;

namespace FitLM.Memory;

/// <summary>
/// The machine's probed speeds kept on disk between processes ($XDG_CACHE_HOME/fitlm, else ~/.cache/fitlm), keyed by
/// the machine (CPU model, cores, memory) and this build of FitLM, so a new build or another machine measures afresh.
/// Each entry keeps the best rate ever probed: a probe only reads lower than the machine can do, when something
/// else is running, so the best is the machine's (measured here: the demo model's compute probe read 8.2 and 12.1 GB/s
/// in two processes a second apart while builds ran beside them). Unwritable or corrupt caches are ignored.
/// </summary>
public static class MachineCache
{
    private static readonly object s_lock = new();

    /// <summary>The best of <paramref name="measured"/> and what earlier processes stored under <paramref name="name"/>; stores the best.</summary>
    public static double Best(string name, double measured) => FilePath() is { } path ? Best(path, name, measured) : measured;

    /// <summary>As <see cref="Best(string, double)"/>, with the cache in <paramref name="path"/>.</summary>
    internal static double Best(string path, string name, double measured)
    {
        lock (s_lock)
        {
            var entries = Read(path);
            string key = $"{MachineKey}|{name}";
            double best = Math.Max(measured, entries.GetValueOrDefault(key));
            if (best > entries.GetValueOrDefault(key))
            {
                entries[key] = best;
                Write(path, entries);
            }
            return best;
        }
    }

    /// <summary>CPU model, logical cores, physical memory and this build's identity.</summary>
    public static string MachineKey { get; } =
        $"{CpuModel()}|{Environment.ProcessorCount} cpus|{GC.GetGCMemoryInfo().TotalAvailableMemoryBytes >> 20} MiB|{typeof(MachineCache).Assembly.ManifestModule.ModuleVersionId}";

    private static string? FilePath()
    {
        string? root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (string.IsNullOrEmpty(root))
        {
            string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
            if (string.IsNullOrEmpty(home)) return null;
            root = Path.Combine(home, ".cache");
        }
        return Path.Combine(root, "fitlm", "machine.json");
    }

    private static Dictionary<string, double> Read(string path)
    {
        try
        {
            if (File.Exists(path))
                return JsonSerializer.Deserialize(File.ReadAllText(path), MachineCacheJson.Default.DictionaryStringDouble) ?? new();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException) { }
        return new();
    }

    private static void Write(string path, Dictionary<string, double> entries)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            // Other processes may read it at the same moment: written beside it and renamed over.
            string json = JsonSerializer.Serialize(entries, MachineCacheJson.Default.DictionaryStringDouble);
            Storage.OutputFile.WriteAtomically(path, temp => File.WriteAllText(temp, json));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    private static string CpuModel()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal))
                    return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
    }
}

/// <summary>The cache file's shape, source-generated so a Native AOT build (no reflection-based serializer) reads it too.</summary>
[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, double>))]
internal sealed partial class MachineCacheJson : System.Text.Json.Serialization.JsonSerializerContext;
