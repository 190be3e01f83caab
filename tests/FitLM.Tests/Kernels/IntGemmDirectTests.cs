using FitLM.Tensors;
using Xunit;
using static FitLM.Tests.Kernels.KernelTestData;

namespace FitLM.Tests.Kernels;

/// <summary>
/// The q8_0/q4_0 prefill tile that reads weights in place (<see cref="IntGemmDirect"/>) gives the packed tile's results
/// bit for bit: rows not a multiple of 4, tokens not a multiple of 8 or 16, several token blocks.
/// </summary>
public unsafe class IntGemmDirectTests
{
    public static TheoryData<GgmlType> Types => new() { GgmlType.Q8_0, GgmlType.Q4_0 };

    [Theory]
    [MemberData(nameof(Types))]
    public void DirectTileEqualsThePackedTile(GgmlType type)
    {
        if (!IntGemmDirect.Supports(type, IntDot.Best, 1)) return;   // no AVX-VNNI here: the packed tile is the only path
        foreach (int rows in new[] { 1, 3, 4, 7, 16 })
            foreach (int n in new[] { 1, 5, 8, 9, 16, 23, 40 })
            {
                const int blocks = 6, cols = 32 * blocks;
                long rowBytes = GgmlTypes.RowBytes(type, cols);
                var w = WeightRows(type, rows, blocks, rows * 100 + n).SelectMany(r => QuantizeRow(type, r)).ToArray();
                var x = Gaussian(n * cols, n + 7, 2f);
                long stride = rows + 3;
                var packed = new float[n * stride];
                var direct = new float[n * stride];
                using var act = new QuantizedActivations();
                using var pa = new IntGemm.PackedActivations();
                using var pw = new IntGemm.PackedWeights();
                fixed (byte* pwb = w)
                fixed (float* px = x, pp = packed, pd = direct)
                {
                    ActivationQuant.Quantize(ActivationQuant.FormatFor(type), px, cols, n, act);
                    IntGemm.PackActivations(type, act, pa);
                    IntGemm.PackWeights(type, pwb, rowBytes, rows, cols, pw, vector: true);
                    IntGemm.Tile(pw, pa, 0, n, IntGemm.HasMins(type), pp, stride, IntDot.Isa.AvxVnni);
                    IntGemmDirect.Tile(type, pwb, rowBytes, rows, pa, 0, n, pd, stride);
                }
                Assert.Equal(packed, direct);
                Assert.Contains(direct, v => v != 0);
            }
    }
}
