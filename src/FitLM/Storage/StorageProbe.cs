using System.Diagnostics;
using FitLM.Runtime;

namespace FitLM.Storage;

/// <summary>Measured read throughput of one file's storage at several read sizes and queue depths.</summary>
public sealed record StorageProfile(string File, bool Direct, IReadOnlyList<StorageProfile.Point> Points)
{
    /// <summary>One measured point; <paramref name="Sequential"/>: consecutive reads of one region (how whole tensors are streamed), else random offsets.</summary>
    public sealed record Point(int ReadBytes, int QueueDepth, double BytesPerSecond, double LatencySeconds, bool Sequential = false);

    /// <summary>
    /// Throughput for reads of <paramref name="readBytes"/> at <paramref name="queueDepth"/>: interpolated
    /// in log(size) between measured sizes, at the nearest measured depth not above the one asked for.
    /// <paramref name="sequential"/> asks for the sequential curve where the probe measured one.
    /// </summary>
    public double BytesPerSecond(long readBytes, int queueDepth, bool sequential = false)
    {
        var points = Points.Where(p => p.Sequential == sequential).ToArray();
        if (points.Length == 0) points = Points.Where(p => !p.Sequential).ToArray();
        var depths = points.Select(p => p.QueueDepth).Distinct().OrderBy(d => d).ToArray();
        int depth = depths.LastOrDefault(d => d <= queueDepth, depths[0]);
        var curve = points.Where(p => p.QueueDepth == depth).OrderBy(p => p.ReadBytes).ToArray();
        if (readBytes <= curve[0].ReadBytes) return curve[0].BytesPerSecond * readBytes / curve[0].ReadBytes;
        if (readBytes >= curve[^1].ReadBytes) return curve[^1].BytesPerSecond;
        for (int i = 1; i < curve.Length; i++)
        {
            if (readBytes > curve[i].ReadBytes) continue;
            double f = (Math.Log(readBytes) - Math.Log(curve[i - 1].ReadBytes)) / (Math.Log(curve[i].ReadBytes) - Math.Log(curve[i - 1].ReadBytes));
            return curve[i - 1].BytesPerSecond + f * (curve[i].BytesPerSecond - curve[i - 1].BytesPerSecond);
        }
        return curve[^1].BytesPerSecond;
    }
}

/// <summary>
/// A short storage probe: random direct reads over a file at several read sizes and queue depths, each for a
/// fixed time. The cost model predicts streaming speed from these curves instead of assuming a figure.
/// </summary>
public static unsafe class StorageProbe
{
    public static readonly int[] Sizes = [4 << 10, 32 << 10, 128 << 10, 1 << 20, 4 << 20];
    public static readonly int[] Depths = [1, 4, 16, 32];
    /// <summary>Sequential points: the streamer's read size at its queue depths (naive 1, prefetch 4).</summary>
    public static readonly int[] SequentialDepths = [1, 4];

    public static StorageProfile Measure(string path, double secondsPerPoint = 0.12, CancellationToken ct = default)
    {
        using var file = DirectFile.Open(path);
        long usable = file.Length / DirectFile.Alignment * DirectFile.Alignment;
        if (usable < DirectFile.Alignment) throw new FitLMException($"{path}: too small to probe storage");
        var points = new List<StorageProfile.Point>();
        int maxDepth = Depths.Max();
        using var buffers = new Storage.NativeBuffer((long)maxDepth * Sizes.Max(), DirectFile.Alignment);
        foreach (int depth in SequentialDepths)
            points.Add(MeasureSequential(file, usable, buffers, Sizes.Max(), depth, secondsPerPoint * 6, ct));
        foreach (int depth in Depths)
            foreach (int size in Sizes)
            {
                ct.ThrowIfCancellationRequested();
                int readSize = (int)Math.Min(size, usable);
                long slots = Math.Max(1, (usable - readSize) / DirectFile.Alignment);
                var (bytes, reads, seconds) = RunLanes(depth, secondsPerPoint, lane =>
                {
                    var rng = new Random(lane * 7919 + size);
                    byte* dst = buffers.Pointer + (long)lane * Sizes.Max();
                    return () => file.Read(rng.NextInt64(slots) * DirectFile.Alignment, new Span<byte>(dst, readSize));
                });
                points.Add(new StorageProfile.Point(readSize, depth, bytes / seconds, reads > 0 ? seconds * depth / reads : 0));
            }
        return new StorageProfile(path, file.IsDirect, points);
    }

    /// <summary>
    /// Consecutive reads of <paramref name="size"/> from a random start, <paramref name="depth"/> in flight (each lane
    /// takes the next chunk): the pattern of streaming whole tensors, which storage (and a virtual disk's host) may
    /// serve faster than random reads of the same size.
    /// </summary>
    private static StorageProfile.Point MeasureSequential(DirectFile file, long usable, Storage.NativeBuffer buffers, int size,
        int depth, double seconds, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        int readSize = (int)Math.Min(size, usable);
        long chunks = Math.Max(1, usable / readSize);
        long next = new Random(depth).NextInt64(chunks);
        var (bytes, reads, elapsed) = RunLanes(depth, seconds, lane =>
        {
            byte* dst = buffers.Pointer + (long)lane * Sizes.Max();
            return () => file.Read(Interlocked.Increment(ref next) % chunks * readSize / DirectFile.Alignment * DirectFile.Alignment,
                new Span<byte>(dst, readSize));
        });
        return new StorageProfile.Point(readSize, depth, bytes / elapsed, reads > 0 ? elapsed * depth / reads : 0, Sequential: true);
    }

    /// <summary>Runs <paramref name="depth"/> threads, each repeating the read its factory makes, for <paramref name="seconds"/>.</summary>
    private static (long Bytes, long Reads, double Seconds) RunLanes(int depth, double seconds, Func<int, Func<int>> lane)
    {
        long bytes = 0, reads = 0;
        var sw = Stopwatch.StartNew();
        var threads = new Thread[depth];
        for (int d = 0; d < depth; d++)
        {
            var read = lane(d);
            threads[d] = new Thread(() =>
            {
                long localBytes = 0, localReads = 0;
                while (sw.Elapsed.TotalSeconds < seconds)
                {
                    localBytes += read();
                    localReads++;
                }
                Interlocked.Add(ref bytes, localBytes);
                Interlocked.Add(ref reads, localReads);
            }) { IsBackground = true };
            threads[d].Start();
        }
        foreach (var t in threads) t.Join();
        return (bytes, reads, sw.Elapsed.TotalSeconds);
    }

    public static string Describe(StorageProfile p)
    {
        var lines = new List<string> { $"storage probe of {p.File} ({(p.Direct ? "direct I/O" : "buffered, page cache dropped")}):" };
        var random = p.Points.Where(x => !x.Sequential).ToArray();
        var depths = random.Select(x => x.QueueDepth).Distinct().ToArray();
        lines.Add($"  {"random read",14} " + string.Join(" ", depths.Select(d => $"{"QD " + d,12}")));
        foreach (var size in random.Select(x => x.ReadBytes).Distinct())
            lines.Add($"  {ProcessMemory.Format(size),14} " + string.Join(" ", random.Where(x => x.ReadBytes == size).Select(x => $"{x.BytesPerSecond / 1e6,7:F0} MB/s")));
        foreach (var s in p.Points.Where(x => x.Sequential))
            lines.Add($"  sequential {ProcessMemory.Format(s.ReadBytes)} reads, QD {s.QueueDepth}: {s.BytesPerSecond / 1e6:F0} MB/s");
        return string.Join(Environment.NewLine, lines);
    }
}
