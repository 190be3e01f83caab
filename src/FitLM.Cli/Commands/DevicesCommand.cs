using System.CommandLine;
using FitLM.Backends.Cuda;
using FitLM.Runtime;
using FitLM.Tensors;

namespace FitLM.Cli.Commands;

/// <summary>
/// `fitlm devices`: the CUDA devices this machine has, or one line saying why there are none (exit 0: a machine
/// without a GPU is not an error for a listing). `--check`: the GPU decode kernels against the CPU on device 0
/// (docs/cuda.md); a check that cannot run fails.
/// </summary>
internal static class DevicesCommand
{
    /// <summary>Largest error allowed, relative to Σ|w·x| of the row.</summary>
    private const double Tolerance = 1e-4;

    /// <summary>
    /// Against the exact dot for the quantized types: they quantize x to 8 bits per block first, as the CPU does
    /// (llama.cpp's numerics), which moves a row's dot by up to about 1e-3 of Σ|w·x| on short rows.
    /// </summary>
    private const double QuantizedCpuTolerance = 1e-2;

    public static Command Create()
    {
        var check = new Option<bool>("--check") { Description = "check the GPU kernels against the CPU on device 0 and measure their bandwidth" };
        var models = new Option<string[]>("--model", "-m")
        {
            Description = "with --check: also run each model's whole forward pass on the GPU against the CPU (repeatable)",
            AllowMultipleArgumentsPerToken = true,
        };
        var cmd = new Command("devices", "list CUDA devices (--check: verify the GPU kernels)") { check, models };
        cmd.SetAction(r =>
        {
            var paths = r.GetValue(models) ?? [];
            if (paths.Length > 0 && !r.GetValue(check)) return Common.Guard(_ => throw new FitLMException("--model goes with --check"));
            return r.GetValue(check) ? Common.Guard(_ => Check(paths)) : Common.Guard(_ => List());
        });
        return cmd;
    }

    private static int List()
    {
        int count;
        try { count = CudaDevice.Count(); }
        catch (FitLMException e)
        {
            Console.WriteLine(e.Message);
            return 0;
        }
        for (int i = 0; i < count; i++)
        {
            using var d = CudaDevice.Open(i);
            Console.WriteLine(Describe(d));
        }
        return 0;
    }

    private static string Describe(CudaDevice d) =>
        $"cuda:{d.Ordinal}  {d.Name}  compute {d.Major}.{d.Minor}  {d.Multiprocessors} SMs  memory {ProcessMemory.Format(d.TotalMemory)} " +
        $"({ProcessMemory.Format(d.FreeMemory())} free)  bandwidth {(d.TheoreticalBandwidth > 0 ? $"{d.TheoreticalBandwidth / 1e9:F0} GB/s" : "n/a")} " +
        $"({d.BusWidthBits}-bit bus, {d.MemoryClockKHz / 1000} MHz memory clock)";

    // (301, 256): at least as many rows as columns, and odd: Q4_0's two-rows-a-warp kernel with a last warp of one row.
    private static readonly (int Rows, int Cols)[] SmallShapes = [(1, 256), (37, 768), (333, 2816), (101, 4352), (301, 256)];
    // llama-7b's matrices, then the 8B FFN shape of ../shared/README.md's GPU anchor (llama.cpp's kernels on the same card).
    private static readonly (int Rows, int Cols)[] LlamaShapes = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096), (14336, 4096), (4096, 14336)];

    private static int Check(string[] models)
    {
        using var dev = CudaDevice.Open(0);
        Console.WriteLine(Describe(dev));
        // Scratch for the widest x: the quantized types' products quantize x as the CPU does and multiply in integers.
        using var mv = new CudaMatVec(dev, m => Console.Error.WriteLine(m), maxCols: LlamaShapes.Max(s => s.Cols) + 32);
        double copy = dev.CopyBandwidth();
        Console.WriteLine($"device-to-device copy of 1 GiB: {copy / 1e9:F0} GB/s (read + write bytes)");
        Console.WriteLine();
        Console.WriteLine($"{"type",-5} {"rows x cols",-13} {"err/exact",10} {"err/MatVec",10} {"kernel us",10} {"GB/s",7} {"of copy",7}  result");
        // Reading 256 MiB through the L2 (50-60 MiB on H100/H200) before each timed launch: otherwise a matrix that
        // fits in L2 is read from there and the number is not the DRAM bandwidth a model decode sees. A read, not a
        // copy: a copy leaves the L2 full of dirty lines, and the timed kernel then pays for writing them back (up to
        // 50 MB more traffic; the first version of this check flushed by copying and reported ~17 µs too much).
        using var flush = new L2Flush(dev, mv);
        int failures = 0, checks = 0;
        foreach (var (rows, colsWanted) in SmallShapes.Concat(LlamaShapes))
        {
            float[] x = Gaussian(colsWanted + 7, 12345, 1f);
            float[] wf = WeightRows(rows, colsWanted + 7, 17 + rows);
            foreach (var type in CudaMatVec.Types)
            {
                int bs = GgmlTypes.BlockSize(type);
                // Float types also take a row length that is not a multiple of 4 (rows not 16-byte aligned).
                int cols = bs == 1 && rows == 37 ? colsWanted + 7 : colsWanted;
                var r = CheckOne(dev, mv, type, rows, cols, wf, colsWanted + 7, x, flush);
                // A kernel that quantizes x as the CPU does must equal the CPU's product; one that keeps x in float, the exact dot.
                bool integer = CudaMatVec.QuantizesActivations(type);
                double cpuTol = bs == 1 || integer ? Tolerance : QuantizedCpuTolerance;
                bool ok = r.ErrExact <= (integer ? QuantizedCpuTolerance : Tolerance) && r.ErrCpu <= cpuTol;
                checks++;
                if (!ok) failures++;
                string speed = r.Micros > 0
                    ? $"{r.Micros,10:F1} {r.Bytes / (r.Micros * 1e-6) / 1e9,7:F0} {r.Bytes / (r.Micros * 1e-6) / copy,7:P0}"
                    : $"{"-",10} {"-",7} {"-",7}";
                Console.WriteLine($"{GgmlTypes.Name(type),-5} {$"{rows}x{cols}",-13} {r.ErrExact,10:E1} {r.ErrCpu,10:E1} {speed}  {(ok ? "ok" : "MISMATCH")}");
                if (CudaMatVec.QuantizesActivations(type) && SmallShapes.Contains((rows, colsWanted)))
                {
                    foreach (int tokens in TogetherTokens)
                    {
                        double err = CheckTogether(dev, mv, type, rows, cols, tokens);
                        bool together = err <= Tolerance;
                        checks++;
                        if (!together) failures++;
                        Console.WriteLine($"{GgmlTypes.Name(type),-5} {$"{rows}x{cols}",-13} {"",10} {err,10:E1}  three matrices, {tokens} token(s), one launch  {(together ? "ok" : "MISMATCH")}");
                    }
                }
            }
        }
        Console.WriteLine();
        Console.WriteLine(failures == 0 ? $"check passed: {checks} kernels and shapes" : $"check failed: {failures} of {checks} kernels and shapes");
        int modelFailures = 0;
        if (models.Length > 0)
        {
            Console.WriteLine();
            Console.WriteLine("whole forward pass, GPU against CPU:");
            foreach (string path in models)
                if (!DeviceModelCheck.Run(path, Console.Out)) modelFailures++;
            Console.WriteLine();
            Console.WriteLine("streamed layers against resident ones, on the GPU:");
            if (!DeviceModelCheck.RunStreamed(models[0], Console.Out)) modelFailures++;
            Console.WriteLine(modelFailures == 0 ? $"models passed: {models.Length}" : $"models failed: {modelFailures} of {models.Length}");
        }
        return failures == 0 && modelFailures == 0 ? 0 : 1;
    }

    private sealed record Result(double ErrExact, double ErrCpu, double Micros, long Bytes);

    private static unsafe Result CheckOne(CudaDevice dev, CudaMatVec mv, GgmlType type, int rows, int cols, float[] wf, int stride,
        float[] xAll, L2Flush flush)
    {
        long rowBytes = GgmlTypes.RowBytes(type, cols);
        var w = new byte[rowBytes * rows];
        var x = xAll.AsSpan(0, cols).ToArray();
        var exact = new double[rows];
        var absSum = new double[rows];
        Parallel.For(0, rows, r =>
        {
            var row = w.AsSpan((int)(r * rowBytes), (int)rowBytes);
            Quantize.Row(type, wf.AsSpan(r * stride, cols), row);
            var deq = new float[cols];
            Dequantize.Row(type, row, deq);
            double s = 0, a = 0;
            for (int i = 0; i < cols; i++) { double p = (double)deq[i] * x[i]; s += p; a += Math.Abs(p); }
            exact[r] = s;
            absSum[r] = a;
        });
        var cpu = new float[rows];
        fixed (byte* pw = w) MatMul.MatVec(type, pw, rowBytes, rows, cols, x, cpu);

        using var dw = dev.Allocate(w.Length);
        using var dx = dev.Allocate(cols * 4L);
        using var dy = dev.Allocate(rows * 4L);
        dev.Upload<byte>(dw, SplitLayout.Applies(type) ? SplitLayout.FromGguf(type, rows, cols, w) : w);
        dev.Upload<float>(dx, x);
        mv.Run(type, dw, rowBytes, rows, cols, dx, dy);
        dev.Synchronize();
        var gpu = new float[rows];
        dev.Download<float>(dy, gpu);
        double errExact = 0, errCpu = 0;
        for (int r = 0; r < rows; r++)
        {
            double scale = absSum[r] > 0 ? absSum[r] : 1;
            double e1 = Math.Abs(gpu[r] - exact[r]) / scale, e2 = Math.Abs(gpu[r] - (double)cpu[r]) / scale;
            if (!(e1 <= errExact)) errExact = double.IsNaN(e1) ? double.PositiveInfinity : e1;
            if (!(e2 <= errCpu)) errCpu = double.IsNaN(e2) ? double.PositiveInfinity : e2;
        }

        double micros = 0;
        if ((long)rows * cols >= 1 << 20)
        {
            var times = new List<float>();
            for (int i = 0; i < 23; i++)
            {
                flush.Run();
                float ms = dev.Time(() => mv.Run(type, dw, rowBytes, rows, cols, dx, dy));
                if (i >= 3) times.Add(ms); // the first launches warm up clocks and caches of code
            }
            times.Sort();
            micros = times[times.Count / 2] * 1000.0;
        }
        return new Result(errExact, errCpu, micros, w.Length);
    }

    /// <summary>A 256 MiB float32 matrix-vector product whose only purpose is to replace what the L2 holds with clean lines.</summary>
    private sealed class L2Flush(CudaDevice dev, CudaMatVec mv) : IDisposable
    {
        private const int Cols = 4096, Rows = (256 << 20) / (4 * Cols);
        private readonly DeviceBuffer _w = dev.Allocate(4L * Rows * Cols), _x = dev.Allocate(4L * Cols), _y = dev.Allocate(4L * Rows);

        public void Run() => mv.Run(GgmlType.F32, _w, 4L * Cols, Rows, Cols, _x, _y);

        public void Dispose()
        {
            _w.Dispose();
            _x.Dispose();
            _y.Dispose();
        }
    }

    /// <summary>One token (the decode kernels) and five (the batch kernel).</summary>
    private static readonly int[] TogetherTokens = [1, 5];

    /// <summary>
    /// The quantized types: three matrices of different heights (as Q, K and V) multiplied with the same n tokens in one
    /// launch (CudaMatVec.MultiplyTogether), against the CPU's batch product of each; the largest error relative to the
    /// largest |y| of its matrix.
    /// </summary>
    private static unsafe double CheckTogether(CudaDevice dev, CudaMatVec mv, GgmlType type, int rows, int cols, int n)
    {
        var x = Gaussian(n * cols, 777, 1f);
        int[] heights = [rows, rows / 2 + 1, 3];
        long rowBytes = GgmlTypes.RowBytes(type, cols);
        var weights = new byte[3][];
        var buffers = new List<DeviceBuffer>();
        try
        {
            var products = new (ulong W, int Rows, ulong Y)[3];
            for (int i = 0; i < 3; i++)
            {
                var wf = WeightRows(heights[i], cols, 100 + i);
                weights[i] = new byte[rowBytes * heights[i]];
                for (int r = 0; r < heights[i]; r++)
                    Quantize.Row(type, wf.AsSpan(r * cols, cols), weights[i].AsSpan((int)(r * rowBytes), (int)rowBytes));
                var dw = dev.Allocate(weights[i].Length);
                buffers.Add(dw);
                dev.Upload<byte>(dw, SplitLayout.Applies(type) ? SplitLayout.FromGguf(type, heights[i], cols, weights[i]) : weights[i]);
                var dy = dev.Allocate(4L * n * heights[i]);
                buffers.Add(dy);
                products[i] = (dw.Pointer, heights[i], dy.Pointer);
            }
            var dx = dev.Allocate(4L * n * cols);
            buffers.Add(dx);
            dev.Upload<float>(dx, x);
            if (!mv.MultiplyTogether(type, cols, dx.Pointer, n, products[0], products[1], products[2]))
                return double.PositiveInfinity;
            dev.Synchronize();
            double worst = 0;
            for (int i = 0; i < 3; i++)
            {
                var cpu = new float[n * heights[i]];
                fixed (byte* pw = weights[i]) MatMul.MatMulBatch(type, pw, rowBytes, heights[i], cols, x, cpu, n);
                var gpu = new float[cpu.Length];
                dev.Download<float>(buffers[2 * i + 1], gpu);
                double scale = Math.Max(1e-30, cpu.Max(v => Math.Abs((double)v)));
                for (int j = 0; j < cpu.Length; j++)
                {
                    double e = Math.Abs(gpu[j] - (double)cpu[j]) / scale;
                    if (!(e <= worst)) worst = double.IsNaN(e) ? double.PositiveInfinity : e;
                }
            }
            return worst;
        }
        finally
        {
            foreach (var b in buffers) b.Dispose();
        }
    }

    /// <summary>n values of a normal distribution with standard deviation <paramref name="scale"/>.</summary>
    private static float[] Gaussian(int n, int seed, float scale)
    {
        var rng = new SplitMixNormal((ulong)seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = scale * rng.NextNormal();
        return a;
    }

    /// <summary>Weight-like rows (as the kernel tests make them): Gaussian, a per-row scale from 1e-3 to 10, a few outliers.</summary>
    private static float[] WeightRows(int rows, int cols, int seed)
    {
        var w = new float[(long)rows * cols];
        Parallel.For(0, rows, r =>
        {
            var rng = SplitMixNormal.Keyed((ulong)seed, 0, (ulong)r);
            float scale = (float)Math.Pow(10, -3 + 4 * ((rng.NextU64() >> 11) * (1.0 / 9007199254740992.0)));
            var row = w.AsSpan(r * cols, cols);
            for (int i = 0; i < cols; i++) row[i] = scale * rng.NextNormal();
            for (int k = 0; k < cols / 97; k++) row[(int)(rng.NextU64() % (ulong)cols)] *= 4;
        });
        return w;
    }
}
