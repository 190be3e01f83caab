using System.Diagnostics;
using FitLM.Runtime;
using FitLM.Tensors;

// Usage: dotnet run -c Release --project bench/FitLM.Bench -- [decode|prefill|bandwidth|kernel|peak|all] [--legacy]
//        [--types Q8_0,Q4_0,...] [--threads 1,2] [--rows 5632] [--cols 2048] [--tokens 128]
// decode: GB/s of weight bytes for y = W·x, cycling through enough matrices (≥ 512 MiB) that each call reads
//         from DRAM, not the 260 MiB L3. prefill: GFLOP/s (2·rows·cols·tokens per call) on one matrix.
// --rowwise runs prefill's batches as the server decodes them (MatMul.RowWise).
// peak: the instruction-throughput ceilings prefill is measured against (int8 vpdpbusd, f32 FMA), per thread count.
// --legacy runs the float-activation code this replaced (QuantDot per row; dequantize + Gemm for batches).
var argList = args.ToList();
string mode = argList.Count > 0 && !argList[0].StartsWith("--") ? argList[0] : "all";
bool legacy = argList.Contains("--legacy");
// --rowwise: batches as the server decodes them (MatMul.RowWise: each row as alone, weights read once per chunk)
MatMul.RowWise = argList.Contains("--rowwise");
string Opt(string name, string dflt) { int i = argList.IndexOf(name); return i >= 0 && i + 1 < argList.Count ? argList[i + 1] : dflt; }
var types = Opt("--types", "Q8_0,Q4_0,Q4_K,Q6_K,F16").Split(',').Select(Enum.Parse<GgmlType>).ToArray();
var threads = Opt("--threads", "1,2").Split(',').Select(int.Parse).ToArray();
int rows = int.Parse(Opt("--rows", "5632")), cols = int.Parse(Opt("--cols", "2048")), tokens = int.Parse(Opt("--tokens", "128"));
Bench.WorkingSetMiB = int.Parse(Opt("--ws", "512"));

Console.WriteLine($"IntDot {IntDot.Best}, FloatDot {FloatDot.Best}, Gemm {Gemm.Best}, {Environment.ProcessorCount} CPUs, {(legacy ? "LEGACY float-activation path" : "current path")}");
if (mode is "bandwidth" or "all")
    foreach (int t in threads)
        Console.WriteLine($"memory read bandwidth, {t} thread(s): {MemoryBandwidth.Measure(t) / 1e9:F1} GB/s");
if (mode is "decode" or "all")
{
    Console.WriteLine($"decode {rows}x{cols}: GB/s of weights (tok/s-equivalent in parentheses is per matrix)");
    foreach (var type in types) Bench.Decode(type, rows, cols, threads, legacy);
}
if (mode is "kernel")
    foreach (var type in types) Bench.Kernel(type, cols);
if (mode is "peak" or "all")
    foreach (int t in threads) Peak.Print(t);
if (mode is "prefill" or "all")
{
    Console.WriteLine($"prefill {rows}x{cols} x {tokens} tokens: GFLOP/s");
    foreach (var type in types) Bench.Prefill(type, rows, cols, tokens, threads, legacy);
}

static unsafe class Bench
{
    /// <summary>Decode cycles through this many MiB of matrices (512: DRAM; 1: one matrix, cache-resident after warm-up).</summary>
    public static int WorkingSetMiB = 512;

    /// <summary>A matrix of random blocks with sane scales (random bytes elsewhere): every code path, no NaNs.</summary>
    public static byte* MakeMatrix(GgmlType type, int rows, int cols, int seed, out long rowBytes)
    {
        rowBytes = GgmlTypes.RowBytes(type, cols);
        long bytes = rowBytes * rows;
        var p = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)bytes, 64);
        var rng = new Random(seed);
        if (GgmlTypes.BlockSize(type) == 1)
        {
            var row = new float[cols];
            for (int r = 0; r < rows; r++)
            {
                for (int i = 0; i < cols; i++) row[i] = (float)(rng.NextDouble() - 0.5) * 0.1f;
                Quantize.Row(type, row, new Span<byte>(p + r * rowBytes, (int)rowBytes));
            }
            return p;
        }
        rng.NextBytes(new Span<byte>(p, (int)Math.Min(bytes, int.MaxValue)));
        int bb = GgmlTypes.BlockBytes(type);
        int[] halves = type switch
        {
            GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q8_0 => [0],
            GgmlType.Q4_1 or GgmlType.Q5_1 => [0, 2],
            GgmlType.Q2_K => [80, 82],
            GgmlType.Q3_K => [108],
            GgmlType.Q4_K or GgmlType.Q5_K => [0, 2],
            GgmlType.Q6_K => [208],
            _ => [],
        };
        for (long b = 0; b < bytes / bb; b++)
            foreach (int off in halves)
                *(Half*)(p + b * bb + off) = (Half)(float)(rng.NextDouble() * 0.01);
        return p;
    }

    /// <summary>One row, L1-resident, dotted repeatedly: the kernel's own speed in ns and cycles-at-2.9GHz per block.</summary>
    public static void Kernel(GgmlType type, int cols)
    {
        var w = MakeMatrix(type, 1, cols, 3, out long rowBytes);
        var x = new float[cols];
        var rng = new Random(1);
        for (int i = 0; i < cols; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        using var act = new QuantizedActivations();
        var fmt = ActivationQuant.FormatFor(type);
        fixed (float* px = x)
        {
            if (fmt != ActFormat.F32) ActivationQuant.Quantize(type, px, cols, 1, act);
            float sink = 0;
            double best = double.MaxValue;
            var total = Stopwatch.StartNew();
            while (total.Elapsed.TotalSeconds < 1.5)
            {
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < 2000; i++)
                    sink += fmt != ActFormat.F32 ? IntDot.Dot(type, w, act.Row(0), cols, IntDot.Best) : FloatDot.Dot(type, w, px, cols, FloatDot.Best);
                best = Math.Min(best, sw.Elapsed.TotalSeconds / 2000);
            }
            int blocks = cols / 32;
            Console.WriteLine($"  {type,-5}: {rowBytes / best / 1e9,6:F1} GB/s, {best / blocks * 1e9:F2} ns = {best / blocks * 2.9e9:F1} cycles per 32 elements ({sink != 0})");
        }
        System.Runtime.InteropServices.NativeMemory.AlignedFree(w);
    }

    public static void Decode(GgmlType type, int rows, int cols, int[] threads, bool legacy)
    {
        long rowBytes = GgmlTypes.RowBytes(type, cols);
        long matBytes = rowBytes * rows;
        int count = (int)Math.Max(1, ((long)WorkingSetMiB << 20) / matBytes + (WorkingSetMiB > 1 ? 1 : 0));
        var mats = new nint[count];
        for (int i = 0; i < count; i++) mats[i] = (nint)MakeMatrix(type, rows, cols, i, out _);
        var x = new float[cols];
        var rng = new Random(1);
        for (int i = 0; i < cols; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        var y = new float[rows];
        foreach (int t in threads)
        {
            MatMul.Threads = t;
            // Warm-up (JIT tiers, pages), then the best of repeated passes of ≥ 20 ms over ≥ 1.5 s: other
            // processes share this machine, and the best pass is the one they disturbed least.
            var warm = Stopwatch.StartNew();
            while (warm.Elapsed.TotalSeconds < 0.5) for (int i = 0; i < count; i++) Run((byte*)mats[i]);
            double best = double.MaxValue;
            var total = Stopwatch.StartNew();
            while (total.Elapsed.TotalSeconds < 1.5)
            {
                var sw = Stopwatch.StartNew();
                int calls = 0;
                while (sw.Elapsed.TotalSeconds < 0.02) { for (int i = 0; i < count; i++) Run((byte*)mats[i]); calls += count; }
                best = Math.Min(best, sw.Elapsed.TotalSeconds / calls);
            }
            Console.WriteLine($"  {type,-5} {t} thr: {matBytes / best / 1e9,6:F1} GB/s  ({best * 1e3:F3} ms per {matBytes / 1048576.0:F1} MiB)");
        }
        foreach (var m in mats) System.Runtime.InteropServices.NativeMemory.AlignedFree((void*)m);

        void Run(byte* w)
        {
            if (legacy) Legacy.MatVec(type, w, rowBytes, rows, cols, x, y);
            else MatMul.MatVec(type, w, rowBytes, rows, cols, x, y);
        }
    }

    public static void Prefill(GgmlType type, int rows, int cols, int n, int[] threads, bool legacy)
    {
        var w = MakeMatrix(type, rows, cols, 7, out long rowBytes);
        var x = new float[n * cols];
        var rng = new Random(2);
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        var y = new float[n * rows];
        double flops = 2.0 * rows * cols * n;
        foreach (int t in threads)
        {
            MatMul.Threads = t;
            var warm = Stopwatch.StartNew();
            while (warm.Elapsed.TotalSeconds < 0.5) Run();
            double best = double.MaxValue;
            var total = Stopwatch.StartNew();
            for (int rep = 0; rep < 200 && (rep < 3 || total.Elapsed.TotalSeconds < 2); rep++)
            {
                var sw = Stopwatch.StartNew();
                Run();
                best = Math.Min(best, sw.Elapsed.TotalSeconds);
            }
            Console.WriteLine($"  {type,-5} {t} thr: {flops / best / 1e9,6:F1} GFLOP/s  ({best * 1e3:F2} ms)");
        }
        System.Runtime.InteropServices.NativeMemory.AlignedFree(w);

        void Run()
        {
            if (legacy) Legacy.MatMulBatch(type, w, rowBytes, rows, cols, x, y, n);
            else MatMul.MatMulBatch(type, w, rowBytes, rows, cols, x, y, n);
        }
    }
}

/// <summary>The matmul code before the integer kernels (float activations), for the "before" column.</summary>
static unsafe class Legacy
{
    private const int RowsPerChunk = 16;

    public static void MatVec(GgmlType type, byte* w, long rowBytes, int rows, int cols, float[] x, float[] y)
    {
        fixed (float* px = x, py = y)
        {
            var job = new VecJob { Type = type, W = w, RowBytes = rowBytes, Rows = rows, Cols = cols, X = px, Y = py };
            WorkerPool.Shared.Run(job, (rows + RowsPerChunk - 1) / RowsPerChunk);
        }
    }

    public static void MatMulBatch(GgmlType type, byte* w, long rowBytes, int rows, int cols, float[] x, float[] y, int n)
    {
        fixed (float* px = x, py = y)
        {
            var job = new BatchJob { Type = type, W = w, RowBytes = rowBytes, Rows = rows, Cols = cols, X = px, Y = py, N = n };
            WorkerPool.Shared.Run(job, (rows + RowsPerChunk - 1) / RowsPerChunk);
        }
    }

    private sealed class VecJob : IParallelJob
    {
        public GgmlType Type; public byte* W; public long RowBytes; public int Rows, Cols; public float* X, Y;
        public void Execute(int chunk)
        {
            int r0 = chunk * RowsPerChunk, r1 = Math.Min(Rows, r0 + RowsPerChunk);
            var xs = new ReadOnlySpan<float>(X, Cols);
            for (int r = r0; r < r1; r++) Y[r] = QuantDot.Dot(Type, new ReadOnlySpan<byte>(W + r * RowBytes, (int)RowBytes), xs);
        }
    }

    private sealed class BatchJob : IParallelJob
    {
        [ThreadStatic] private static float[]? t_tile;
        public GgmlType Type; public byte* W; public long RowBytes; public int Rows, Cols, N; public float* X, Y;
        public void Execute(int chunk)
        {
            int r0 = chunk * RowsPerChunk, r1 = Math.Min(Rows, r0 + RowsPerChunk);
            int tileLen = RowsPerChunk * Cols;
            var tile = t_tile is { } b && b.Length >= tileLen ? b : t_tile = new float[tileLen];
            for (int r = r0; r < r1; r++)
            {
                var dst = tile.AsSpan((r - r0) * Cols, Cols);
                if (Type == GgmlType.F32) new ReadOnlySpan<float>(W + r * RowBytes, Cols).CopyTo(dst);
                else Dequantize.Row(Type, new ReadOnlySpan<byte>(W + r * RowBytes, (int)RowBytes), dst);
            }
            fixed (float* tp = tile)
            {
                const int TokenBlock = 64;
                for (int t0 = 0; t0 < N; t0 += TokenBlock)
                    Gemm.Tile(tp, r1 - r0, X + (long)t0 * Cols, Math.Min(TokenBlock, N - t0), Cols, Y + (long)t0 * Rows + r0, Rows, Gemm.Best);
            }
        }
    }
}
