using FitLM.Backends.Cuda;
using FitLM.Tensors;
using FitLM.Tests.Kernels;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Backends.Cuda;

/// <summary>
/// The CUDA kernels against the CPU's dequantized rows, where there is a GPU. xunit 2 has no runtime skip: without
/// one the test returns early and says why (tests/gpu.sh runs the full check on a GPU machine).
/// </summary>
public sealed class CudaMatVecTests(ITestOutputHelper output)
{
    [Fact]
    public void EveryType_MatchesDequantizedDot()
    {
        CudaDevice dev;
        try { dev = CudaDevice.Open(0); }
        catch (FitLMException e) { output.WriteLine($"skipped: {e.Message}"); return; }
        using (dev)
        {
            using var mv = new CudaMatVec(dev, output.WriteLine, maxCols: 4096);
            foreach (var type in CudaMatVec.Types)
            {
                var rows = KernelTestData.WeightRows(type, 37, 3, 5);
                int cols = rows[0].Length;
                long rowBytes = GgmlTypes.RowBytes(type, cols);
                var w = rows.SelectMany(r => KernelTestData.QuantizeRow(type, r)).ToArray();
                var x = KernelTestData.Gaussian(cols, 9);
                using var dw = dev.Allocate(w.Length);
                using var dx = dev.Allocate(cols * 4L);
                using var dy = dev.Allocate(rows.Length * 4L);
                dev.Upload<byte>(dw, SplitLayout.Applies(type) ? SplitLayout.FromGguf(type, rows.Length, cols, w) : w);
                dev.Upload<float>(dx, x);
                mv.Run(type, dw, rowBytes, rows.Length, cols, dx, dy);
                var y = new float[rows.Length];
                dev.Download<float>(dy, y);
                for (int r = 0; r < rows.Length; r++)
                {
                    var deq = KernelTestData.DequantizeRow(type, w.AsSpan((int)(r * rowBytes), (int)rowBytes).ToArray(), cols);
                    var (dot, abs) = KernelTestData.ExactDot(deq, x);
                    // Q4_0/Q8_0 quantize x to 8 bits first (the CPU's numerics): about 1e-3 of Σ|w·x| on short rows.
                    double tolerance = CudaMatVec.QuantizesActivations(type) ? 1e-2 : 1e-4;
                    Assert.True(Math.Abs(y[r] - dot) <= tolerance * abs, $"{type} row {r}: {y[r]} vs {dot}");
                }
            }
        }
    }
}
