using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>Options of <see cref="GgufQuantizer.Quantize"/>.</summary>
/// <param name="ImportanceMatrix">llama.cpp's importance matrix (GGUF or legacy .dat), or null.</param>
/// <param name="Threads">Threads that quantize rows (0: one per core).</param>
/// <param name="Warning">Called with each warning as soon as it is known (also listed in the result).</param>
public sealed record QuantizeOptions(string? ImportanceMatrix = null, int Threads = 0, Action<string>? Warning = null);

/// <summary>One tensor done: its place, name, shape, and what it became.</summary>
public sealed record QuantizedTensor(int Index, int Count, string Name, long[] Shape, GgmlType From, GgmlType To,
    long BytesIn, long BytesOut, bool UsedImportance)
{
    /// <summary>A line like llama-quantize's: [  3/ 75] token_embd.weight - [512, 8192], f32 -> q4_K, 16.00 MiB -> 2.25 MiB.</summary>
    public override string ToString()
    {
        string shape = "[" + string.Join(", ", Shape) + "]";
        string conversion = From == To ? $"{TypeName(From)}, kept" : $"{TypeName(From)} -> {TypeName(To)}{(UsedImportance ? " (imatrix)" : "")}";
        return $"[{Index.ToString().PadLeft(Count.ToString().Length)}/{Count}] {Name,-32} {shape,-14} {conversion}, " +
               $"{BytesIn / 1048576.0:F2} MiB -> {BytesOut / 1048576.0:F2} MiB";
    }

    /// <summary>ggml's type names: f32, q8_0, q4_K.</summary>
    public static string TypeName(GgmlType t) => t.ToString().ToLowerInvariant().Replace("_k", "_K");
}

/// <summary>What a quantization wrote.</summary>
public sealed record QuantizeResult(string OutputPath, QuantizationType Type, int Tensors, long BytesIn, long BytesOut,
    double Seconds, IReadOnlyDictionary<GgmlType, int> TensorTypes, IReadOnlyList<string> Warnings);
