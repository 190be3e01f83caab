namespace FitLM.Tensors;

/// <summary>
/// The byte layout of every ggml block type, as ggml-common.h declares the structs: elements per block, bytes
/// per block and the offset of each field. Kernels, decoders and encoders use these names instead of numbers.
/// Each offset is written as the previous field's offset plus its size, so the block sizes (18, 20, 22, 24, 34,
/// 36, 84, 110, 144, 176, 210, 292 bytes) follow from the fields; a test checks them against ggml's sizeof.
/// fp16 fields are 2 bytes, the f32 field of q8_K 4; everything is little-endian.
/// </summary>
internal static class BlockLayout
{
    /// <summary>Elements per block of the 32-element types (ggml's QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK8_1).</summary>
    public const int QK = 32;

    /// <summary>Elements per super-block of the k-quants (ggml's QK_K).</summary>
    public const int QK_K = 256;

    /// <summary>Bytes of the packed 6-bit scales (and mins) of q3_K, q4_K and q5_K (ggml's K_SCALE_SIZE).</summary>
    public const int KScaleSize = 12;

    /// <summary>Bytes of an fp16 field (ggml_half).</summary>
    public const int HalfBytes = 2;

    /// <summary>block_q4_0: half d; u8 qs[16]. Element j is the low nibble of qs[j], element j+16 the high nibble.</summary>
    public static class Q4_0
    {
        public const int Elements = QK, D = 0, Qs = D + HalfBytes, Bytes = Qs + QK / 2;
    }

    /// <summary>block_q4_1: half d, m; u8 qs[16] (nibbles as q4_0).</summary>
    public static class Q4_1
    {
        public const int Elements = QK, D = 0, M = D + HalfBytes, Qs = M + HalfBytes, Bytes = Qs + QK / 2;
    }

    /// <summary>block_q5_0: half d; u32 qh (bit j is the 5th bit of element j); u8 qs[16] (nibbles as q4_0).</summary>
    public static class Q5_0
    {
        public const int Elements = QK, D = 0, Qh = D + HalfBytes, Qs = Qh + QK / 8, Bytes = Qs + QK / 2;
    }

    /// <summary>block_q5_1: half d, m; u32 qh; u8 qs[16].</summary>
    public static class Q5_1
    {
        public const int Elements = QK, D = 0, M = D + HalfBytes, Qh = M + HalfBytes, Qs = Qh + QK / 8, Bytes = Qs + QK / 2;
    }

    /// <summary>block_q8_0: half d; i8 qs[32].</summary>
    public static class Q8_0
    {
        public const int Elements = QK, D = 0, Qs = D + HalfBytes, Bytes = Qs + QK;
    }

    /// <summary>block_q8_1: half d; half s (= d·Σqs); i8 qs[32].</summary>
    public static class Q8_1
    {
        public const int Elements = QK, D = 0, S = D + HalfBytes, Qs = S + HalfBytes, Bytes = Qs + QK;
    }

    /// <summary>
    /// block_q2_K: u8 scales[16] (low nibble scale, high nibble min of each 16-element sub-block); u8 qs[64]
    /// (2-bit quants); half d; half dmin.
    /// </summary>
    public static class Q2_K
    {
        public const int Elements = QK_K, SubBlock = 16, Scales = 0, Qs = Scales + QK_K / SubBlock, D = Qs + QK_K / 4,
            DMin = D + HalfBytes, Bytes = DMin + HalfBytes;
    }

    /// <summary>
    /// block_q3_K: u8 hmask[32] (the 3rd bit of each quant); u8 qs[64] (low 2 bits); u8 scales[12] (sixteen
    /// 6-bit scales); half d.
    /// </summary>
    public static class Q3_K
    {
        public const int Elements = QK_K, SubBlock = 16, HMask = 0, Qs = HMask + QK_K / 8, Scales = Qs + QK_K / 4,
            D = Scales + KScaleSize, Bytes = D + HalfBytes;
    }

    /// <summary>block_q4_K: half d; half dmin; u8 scales[12] (eight 6-bit scale/min pairs); u8 qs[128] (nibbles).</summary>
    public static class Q4_K
    {
        public const int Elements = QK_K, SubBlock = 32, D = 0, DMin = D + HalfBytes, Scales = DMin + HalfBytes,
            Qs = Scales + KScaleSize, Bytes = Qs + QK_K / 2;
    }

    /// <summary>block_q5_K: half d; half dmin; u8 scales[12]; u8 qh[32] (5th bits); u8 qs[128] (nibbles).</summary>
    public static class Q5_K
    {
        public const int Elements = QK_K, SubBlock = 32, D = 0, DMin = D + HalfBytes, Scales = DMin + HalfBytes,
            Qh = Scales + KScaleSize, Qs = Qh + QK_K / 8, Bytes = Qs + QK_K / 2;
    }

    /// <summary>block_q6_K: u8 ql[128] (low 4 bits); u8 qh[64] (high 2 bits); i8 scales[16]; half d.</summary>
    public static class Q6_K
    {
        public const int Elements = QK_K, SubBlock = 16, Ql = 0, Qh = Ql + QK_K / 2, Scales = Qh + QK_K / 4,
            D = Scales + QK_K / SubBlock, Bytes = D + HalfBytes;
    }

    /// <summary>block_q8_K: float d; i8 qs[256]; i16 bsums[16] (sums of each 16 quants).</summary>
    public static class Q8_K
    {
        public const int Elements = QK_K, SubBlock = 16, D = 0, Qs = D + sizeof(float), BSums = Qs + QK_K,
            Bytes = BSums + QK_K / SubBlock * sizeof(short);
    }
}
