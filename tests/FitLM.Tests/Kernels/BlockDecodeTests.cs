using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Kernels;

/// <summary>
/// The block layouts and their decoders (<see cref="BlockLayout"/>, <see cref="BlockDecode"/>): sizes as ggml's
/// sizeof, the packed scale decoders against a plain transcription of ggml's loops, and each vector decoder
/// against its scalar form on random blocks.
/// </summary>
public unsafe class BlockDecodeTests
{
    [Fact]
    public void BlockSizesAreGgmls()
    {
        // sizeof(block_*) in ggml-common.h.
        var expected = new Dictionary<GgmlType, (int Elements, int Bytes)>
        {
            [GgmlType.Q4_0] = (32, 18), [GgmlType.Q4_1] = (32, 20), [GgmlType.Q5_0] = (32, 22), [GgmlType.Q5_1] = (32, 24),
            [GgmlType.Q8_0] = (32, 34), [GgmlType.Q8_1] = (32, 36), [GgmlType.Q2_K] = (256, 84), [GgmlType.Q3_K] = (256, 110),
            [GgmlType.Q4_K] = (256, 144), [GgmlType.Q5_K] = (256, 176), [GgmlType.Q6_K] = (256, 210), [GgmlType.Q8_K] = (256, 292),
        };
        foreach (var (type, (elements, bytes)) in expected)
        {
            Assert.Equal(elements, GgmlTypes.BlockSize(type));
            Assert.Equal(bytes, GgmlTypes.BlockBytes(type));
        }
        // Field offsets that are not the first field (the others follow from the sizes above).
        Assert.Equal((80, 82), (BlockLayout.Q2_K.D, BlockLayout.Q2_K.DMin));
        Assert.Equal((32, 96, 108), (BlockLayout.Q3_K.Qs, BlockLayout.Q3_K.Scales, BlockLayout.Q3_K.D));
        Assert.Equal((4, 16), (BlockLayout.Q4_K.Scales, BlockLayout.Q4_K.Qs));
        Assert.Equal((16, 48), (BlockLayout.Q5_K.Qh, BlockLayout.Q5_K.Qs));
        Assert.Equal((128, 192, 208), (BlockLayout.Q6_K.Qh, BlockLayout.Q6_K.Scales, BlockLayout.Q6_K.D));
        Assert.Equal((4, 260), (BlockLayout.Q8_K.Qs, BlockLayout.Q8_K.BSums));
        Assert.Equal((2, 6), (BlockLayout.Q5_0.Qh, BlockLayout.Q5_0.Qs));
        Assert.Equal((4, 8), (BlockLayout.Q5_1.Qh, BlockLayout.Q5_1.Qs));
    }

    /// <summary>ggml's get_scale_min_k4, transcribed.</summary>
    private static (int Scale, int Min) GgmlScaleMinK4(byte[] q, int j) => j < 4
        ? (q[j] & 63, q[j + 4] & 63)
        : ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4));

    [Fact]
    public void ScalesMinsK4MatchesGgml()
    {
        var rng = new Random(7);
        var q = new byte[BlockLayout.KScaleSize];
        for (int trial = 0; trial < 2000; trial++)
        {
            rng.NextBytes(q);
            BlockDecode.ScalesMinsK4(q, out ulong sc, out ulong mn);
            ulong scp, mnp;
            fixed (byte* p = q) BlockDecode.ScalesMinsK4(p, out scp, out mnp);
            Assert.Equal((sc, mn), (scp, mnp));
            for (int j = 0; j < 8; j++)
            {
                var (scale, min) = GgmlScaleMinK4(q, j);
                Assert.Equal(scale, BlockDecode.ByteAt(sc, j));
                Assert.Equal(min, BlockDecode.ByteAt(mn, j));
                BlockDecode.ScaleMinK4(q, j, out int s1, out int m1);
                Assert.Equal((scale, min), (s1, m1));
            }
        }
    }

    /// <summary>ggml's q3_K scale unpacking (dequantize_row_q3_K's aux words), transcribed: the 16 scales minus 32.</summary>
    private static int[] GgmlScalesQ3_K(byte[] b)
    {
        const uint kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
        var aux = new uint[4];
        Buffer.BlockCopy(b, 0, aux, 0, 12);
        uint tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
        aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
        aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
        aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
        var scales = new int[16];
        for (int s = 0; s < 16; s++) scales[s] = (sbyte)(byte)(aux[s / 4] >> (8 * (s % 4))) - 32;
        return scales;
    }

    [Fact]
    public void ScalesQ3_KMatchesGgml()
    {
        var rng = new Random(11);
        var b = new byte[BlockLayout.KScaleSize];
        for (int trial = 0; trial < 2000; trial++)
        {
            rng.NextBytes(b);
            var expected = GgmlScalesQ3_K(b);
            var fromSpan = BlockDecode.ScalesQ3_K(b);
            Vector128<sbyte> fromPointer;
            fixed (byte* p = b) fromPointer = BlockDecode.ScalesQ3_K(p);
            Assert.Equal(fromSpan, fromPointer);
            for (int s = 0; s < 16; s++)
            {
                Assert.Equal(expected[s], fromSpan.GetElement(s));
                Assert.Equal(expected[s] + 32, Dequantize.Q3_KScale(b, s));
            }
        }
    }

    [Fact]
    public void VectorDecodersMatchScalarDecoders()
    {
        if (!Avx2.IsSupported) { Console.WriteLine("skipped: the vector decoders need AVX2"); return; }
        var rng = new Random(3);
        var block = new byte[BlockLayout.Q6_K.Bytes]; // large enough for every layout
        for (int trial = 0; trial < 200; trial++)
        {
            rng.NextBytes(block);
            fixed (byte* p = block)
            {
                // q4_0-family nibbles and q5 5th bits.
                var qs = new ReadOnlySpan<byte>(p, 16);
                uint qh = BitConverter.ToUInt32(block, 16);
                var nib = BlockDecode.Nibbles(p);
                var q5 = BlockDecode.Q5Quants(p, qh);
                for (int e = 0; e < 32; e++)
                {
                    Assert.Equal(e < 16 ? qs[e] & 0xF : qs[e - 16] >> 4, nib.GetElement(e));
                    Assert.Equal(BlockDecode.Q5Quant(qs, qh, e), q5.GetElement(e));
                }
                // Side-by-side pairs: low halves of both blocks, then high halves.
                uint qh1 = BitConverter.ToUInt32(block, 20);
                BlockDecode.SplitNibbles(Vector256.Load(p), out var lo, out var hi);
                BlockDecode.PairHighBits(qh, qh1, out var hlo, out var hhi);
                for (int i = 0; i < 32; i++)
                {
                    Assert.Equal(p[i] & 0xF, lo.GetElement(i));
                    Assert.Equal(p[i] >> 4, hi.GetElement(i));
                    uint bits = i < 16 ? qh : qh1;
                    Assert.Equal(BlockDecode.Q5HighBit(bits, i % 16), hlo.GetElement(i));
                    Assert.Equal(BlockDecode.Q5HighBit(bits, i % 16 + 16), hhi.GetElement(i));
                }
                // q5_K 5th bits.
                var qhv = Vector256.Load(p + 32);
                for (int bit = 0; bit < 8; bit++)
                    for (int l = 0; l < 32; l++)
                        Assert.Equal(BlockDecode.Q5_KHighBit(p[32 + l], bit), BlockDecode.BitTo4(qhv, bit).GetElement(l));
                // q2_K planes and q3_K planes (hmask at 0, qs at 32).
                var q3block = new ReadOnlySpan<byte>(p, BlockLayout.Q3_K.Bytes);
                var q2qs = q3block.Slice(BlockLayout.Q3_K.Qs, 64);
                var hm = Vector256.Load(p + BlockLayout.Q3_K.HMask);
                for (int h = 0; h < 2; h++)
                {
                    var q = Vector256.Load(p + BlockLayout.Q3_K.Qs + 32 * h);
                    for (int k = 0; k < 4; k++)
                        for (int l = 0; l < 32; l++)
                        {
                            int e = 128 * h + 32 * k + l;
                            Assert.Equal(BlockDecode.Q2Bits(q2qs, e), BlockDecode.Q2Plane(q, k).GetElement(l));
                            Assert.Equal(BlockDecode.Q3_KQuant(q3block, e), BlockDecode.Q3_KPlane(q, hm, h, k).GetElement(l));
                        }
                }
                // q6_K halves.
                for (int h = 0; h < 2; h++)
                {
                    BlockDecode.Q6_KQuants(p, h, out var q0, out var q1, out var q2, out var q3);
                    var planes = new[] { q0, q1, q2, q3 };
                    for (int k = 0; k < 4; k++)
                        for (int l = 0; l < 32; l++)
                            Assert.Equal(BlockDecode.Q6_KQuant(block, 128 * h + 32 * k + l), planes[k].GetElement(l));
                }
            }
        }
    }

    [Fact]
    public void KernelsAreNotPublicApi()
    {
        // The library's public surface is the model, the tokenizer, the chat client and their options; the kernels
        // are internal (the CLI, the server and the benchmark see them through InternalsVisibleTo).
        foreach (var t in new[]
        {
            typeof(MatMul), typeof(IntDot), typeof(FloatDot), typeof(QuantDot), typeof(Gemm), typeof(IntGemm), typeof(FloatGemm),
            typeof(ActivationQuant), typeof(QuantizedActivations), typeof(ActRow), typeof(ActFormat), typeof(Dequantize),
            typeof(WorkerPool), typeof(IParallelJob), typeof(BlockLayout), typeof(BlockDecode),
        })
            Assert.False(t.IsPublic, $"{t.Name} is public");
        Assert.True(typeof(FitLM.Tokenization.Tokenizer).IsPublic);
        Assert.True(typeof(GgmlType).IsPublic); // the GGUF reader's tensor types
    }
}
