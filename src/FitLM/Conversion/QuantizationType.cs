using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>
/// A file type as llama-quantize names it (Q4_K_M ...): llama.cpp's LLAMA_FTYPE number, written as
/// general.file_type, and the tensor type most weights get (the _S/_M/_L mixes then raise some tensors).
/// </summary>
public sealed record QuantizationType(string Name, uint FileType, GgmlType DefaultType, string Description)
{
    /// <summary>The types FitLM writes, in llama-quantize's order.</summary>
    public static IReadOnlyList<QuantizationType> All { get; } =
    [
        new("Q4_0", 2, GgmlType.Q4_0, "4.34 bits per weight, 32-element blocks with one scale"),
        new("Q4_1", 3, GgmlType.Q4_1, "4.78 bpw, 32-element blocks with scale and minimum"),
        new("Q5_0", 8, GgmlType.Q5_0, "5.21 bpw"),
        new("Q5_1", 9, GgmlType.Q5_1, "5.65 bpw"),
        new("Q2_K", 10, GgmlType.Q2_K, "2.96 bpw k-quant mix (attn_v Q3_K/Q4_K, ffn_down and attn_output Q3_K)"),
        new("Q2_K_S", 21, GgmlType.Q2_K, "2.96 bpw, needs --imatrix"),
        new("Q3_K_S", 11, GgmlType.Q3_K, "3.41 bpw, Q3_K throughout"),
        new("Q3_K_M", 12, GgmlType.Q3_K, "3.74 bpw k-quant mix"),
        new("Q3_K_L", 13, GgmlType.Q3_K, "4.03 bpw k-quant mix"),
        new("Q4_K_S", 14, GgmlType.Q4_K, "4.37 bpw k-quant mix"),
        new("Q4_K_M", 15, GgmlType.Q4_K, "4.58 bpw: Q4_K, with Q6_K for half of attn_v and ffn_down"),
        new("Q5_K_S", 16, GgmlType.Q5_K, "5.21 bpw, Q5_K throughout"),
        new("Q5_K_M", 17, GgmlType.Q5_K, "5.33 bpw: Q5_K, with Q6_K for half of attn_v and ffn_down"),
        new("Q6_K", 18, GgmlType.Q6_K, "6.56 bpw"),
        new("Q8_0", 7, GgmlType.Q8_0, "8.50 bpw"),
        new("F16", 1, GgmlType.F16, "16 bpw"),
        new("BF16", 32, GgmlType.BF16, "16 bpw, bfloat16"),
        new("F32", 0, GgmlType.F32, "32 bpw"),
    ];

    /// <summary>llama-quantize's aliases: Q3_K, Q4_K and Q5_K are their _M mixes.</summary>
    private static readonly Dictionary<string, string> s_aliases = new(StringComparer.OrdinalIgnoreCase)
    {
        ["Q3_K"] = "Q3_K_M",
        ["Q4_K"] = "Q4_K_M",
        ["Q5_K"] = "Q5_K_M",
    };

    /// <summary>Whether the default type is a float type (no block quantization, no mix).</summary>
    public bool IsFloat => DefaultType is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;

    /// <summary>Names accepted by <see cref="Parse"/>, for help texts.</summary>
    public static string Names => string.Join(", ", All.Select(t => t.Name));

    /// <summary>
    /// The type named <paramref name="name"/> (case-insensitive; Q4_K means Q4_K_M; a number is the
    /// LLAMA_FTYPE, 15 for Q4_K_M, as llama-quantize accepts).
    /// </summary>
    public static QuantizationType Parse(string? name)
    {
        string n = (name ?? "").Trim();
        if (uint.TryParse(n, out uint number) && FromFileType(number) is { } byNumber) return byNumber;
        if (s_aliases.TryGetValue(n, out var alias)) n = alias;
        return Find(n) ?? throw new FitLMException($"unknown quantization type '{name}' (supported: {Names})");
    }

    /// <summary>The type named <paramref name="name"/>, or null.</summary>
    public static QuantizationType? Find(string name) =>
        All.FirstOrDefault(t => string.Equals(t.Name, name.Trim(), StringComparison.OrdinalIgnoreCase));

    /// <summary>The type whose LLAMA_FTYPE number is <paramref name="fileType"/>, or null.</summary>
    public static QuantizationType? FromFileType(uint fileType) => All.FirstOrDefault(t => t.FileType == fileType);

    public override string ToString() => Name;
}
