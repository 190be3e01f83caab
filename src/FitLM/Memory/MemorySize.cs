using System.Globalization;
using System.Text.RegularExpressions;

namespace FitLM.Memory;

/// <summary>Byte sizes as users write them: 512MiB, 2GiB, 1.5G, 800M, 4096 (bytes). K/M/G/T are powers of 1024, as in llama.cpp and free(1).</summary>
public static partial class MemorySize
{
    [GeneratedRegex(@"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")]
    private static partial Regex Pattern();

    public static long Parse(string text)
    {
        var m = Pattern().Match(text ?? "");
        if (!m.Success) throw new FitLMException($"'{text}' is not a memory size (examples: 512MiB, 2GiB, 1.5G)");
        double value = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        int shift = char.ToUpperInvariant(m.Groups[2].Value.FirstOrDefault()) switch
        {
            'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, _ => 0,
        };
        double bytes = value * Math.Pow(2, shift);
        if (bytes < 1 || bytes > 1L << 50) throw new FitLMException($"memory size '{text}' is out of range");
        return (long)bytes;
    }
}
