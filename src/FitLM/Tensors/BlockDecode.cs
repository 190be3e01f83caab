using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FitLM.Tensors;

/// <summary>
/// The packed fields of each block layout (<see cref="BlockLayout"/>) decoded in one place: nibbles, 5th bits,
/// the 6-bit scales and mins of q3_K/q4_K/q5_K, the 2-, 3- and 6-bit quants of q2_K/q3_K/q6_K. Every kernel
/// (Dequantize, QuantDot, IntDot, IntGemm) calls these helpers; each has a scalar form (one element, the
/// definition) and, where kernels need it, a vector form that tests check against the scalar one. All are
/// aggressively inlined, so a kernel compiles to the code it had with the decoding written in place.
/// </summary>
internal static unsafe class BlockDecode
{
    // ---------------------------------------------------------------- nibbles (q4_0, q4_1, q5_0, q5_1, q4_K, q5_K)

    /// <summary>16 bytes of nibbles as 32 quants in ggml's order: low nibbles are elements 0..15, high nibbles 16..31.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Nibbles(Vector128<byte> raw) =>
        Vector256.Create(raw, (raw.AsUInt16() >> 4).AsByte()) & Vector256.Create((byte)0x0F);

    /// <inheritdoc cref="Nibbles(Vector128{byte})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Nibbles(byte* qs) => Nibbles(Vector128.Load(qs));

    /// <summary>
    /// 32 bytes of nibbles split into their low nibbles and their high nibbles: the two 32-element halves of a
    /// q4_K/q5_K chunk, or the first and last 16 elements of two q4_0-family blocks loaded side by side.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void SplitNibbles(Vector256<byte> raw, out Vector256<byte> lo, out Vector256<byte> hi)
    {
        // The mask written twice rather than held in a local: the JIT then uses its hoisted constant register
        // directly (with a local it copied the register once per call in IntDot's q4_K loop).
        lo = raw & Vector256.Create((byte)0x0F);
        hi = (raw.AsUInt16() >> 4).AsByte() & Vector256.Create((byte)0x0F);
    }

    // ---------------------------------------------------------------- 5th bits (q5_0, q5_1, q5_K)

    /// <summary>The 5th bit of element <paramref name="e"/> (0..31) of a q5_0/q5_1 block, in place: 0 or 16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Q5HighBit(uint qh, int e) => (int)((qh >> e) & 1) << 4;

    /// <summary>The 5-bit quant (0..31) of element <paramref name="e"/> of a q5_0/q5_1 block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Q5Quant(ReadOnlySpan<byte> qs, uint qh, int e) =>
        (e < 16 ? qs[e] & 0xF : qs[e - 16] >> 4) | Q5HighBit(qh, e);

    /// <summary>Bit j of <paramref name="bits"/> as byte j: 0xFF where set, 0 where clear (AVX2).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> BitsToBytes(uint bits)
    {
        // Broadcast the 4 bytes, give each output byte its source byte (j / 8), test bit j % 8.
        var v = Avx2.Shuffle(Vector256.Create(bits).AsByte(), Vector256.Create(
            (byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
        var bit = Vector256.Create(0x8040201008040201UL).AsByte();
        return Vector256.Equals(v & bit, bit);
    }

    /// <summary>The 5th bits of a q5_0/q5_1 block (u32 qh) as 32 bytes of 0 or 16, in element order (AVX2).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Q5HighBits(uint qh) => BitsToBytes(qh) & Vector256.Create((byte)0x10);

    /// <summary>The 32 five-bit quants (0..31) of a q5_0/q5_1 block in element order (AVX2).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Q5Quants(byte* qs, uint qh) => Nibbles(qs) | Q5HighBits(qh);

    /// <summary>
    /// The 5th bits of two q5_0/q5_1 blocks loaded side by side (see <see cref="SplitNibbles"/>): those of elements
    /// 0..15 of both blocks, then those of elements 16..31 of both, as bytes of 0 or 16 (AVX2).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void PairHighBits(uint qh0, uint qh1, out Vector256<byte> lo, out Vector256<byte> hi)
    {
        lo = Q5HighBits((qh0 & 0xFFFF) | (qh1 << 16));
        hi = Q5HighBits((qh0 >> 16) | (qh1 & 0xFFFF0000));
    }

    /// <summary>
    /// The 5th bit of a q5_K quant, in place (0 or 16): bit 2c of qh[l] for element 64c + l, bit 2c+1 for
    /// element 64c + 32 + l.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Q5_KHighBit(byte qh, int bit) => ((qh >> bit) & 1) << 4;

    /// <summary>Bit <paramref name="bit"/> of each byte of <paramref name="v"/> moved to bit 4 (0 or 16 per byte): q5_K's 5th bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> BitTo4(Vector256<byte> v, int bit) =>
        (bit <= 4 ? v.AsUInt16() << (4 - bit) : v.AsUInt16() >> (bit - 4)).AsByte() & Vector256.Create((byte)0x10);

    // ---------------------------------------------------------------- q4_K / q5_K scales and mins

    /// <summary>
    /// ggml's get_scale_min_k4 for the eight sub-blocks at once, from the 12 scale bytes read as three
    /// little-endian words: byte j of <paramref name="scales"/> is the 6-bit scale of sub-block j, byte j of
    /// <paramref name="mins"/> its min. j &lt; 4: scale = b[j] &amp; 63, min = b[j+4] &amp; 63; j ≥ 4: the low 4 bits
    /// are the nibbles of b[j+4] (scale low, min high), the high 2 bits the top bits of b[j-4] (scale) and b[j] (min).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ScalesMinsK4(uint u0, uint u1, uint u2, out ulong scales, out ulong mins)
    {
        uint s0 = u0 & 0x3F3F3F3F;
        uint m0 = u1 & 0x3F3F3F3F;
        uint s1 = (u2 & 0x0F0F0F0F) | (((u0 >> 6) & 0x03030303) << 4);
        uint m1 = ((u2 >> 4) & 0x0F0F0F0F) | (((u1 >> 6) & 0x03030303) << 4);
        scales = s0 | ((ulong)s1 << 32);
        mins = m0 | ((ulong)m1 << 32);
    }

    /// <inheritdoc cref="ScalesMinsK4(uint, uint, uint, out ulong, out ulong)"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ScalesMinsK4(byte* b, out ulong scales, out ulong mins) =>
        ScalesMinsK4(*(uint*)b, *(uint*)(b + 4), *(uint*)(b + 8), out scales, out mins);

    /// <inheritdoc cref="ScalesMinsK4(uint, uint, uint, out ulong, out ulong)"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ScalesMinsK4(ReadOnlySpan<byte> b, out ulong scales, out ulong mins) =>
        ScalesMinsK4(BinaryPrimitives.ReadUInt32LittleEndian(b), BinaryPrimitives.ReadUInt32LittleEndian(b[4..]),
            BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(8, 4)), out scales, out mins);

    /// <summary>Byte <paramref name="j"/> of a packed word (a scale or min of <see cref="ScalesMinsK4(uint, uint, uint, out ulong, out ulong)"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int ByteAt(ulong packed, int j) => (int)(packed >> (8 * j)) & 0xFF;

    /// <summary>The 6-bit scale and min of sub-block <paramref name="j"/> (0..7) of a q4_K/q5_K block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ScaleMinK4(ReadOnlySpan<byte> b, int j, out int scale, out int min)
    {
        ScalesMinsK4(b, out ulong sc, out ulong mn);
        scale = ByteAt(sc, j);
        min = ByteAt(mn, j);
    }

    // ---------------------------------------------------------------- q2_K

    /// <summary>The 4-bit scale of a q2_K sub-block from its scales byte (the low nibble).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Q2_KScale(byte packed) => packed & 0xF;

    /// <summary>The 4-bit min of a q2_K sub-block from its scales byte (the high nibble).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Q2_KMin(byte packed) => packed >> 4;

    /// <summary>
    /// The 2-bit quant (0..3) of element e = 128h + 32k + l of a q2_K (or the low bits of a q3_K) super-block:
    /// bits 2k..2k+1 of qs[32h + l].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Q2Bits(ReadOnlySpan<byte> qs, int e) => (qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3;

    /// <summary>Plane k (bits 2k..2k+1) of 32 bytes of 2-bit quants: elements 32k..32k+31 of their 128-element half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Q2Plane(Vector256<byte> qs, int k) =>
        (qs.AsUInt16() >> (2 * k)).AsByte() & Vector256.Create((byte)3);

    // ---------------------------------------------------------------- q3_K

    /// <summary>
    /// The sixteen 6-bit scales of a q3_K block minus 32 (ggml's unpacking), from the 12 scale bytes as three
    /// little-endian words: scale s has the low nibble of b[s] (s &lt; 8) or the high nibble of b[s-8] as its low
    /// 4 bits, and bits 2(s/4)..2(s/4)+1 of b[8 + s%4] as its high 2 bits. Element s is scale s.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<sbyte> ScalesQ3_K(uint a0, uint a1, uint a2)
    {
        uint s0 = (a0 & 0x0F0F0F0F) | ((a2 & 0x03030303) << 4);
        uint s1 = (a1 & 0x0F0F0F0F) | (((a2 >> 2) & 0x03030303) << 4);
        uint s2 = ((a0 >> 4) & 0x0F0F0F0F) | (((a2 >> 4) & 0x03030303) << 4);
        uint s3 = ((a1 >> 4) & 0x0F0F0F0F) | (((a2 >> 6) & 0x03030303) << 4);
        return (Vector128.Create(s0, s1, s2, s3).AsByte() - Vector128.Create((byte)32)).AsSByte();
    }

    /// <inheritdoc cref="ScalesQ3_K(uint, uint, uint)"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<sbyte> ScalesQ3_K(byte* b) => ScalesQ3_K(*(uint*)b, *(uint*)(b + 4), *(uint*)(b + 8));

    /// <inheritdoc cref="ScalesQ3_K(uint, uint, uint)"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<sbyte> ScalesQ3_K(ReadOnlySpan<byte> b) =>
        ScalesQ3_K(BinaryPrimitives.ReadUInt32LittleEndian(b), BinaryPrimitives.ReadUInt32LittleEndian(b[4..]),
            BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(8, 4)));

    /// <summary>
    /// The 3-bit quant (0..7; the signed value is this minus 4) of element e = 128h + 32k + l of a q3_K block:
    /// the low 2 bits from qs (as q2_K), the 3rd bit is bit 4h + k (= e/32) of hmask[l].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Q3_KQuant(ReadOnlySpan<byte> block, int e) =>
        Q2Bits(block.Slice(BlockLayout.Q3_K.Qs, BlockLayout.QK_K / 4), e)
        | (((block[BlockLayout.Q3_K.HMask + e % 32] >> (e / 32)) & 1) << 2);

    /// <summary>Plane k of half h of a q3_K block (elements 128h + 32k + 0..31) as quants 0..7: <see cref="Q2Plane"/> | hmask bit (4h + k) at bit 2.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Q3_KPlane(Vector256<byte> qs, Vector256<byte> hmask, int h, int k)
    {
        // Bit 4h + k moved to bit 2. The shift counts are written out rather than kept in a local: with constant h
        // and k the JIT then emits immediate shifts (through a local it loaded the counts from memory: q3_K's
        // kernel ran 7% slower, 1.54 → 1.65 ns per 32 elements).
        var hm = hmask.AsUInt16();
        var high = (4 * h + k >= 2 ? hm >> (4 * h + k - 2) : hm << (2 - 4 * h - k)).AsByte() & Vector256.Create((byte)4);
        return Q2Plane(qs, k) | high;
    }

    // ---------------------------------------------------------------- q6_K

    /// <summary>
    /// The 6-bit quant (0..63; the signed value is this minus 32) of element e = 128h + 32k + l of a q6_K block:
    /// the low 4 bits are the low (k &lt; 2) or high (k ≥ 2) nibble of ql[64h + 32(k&amp;1) + l], the high 2 bits
    /// bits 2k..2k+1 of qh[32h + l].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Q6_KQuant(ReadOnlySpan<byte> block, int e)
    {
        int h = e / 128, k = e % 128 / 32, l = e % 32;
        int lo = block[BlockLayout.Q6_K.Ql + 64 * h + 32 * (k & 1) + l];
        lo = k >= 2 ? lo >> 4 : lo & 0xF;
        return lo | (((block[BlockLayout.Q6_K.Qh + 32 * h + l] >> (2 * k)) & 3) << 4);
    }

    /// <summary>
    /// Half h of a q6_K block as four registers of 6-bit quants (0..63), 32 elements each in element order (the
    /// vector form of <see cref="Q6_KQuant"/>): plane k has the low (k &lt; 2) or high nibbles of ql[64h + 32(k&amp;1)..]
    /// and bits 2k..2k+1 of qh[32h..] as bits 4-5. The loads stay inside: with the three registers passed in, the
    /// JIT added two register copies per half to IntDot's q6_K loop.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Q6_KQuants(byte* block, int h, out Vector256<byte> q0, out Vector256<byte> q1, out Vector256<byte> q2, out Vector256<byte> q3)
    {
        var m4 = Vector256.Create((byte)0xF);
        var m30 = Vector256.Create((byte)0x30);
        var l0 = Vector256.Load(block + BlockLayout.Q6_K.Ql + 64 * h);
        var l1 = Vector256.Load(block + BlockLayout.Q6_K.Ql + 64 * h + 32);
        var hb = Vector256.Load(block + BlockLayout.Q6_K.Qh + 32 * h);
        var hw = hb.AsUInt16();
        q0 = (l0 & m4) | ((hw << 4).AsByte() & m30);
        q1 = (l1 & m4) | ((hw << 2).AsByte() & m30);
        q2 = ((l0.AsUInt16() >> 4).AsByte() & m4) | (hb & m30);
        q3 = ((l1.AsUInt16() >> 4).AsByte() & m4) | ((hw >> 2).AsByte() & m30);
    }
}
