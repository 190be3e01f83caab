using System.CommandLine;
using FitLM.Compression;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;
using FitLM.Conversion;
using FitLM.Weights;

namespace FitLM.Cli.Commands;

/// <summary>`--weights` and `--stack-cache`: how a stacked (BitStack) model is sized and multiplied (docs/bitstack.md).</summary>
internal sealed class StackOptions
{
    public readonly Option<string?> Weights = new("--weights")
    {
        Description = "stacked (BitStack) models: load the longest stack prefix whose weights (embeddings, head and norms included) fit SIZE, e.g. 12MiB or 12871872",
    };

    public readonly Option<string?> Cache = new("--stack-cache")
    {
        Description = "stacked models: re-materialize each matrix as this type for the kernels (default q8_0; f16, f32 or another ggml type), or 'none' for the direct sign x low-rank kernel",
    };

    public void AddTo(Command command)
    {
        command.Add(Weights);
        command.Add(Cache);
    }

    public LoadOptions Apply(ParseResult r, LoadOptions o)
    {
        string? w = r.GetValue(Weights);
        string? c = r.GetValue(Cache);
        if (w == null && c == null) return o;
        var so = new StackLoadOptions { WeightBytes = w == null ? 0 : MemorySize.Parse(w) };
        if (c != null) so = so with { CacheType = ParseCache(c), CacheChosen = true };
        return o with { Stack = so };
    }

    public static GgmlType? ParseCache(string s)
    {
        if (s.Equals("none", StringComparison.OrdinalIgnoreCase) || s.Equals("direct", StringComparison.OrdinalIgnoreCase)) return null;
        return ParseType(s, "--stack-cache");
    }

    public static GgmlType ParseType(string s, string option)
    {
        if (Enum.TryParse<GgmlType>(s.Trim(), ignoreCase: true, out var t) && GgmlTypes.IsSupported(t) && !int.TryParse(s, out _)) return t;
        throw new FitLMException($"{option} '{s}' is not a tensor type (examples: q8_0, q6_k, q4_k, f16)");
    }

    /// <summary>The size ladder of a stacked file (for `fitlm info`): weight bytes → stack positions.</summary>
    public static void PrintLadder(IModelSource src, TextWriter o)
    {
        if (src is not GgufSource g || !StackLayout.IsStacked(g.File)) return;
        var layout = StackLayout.Read(g);
        int m = layout.Matrices.Count, n = layout.Matrices.Max(x => x.Blocks);
        o.WriteLine();
        o.WriteLine($"stack (BitStack): {m} matrices x {n} blocks, rank {string.Join("/", layout.Matrices.Select(x => x.Rank).Distinct())}; " +
            $"conventional tensors {ProcessMemory.Format(layout.FixedBytes)}; calibration: {(layout.Calibration.Length > 0 ? layout.Calibration : "?")}");
        o.WriteLine($"size ladder (load with --weights BYTES or --memory; any prefix from the first whole model up loads):");
        o.WriteLine($"  {"weight bytes",14} {"MiB",8} {"bits/w",7} {"stack b/w",9} {"blocks",7} {"per matrix",10}");
        var positions = new SortedSet<int>();
        for (int level = 1; level <= n; level++)
        {
            int end = level * m;
            positions.Add(end);
            if (level < n) positions.Add(end + m / 2);
        }
        foreach (int k in positions)
        {
            var counts = layout.CountsAt(k);
            string per = counts.Min() == counts.Max() ? $"{counts.Min()}" : $"{counts.Min()}-{counts.Max()}";
            long bytes = layout.BytesAt(k);
            o.WriteLine($"  {bytes,14:N0} {bytes / 1048576.0,8:F2} {layout.TotalBitsPerWeight(k),7:F2} {layout.StackBitsPerWeight(k),9:F2} {k,7} {per,10}");
        }
    }
}
