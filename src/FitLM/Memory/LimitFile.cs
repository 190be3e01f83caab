using System.Globalization;

namespace FitLM.Memory;

/// <summary>A file in cgroup memory.max format: a number of bytes, or "max" for no limit.</summary>
public static class LimitFile
{
    /// <summary>
    /// cgroup v1 writes "no limit" as the largest page-aligned counter (9223372036854771712 with 4 KiB pages);
    /// anything from 2^62 up is read as no limit too.
    /// </summary>
    private const long V1Unlimited = 1L << 62;

    /// <summary>The limit in bytes, long.MaxValue for "max"; a FitLMException when the file cannot be read or holds something else.</summary>
    public static long Read(string path)
    {
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FitLMException($"cannot read the memory limit file {path}: {e.Message}");
        }
        return Parse(text, path);
    }

    public static long Parse(string text, string path)
    {
        string s = text.Trim();
        if (s == "max") return long.MaxValue;
        if (!long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out long bytes))
            throw new FitLMException($"{path} holds '{Shorten(s)}', not a memory limit (a number of bytes or 'max', as cgroup memory.max)");
        return bytes >= V1Unlimited ? long.MaxValue : bytes;
    }

    private static string Shorten(string s) => s.Length <= 40 ? s : s[..40] + "...";
}
