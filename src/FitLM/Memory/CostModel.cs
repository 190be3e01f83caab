using System.Diagnostics;
using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;
using FitLM.Runtime;
using FitLM.Weights;

namespace FitLM.Memory;

/// <summary>
/// Predicts decode speed of a plan: compute time (every weight byte the token multiplies passes through the
/// kernels once, at the rate a short kernel probe measured on a matrix larger than the caches) and I/O time:
/// streamed tensors at the probe's sequential throughput for the streamer's 4 MiB reads and queue depth, fresh
/// FFN neurons of a prepared model at its random-read throughput for one bundle per read at the flash queue's
/// depth. Prefetching overlaps compute and I/O; the naive mode adds them, reading with one request in flight.
/// A mixture of experts computes only the experts a token runs, and reads the ones its expert cache misses at
/// the random-read throughput for one expert's rows, not overlapped with compute.
/// </summary>
public static class CostModel
{
    public const int StreamReadBytes = 4 << 20;
    public const int StreamQueueDepth = 4;
    /// <summary>Reads the FFN window keeps in flight (<see cref="FlashWeights"/>' queue).</summary>
    public const int FlashQueueDepth = 32;

    /// <summary>
    /// The plan with its predicted decode speed. <paramref name="machine"/>: the speeds to price it with (default: this
    /// machine, probed once per process); <paramref name="probeRoomBytes"/>: what the budget leaves a probe that has
    /// not run yet (the process holds only the runtime while it plans).
    /// </summary>
    public static MemoryPlan Predict(MemoryPlan plan, IModelSource source, StorageProfile storage, MachineProfile? machine = null, long probeRoomBytes = long.MaxValue)
    {
        machine ??= MachineProfile.Measured;
        // Of routed experts only the k a token runs (Footprint counts them so).
        long computeBytes = Footprint.WeightBytesPerToken(source, plan.FlashNeuronFraction);
        // The probe's matrix is as large as what a token multiplies (up to the probe's 96 MiB): a small model's weights
        // stay in cache from token to token, and a 96 MiB probe priced the demo model's 16 MB at memory speed.
        double computeBytesPerSecond = machine.ComputeBytesPerSecond(DominantType(source), Math.Min(probeRoomBytes, computeBytes));
        // Every matrix multiply also pays a fixed hand-off to the worker threads: on the demo model (57 small
        // matrices) that was 30% of a token, which the bytes alone missed (861 tok/s predicted, 480 measured).
        int calls = MatrixCallsPerToken(source);
        double dispatch = calls * machine.DispatchSeconds;
        double compute = computeBytes / computeBytesPerSecond + dispatch;
        long expertReads = plan.Experts?.ReadBytesPerToken ?? 0;
        long streamedLayers = plan.StreamedBytesPerToken - plan.FlashBytesPerToken - expertReads;
        bool embeddingStreamed = plan.PlacementOf("token_embd.weight") == Placement.Streamed && source.Find("output.weight") != null;
        double rowRead = 0;
        if (embeddingStreamed)
        {
            var e = source.Get("token_embd.weight");
            long rowBytes = e.ByteSize / e.Rows;
            streamedLayers -= rowBytes;
            rowRead = DirectFile.Alignment * 2 / storage.BytesPerSecond(DirectFile.Alignment * 2, 1);
        }
        int depth = plan.Mode == StreamMode.Naive ? 1 : StreamQueueDepth;
        double io = streamedLayers > 0 ? streamedLayers / storage.BytesPerSecond(StreamReadBytes, depth, sequential: true) : 0;
        io += rowRead;
        double flashIo = plan.FlashBytesPerToken > 0 ? plan.FlashBytesPerToken / storage.BytesPerSecond(plan.FlashReadBytes, FlashQueueDepth) : 0;
        io += flashIo;
        var (expertIo, expertRead, expertDepth) = plan.Experts is { } ex ? ExpertSeconds(ex, source.Config, storage) : (0, 0L, 0);
        io += expertIo;
        // Streamed tensors are prefetched while the previous layer computes; fresh neurons and missed experts cannot
        // be: which ones a layer needs is known only from its input (the predicting expert policies read some ahead,
        // which this does not price), so their reads always add to the step.
        double unhidden = flashIo + expertIo;
        double seconds = (plan.Mode == StreamMode.Naive ? compute + io - unhidden : Math.Max(compute, io - unhidden)) + unhidden;
        return plan with
        {
            PredictedTokensPerSecond = 1 / seconds,
            CostModelNote = $"compute {compute * 1e3:F1} ms/token ({computeBytes / 1e6:F0} MB at {computeBytesPerSecond / 1e9:F1} GB/s, " +
                $"{calls} matrix calls at {machine.DispatchSeconds * 1e6:F0} µs), " +
                $"I/O {io * 1e3:F1} ms/token ({plan.StreamedBytesPerToken / 1e6:F0} MB at {(io > 0 ? plan.StreamedBytesPerToken / io / 1e9 : 0):F2} GB/s, " +
                $"{ProcessMemory(StreamReadBytes)} sequential reads, queue depth {depth}" +
                (flashIo > 0 ? $"; of it FFN neurons {plan.FlashBytesPerToken / 1e6:F0} MB in {ProcessMemory(plan.FlashReadBytes)} random reads, queue depth {FlashQueueDepth}, {flashIo * 1e3:F1} ms" : "") +
                (expertIo > 0 ? $"; of it missed experts {expertReads / 1e6:F1} MB in {ProcessMemory(expertRead)} random reads, queue depth {expertDepth}, {expertIo * 1e3:F1} ms" : "") +
                "), " + (plan.Mode == StreamMode.Naive ? "not overlapped" : "overlapped"),
        };
    }

    private static string ProcessMemory(long b) => Runtime.ProcessMemory.Format(b);

    /// <summary>
    /// Seconds a token spends reading the experts the cache misses: each miss is three random reads (the expert's rows of
    /// the gate, up and down stacks, rounded out to pages), a layer's misses issued together, one layer after another.
    /// </summary>
    private static (double Seconds, long ReadBytes, int Depth) ExpertSeconds(ExpertPlan ex, ModelConfig c, StorageProfile storage)
    {
        if (ex.ReadBytesPerToken <= 0) return (0, 0, 0);
        long read = ex.ExpertBytes / 3 + 2 * DirectFile.Alignment;
        double missesPerLayer = (1 - ex.PredictedHitRate) * c.ExpertsUsed;
        int depth = Math.Max(1, (int)Math.Ceiling(3 * missesPerLayer));
        double reads = ex.ReadBytesPerToken / (ex.ExpertBytes / 3.0);
        return (reads * read / storage.BytesPerSecond(read, depth), read, depth);
    }

    private static GgmlType DominantType(IModelSource src) =>
        src.Tensors.GroupBy(t => t.Type).OrderByDescending(g => g.Sum(t => t.ByteSize)).First().Key;

    /// <summary>Matrix-vector products one decode step runs: every matrix but a looked-up embedding; a stack of routed experts one per expert a token runs.</summary>
    public static int MatrixCallsPerToken(IModelSource source)
    {
        bool separateHead = source.Find("output.weight") != null;
        int experts = Math.Max(1, source.Config.ExpertsUsed);
        return source.Tensors.Where(t => t.Shape.Length >= 2 && !(t.Name == "token_embd.weight" && separateHead))
            .Sum(t => TensorNames.IsExpertStack(t.Name) ? experts : 1);
    }

    /// <summary>The compute probe's matrix: larger than the caches (a 4096 × 4096 matrix alone would sit in a large L3 and read faster than DRAM).</summary>
    public const long ComputeProbeBytes = 96L << 20;
    /// <summary>
    /// The largest probe matrix: twice the last-level cache where that is more than 96 MiB. This VM reports 300 MiB of
    /// L3, and a 96 MiB probe read 11 GB/s while llama-0.8b q8_0 (819 MB a token) decoded at 6.9 (13.3 tok/s predicted, 8.4 measured).
    /// </summary>
    public static long MaxComputeProbeBytes { get; } = Math.Max(ComputeProbeBytes, MemoryBandwidth.MinProbeBytes);
    /// <summary>The smallest matrix the probe uses when a budget leaves it little room (it then reads partly from cache).</summary>
    public const long MinComputeProbeBytes = 4L << 20;

    /// <summary>
    /// Weight bytes per second the matrix-vector kernels sustain for <paramref name="type"/> on a matrix of
    /// <paramref name="matrixBytes"/> (the model's bytes per token, within <see cref="MinComputeProbeBytes"/> and
    /// <see cref="MaxComputeProbeBytes"/>; less where a budget leaves less room).
    /// </summary>
    public static unsafe double MeasureCompute(GgmlType type, long matrixBytes = ComputeProbeBytes, int cols = 4096)
    {
        long rowBytes = GgmlTypes.RowBytes(type, cols);
        int rows = (int)Math.Max(64, Math.Clamp(matrixBytes, MinComputeProbeBytes, MaxComputeProbeBytes) / rowBytes);
        using var w = new NativeBuffer(rowBytes * rows);
        var rng = new Random(1);
        var row = new float[cols];
        var q = new byte[rowBytes];
        for (int i = 0; i < cols; i++) row[i] = (float)(rng.NextDouble() - 0.5) * 0.04f;
        Quantize.Row(type, row, q);
        for (int r = 0; r < rows; r++) q.CopyTo(new Span<byte>(w.Pointer + r * rowBytes, (int)rowBytes));
        var x = new float[cols];
        var y = new float[rows];
        for (int i = 0; i < cols; i++) x[i] = (float)rng.NextDouble();
        MatMul.MatVec(type, w.Pointer, rowBytes, rows, cols, x, y); // warm-up
        double best = 0;
        for (int rep = 0; rep < 5; rep++)
        {
            var sw = Stopwatch.StartNew();
            MatMul.MatVec(type, w.Pointer, rowBytes, rows, cols, x, y);
            best = Math.Max(best, rowBytes * rows / sw.Elapsed.TotalSeconds);
        }
        return best;
    }

    /// <summary>
    /// Seconds a matrix-vector call costs besides its bytes: the median of many calls on a 64 × 256 q8_0 matrix (16 KiB,
    /// in cache), which is almost all hand-off to the worker threads and waiting for the slowest.
    /// </summary>
    public static unsafe double MeasureDispatch()
    {
        const int rows = 64, cols = 256;
        long rowBytes = GgmlTypes.RowBytes(GgmlType.Q8_0, cols);
        using var w = new NativeBuffer(rowBytes * rows);
        new Span<byte>(w.Pointer, (int)(rowBytes * rows)).Clear();
        var x = new float[cols];
        var y = new float[rows];
        var times = new double[201];
        for (int i = -20; i < times.Length; i++)
        {
            long start = Stopwatch.GetTimestamp();
            MatMul.MatVec(GgmlType.Q8_0, w.Pointer, rowBytes, rows, cols, x, y);
            if (i >= 0) times[i] = Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        Array.Sort(times);
        return times[times.Length / 2];
    }
}
