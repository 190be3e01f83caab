using FitLM.Tensors;
using Xunit;
using static FitLM.Tests.Kernels.KernelTestData;

namespace FitLM.Tests.Kernels;

/// <summary>
/// QuantDot.Dot (vectorized where available) and QuantDot.Reference against the dot product of the
/// dequantized row, computed in double. Tolerance: 1e-4 of Σ|a_i x_i| (float32 accumulation error scales with
/// that sum, not with the possibly cancelling result); a wrong element or layout shows up far above it.
/// </summary>
public class QuantDotTests
{
    private static void AssertClose(GgmlType type, byte[] row, float[] x, string what)
    {
        var deq = DequantizeRow(type, row, x.Length);
        var (exact, absSum) = ExactDot(deq, x);
        double tol = 1e-4 * absSum + 1e-30;
        float fast = QuantDot.Dot(type, row, x);
        float reference = QuantDot.Reference(type, row, x);
        Assert.True(Math.Abs(fast - exact) <= tol, $"{type} {what}: Dot {fast} vs exact {exact} (tol {tol})");
        Assert.True(Math.Abs(reference - exact) <= tol, $"{type} {what}: Reference {reference} vs exact {exact} (tol {tol})");
        Assert.True(Math.Abs(fast - reference) <= tol, $"{type} {what}: Dot {fast} vs Reference {reference} (tol {tol})");
    }

    [Theory]
    [MemberData(nameof(AllTypeData), MemberType = typeof(KernelTestData))]
    public void QuantizedRows_MatchDequantizedDot(GgmlType type)
    {
        var rows = WeightRows(type, 5, 9, 40 + (int)type);
        for (int r = 0; r < rows.Length; r++)
        {
            var x = Gaussian(rows[r].Length, 500 + r);
            AssertClose(type, QuantizeRow(type, rows[r]), x, $"row {r}");
        }
    }

    [Theory]
    [MemberData(nameof(BlockTypeData), MemberType = typeof(KernelTestData))]
    public void RandomBlockBytes_MatchDequantizedDot(GgmlType type)
    {
        // Random bytes reach every code, scale and bit pattern a quantizer might not produce.
        for (int seed = 0; seed < 5; seed++)
        {
            int blocks = 3 + 2 * seed;
            var row = RandomBlocks(type, blocks, 700 + seed);
            var x = Gaussian(blocks * GgmlTypes.BlockSize(type), 800 + seed);
            AssertClose(type, row, x, $"seed {seed}");
        }
    }

    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    public void FloatTypes_AnyLength(GgmlType type)
    {
        foreach (int n in new[] { 1, 7, 15, 16, 17, 255, 256, 257, 1000 })
        {
            var v = Gaussian(n, n);
            var x = Gaussian(n, n + 1);
            AssertClose(type, QuantizeRow(type, v), x, $"n={n}");
        }
    }

    [Theory]
    [MemberData(nameof(AllTypeData), MemberType = typeof(KernelTestData))]
    public void OneHotVectors_PickOutElements(GgmlType type)
    {
        // Exact element selection catches a kernel that mixes up which x goes with which quant even when
        // random-vector sums happen to agree.
        var v = WeightRows(type, 1, 2, 77)[0];
        var row = QuantizeRow(type, v);
        var deq = DequantizeRow(type, row, v.Length);
        var x = new float[v.Length];
        for (int i = 0; i < v.Length; i += 1 + i % 5)
        {
            Array.Clear(x);
            x[i] = 1;
            float got = QuantDot.Dot(type, row, x);
            Assert.True(Math.Abs(got - deq[i]) <= 1e-6 * Math.Abs(deq[i]) + 1e-12, $"{type} element {i}: {got} vs {deq[i]}");
        }
    }

    [Theory]
    [MemberData(nameof(AllTypeData), MemberType = typeof(KernelTestData))]
    public void EmptyRow_IsZero(GgmlType type)
    {
        Assert.Equal(0f, QuantDot.Dot(type, ReadOnlySpan<byte>.Empty, ReadOnlySpan<float>.Empty));
    }
}
