using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Kernels;

/// <summary>The float tile kernel: every ISA path the machine can run equals the scalar reference on odd shapes.</summary>
public unsafe class GemmTests
{
    // Theory arguments are public; Gemm.Isa is internal, so the data carries the names.
    public static TheoryData<string> ReachableIsas()
    {
        var data = new TheoryData<string> { nameof(Gemm.Isa.Scalar) };
        if (System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated) data.Add(nameof(Gemm.Isa.Vector256));
        if (System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated) data.Add(nameof(Gemm.Isa.Vector512));
        return data;
    }

    [Theory]
    [MemberData(nameof(ReachableIsas))]
    public void TileMatchesScalarReference(string isaName)
    {
        var isa = Enum.Parse<Gemm.Isa>(isaName);
        var rng = new Random(1234);
        foreach (int rows in new[] { 1, 3, 4, 7, 16 })
            foreach (int n in new[] { 1, 4, 5, 9 })
                foreach (int cols in new[] { 1, 15, 17, 64, 100, 512 })
                {
                    var w = RandomFloats(rng, rows * cols);
                    var x = RandomFloats(rng, n * cols);
                    long stride = rows + 3; // y rows wider than the tile, as in a real matmul
                    var y = new float[n * stride];
                    var expected = new float[n * stride];
                    fixed (float* pw = w, px = x, py = y, pe = expected)
                    {
                        Gemm.Tile(pw, rows, px, n, cols, py, stride, isa);
                        Gemm.BlockScalar(pw, rows, px, n, cols, pe, stride);
                    }
                    for (int i = 0; i < y.Length; i++)
                        Assert.True(Math.Abs(y[i] - expected[i]) <= 1e-4f * (1 + Math.Abs(expected[i])),
                            $"{isa} rows={rows} n={n} cols={cols} at {i}: {y[i]} vs {expected[i]}");
                }
    }

    private static float[] RandomFloats(Random rng, int n)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        return a;
    }
}
