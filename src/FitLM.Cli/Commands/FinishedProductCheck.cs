using FitLM.Backends.Cuda;
using FitLM.Runtime;
using FitLM.Tensors;

namespace FitLM.Cli.Commands;

/// <summary>
/// `devices --check`'s check of the one-token Q/K/V product that also does RoPE and the KV store
/// (CudaMatVec.MultiplyQkvRopeStore): the CPU's products of the same quantized weights, then the CPU's arithmetic of the
/// kernels it replaces (rope_qk, kv_store_*). It returns the largest error relative to the largest |value| compared, or
/// infinity where the cache was written outside the token's position.
/// </summary>
internal static unsafe class FinishedProductCheck
{
    /// <summary>The position the check's token is at, in a cache of <see cref="Context"/> positions (the others must stay zero).</summary>
    private const int Position = 5, Context = 8;

    /// <summary>
    /// Q, K and V of one token (<paramref name="qRows"/>, <paramref name="kvRows"/> and <paramref name="kvRows"/> rows of
    /// <paramref name="cols"/>), RoPE of Q and K over heads of <paramref name="headDim"/> (<paramref name="half"/> pairs
    /// rotated), K and V into a float32 or float16 cache.
    /// </summary>
    public static double QkvRopeStore(CudaDevice dev, CudaMatVec mv, GgmlType type, int qRows, int kvRows, int cols, int headDim, int half, bool kvHalf)
    {
        var x = DevicesCommand.Gaussian(cols, 4242, 1f);
        var (wq, q) = Product(type, qRows, cols, x, 301);
        var (wk, k) = Product(type, kvRows, cols, x, 302);
        var (wv, v) = Product(type, kvRows, cols, x, 303);
        var angles = DevicesCommand.Gaussian(Context * half, 99, 2f);
        float[] cos = angles.Select(MathF.Cos).ToArray(), sin = angles.Select(MathF.Sin).ToArray();
        Rotate(q, headDim, half, cos, sin);
        Rotate(k, headDim, half, cos, sin);
        int element = kvHalf ? 2 : 4;
        using var buffers = new Buffers(dev);
        ulong dq = buffers.Add(4L * qRows), dkc = buffers.Add((long)element * Context * kvRows), dvc = buffers.Add((long)element * Context * kvRows);
        CudaDevice.UploadTo<byte>(dkc, new byte[element * Context * kvRows]);
        CudaDevice.UploadTo<byte>(dvc, new byte[element * Context * kvRows]);
        mv.MultiplyQkvRopeStore(type, cols, buffers.Upload(x), sameInput: false, (buffers.Weights(type, qRows, cols, wq), qRows),
            buffers.Weights(type, kvRows, cols, wk), buffers.Weights(type, kvRows, cols, wv), kvRows, dq, buffers.Upload(cos), buffers.Upload(sin),
            buffers.Upload<int>([Position]), headDim, half, dkc, dvc, kvHalf);
        dev.Synchronize();
        var gq = new float[qRows];
        CudaDevice.DownloadFrom(dq, gq);
        double worst = Error(gq, q);
        foreach (var (cache, expected) in new[] { (dkc, k), (dvc, v) })
        {
            var all = new float[Context * kvRows];
            var want = expected;
            if (kvHalf)
            {
                var h = new Half[all.Length];
                CudaDevice.DownloadFrom(cache, h.AsSpan());
                for (int i = 0; i < h.Length; i++) all[i] = (float)h[i];
                want = expected.Select(e => (float)(Half)e).ToArray();
            }
            else CudaDevice.DownloadFrom(cache, all.AsSpan());
            for (int i = 0; i < all.Length; i++)
                if (i / kvRows != Position && all[i] != 0) return double.PositiveInfinity; // written outside its position
            worst = Math.Max(worst, Error(all.AsSpan(Position * kvRows, kvRows), want));
        }
        return worst;
    }

    /// <summary>Weight-like rows quantized to <paramref name="type"/> (GGUF's layout) and the CPU's product with x.</summary>
    private static (byte[] W, float[] Y) Product(GgmlType type, int rows, int cols, float[] x, int seed)
    {
        var wf = DevicesCommand.WeightRows(rows, cols, seed);
        long rowBytes = GgmlTypes.RowBytes(type, cols);
        var w = new byte[rowBytes * rows];
        for (int r = 0; r < rows; r++) Quantize.Row(type, wf.AsSpan(r * cols, cols), w.AsSpan((int)(r * rowBytes), (int)rowBytes));
        var y = new float[rows];
        fixed (byte* pw = w) MatMul.MatVec(type, pw, rowBytes, rows, cols, x, y);
        return (w, y);
    }

    /// <summary>rope_qk's rotation at <see cref="Position"/>: interleaved pairs (2p, 2p + 1) of each head, p &lt; half.</summary>
    private static void Rotate(float[] v, int headDim, int half, float[] cos, float[] sin)
    {
        for (int h = 0; h < v.Length / headDim; h++)
            for (int p = 0; p < half; p++)
            {
                int ia = h * headDim + 2 * p;
                float a = v[ia], b = v[ia + 1], c = cos[Position * half + p], s = sin[Position * half + p];
                v[ia] = a * c - b * s;
                v[ia + 1] = b * c + a * s;
            }
    }

    private static double Error(ReadOnlySpan<float> gpu, ReadOnlySpan<float> cpu)
    {
        double scale = 1e-30, worst = 0;
        foreach (float c in cpu) scale = Math.Max(scale, Math.Abs(c));
        for (int i = 0; i < cpu.Length; i++)
        {
            double e = Math.Abs(gpu[i] - (double)cpu[i]) / scale;
            if (!(e <= worst)) worst = double.IsNaN(e) ? double.PositiveInfinity : e;
        }
        return worst;
    }

    /// <summary>The check's device buffers, freed together.</summary>
    private sealed class Buffers(CudaDevice dev) : IDisposable
    {
        private readonly List<DeviceBuffer> _all = [];

        public ulong Add(long bytes)
        {
            var b = dev.Allocate(bytes);
            _all.Add(b);
            return b.Pointer;
        }

        public ulong Upload<T>(T[] values) where T : unmanaged
        {
            ulong p = Add((long)values.Length * sizeof(T));
            CudaDevice.UploadTo<T>(p, values);
            return p;
        }

        /// <summary>GGUF rows in the device layout the upload writes (SplitLayout for Q4_0 and Q8_0).</summary>
        public ulong Weights(GgmlType type, int rows, int cols, byte[] w) => Upload(SplitLayout.Applies(type) ? SplitLayout.FromGguf(type, rows, cols, w) : w);

        public void Dispose()
        {
            foreach (var b in _all) b.Dispose();
        }
    }
}
