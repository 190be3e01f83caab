namespace FitLM.Tensors;

/// <summary>Tensor element types, numbered as ggml numbers them (the values stored in GGUF files).</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
}

/// <summary>Block geometry of each type: a row of n elements takes n / BlockSize * BlockBytes bytes.</summary>
public static class GgmlTypes
{
    public static bool IsSupported(GgmlType t) => t switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or
        GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.Q8_1 or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or
        GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.Q8_K => true,
        _ => false,
    };

    /// <summary>Elements per block.</summary>
    public static int BlockSize(GgmlType t) => t switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 => 1,
        GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.Q8_1 => BlockLayout.QK,
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.Q8_K => BlockLayout.QK_K,
        _ => throw new FitLMException($"unsupported tensor type {t}"),
    };

    /// <summary>Bytes per block.</summary>
    public static int BlockBytes(GgmlType t) => t switch
    {
        GgmlType.F32 => sizeof(float),
        GgmlType.F16 or GgmlType.BF16 => BlockLayout.HalfBytes,
        GgmlType.Q4_0 => BlockLayout.Q4_0.Bytes,
        GgmlType.Q4_1 => BlockLayout.Q4_1.Bytes,
        GgmlType.Q5_0 => BlockLayout.Q5_0.Bytes,
        GgmlType.Q5_1 => BlockLayout.Q5_1.Bytes,
        GgmlType.Q8_0 => BlockLayout.Q8_0.Bytes,
        GgmlType.Q8_1 => BlockLayout.Q8_1.Bytes,
        GgmlType.Q2_K => BlockLayout.Q2_K.Bytes,
        GgmlType.Q3_K => BlockLayout.Q3_K.Bytes,
        GgmlType.Q4_K => BlockLayout.Q4_K.Bytes,
        GgmlType.Q5_K => BlockLayout.Q5_K.Bytes,
        GgmlType.Q6_K => BlockLayout.Q6_K.Bytes,
        GgmlType.Q8_K => BlockLayout.Q8_K.Bytes,
        _ => throw new FitLMException($"unsupported tensor type {t}"),
    };

    /// <summary>Bytes of one row of <paramref name="n"/> elements; n must be a multiple of the block size.</summary>
    public static long RowBytes(GgmlType t, long n) => n / BlockSize(t) * BlockBytes(t);

    public static string Name(GgmlType t) => t.ToString();
}
