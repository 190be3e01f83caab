namespace FitLM.Runtime;

/// <summary>The process's memory as the kernel counts it (Linux /proc/self/status), for reports and budgets.</summary>
public static class ProcessMemory
{
    /// <summary>Peak resident set size (VmHWM) in bytes, or 0 where the platform does not tell.</summary>
    public static long PeakRssBytes() => Math.Max(0, KbField("/proc/self/status", "VmHWM"));

    /// <summary>Current resident set size (VmRSS) in bytes, or 0 where the platform does not tell.</summary>
    public static long RssBytes() => Math.Max(0, KbField("/proc/self/status", "VmRSS"));

    /// <summary>
    /// A "Field:   N kB" line of a /proc file (status, meminfo) in bytes, or -1 when the field is absent or the file
    /// cannot be read.
    /// </summary>
    public static long KbField(string file, string field)
    {
        try
        {
            foreach (var line in File.ReadLines(file))
            {
                if (line.Length <= field.Length || !line.StartsWith(field, StringComparison.Ordinal) || line[field.Length] != ':') continue;
                var value = line.AsSpan(field.Length + 1).Trim();
                if (value.EndsWith("kB", StringComparison.Ordinal)) value = value[..^2].TrimEnd();
                return long.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long kb) ? kb * 1024 : -1;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return -1;
    }

    public static string Format(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:F1} KiB",
        _ => $"{bytes} B",
    };
}
