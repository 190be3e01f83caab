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

    /// <summary>
    /// Measures the file's read curves. With <paramref name="region"/> (the byte range a plan streams) every read
    /// falls inside it, where the streamer will read: storage, or a virtual disk's host, need not serve all of a
    /// file alike (measured here: fresh parts of a file at 1.0–1.3 GB/s while the streamer re-read its region at
    /// 2–2.7). The sequential points, which price dense streaming, then read for longer (about 2 s each), because this
    /// kind of disk moves its throughput from second to second.
    /// </summary>
    /// <param name="maxBufferBytes">Most bytes of buffers the probe may hold (what a memory budget leaves it): the random lanes
    /// then share a smaller buffer, and the sequential units shrink, rather than the process outgrowing its budget
    /// (the full probe holds 128 MiB of lane buffers and two units).</param>
    public static StorageProfile Measure(string path, double secondsPerPoint = 0.12, (long Offset, long Length)? region = null,
        long unitBytes = 0, long maxBufferBytes = long.MaxValue, CancellationToken ct = default)
    {
        using var file = DirectFile.Open(path);
        long usable = file.Length / DirectFile.Alignment * DirectFile.Alignment;
        if (usable < DirectFile.Alignment) throw new FitLMException($"{path}: too small to probe storage");
        long origin = 0;
        double sequentialSeconds = secondsPerPoint * 6;
        if (region is { } rg && rg.Length >= Sizes.Max())
        {
            origin = Math.Clamp(rg.Offset / DirectFile.Alignment * DirectFile.Alignment, 0, usable - DirectFile.Alignment);
            usable = Math.Max(DirectFile.Alignment, Math.Min(usable - origin, rg.Length / DirectFile.Alignment * DirectFile.Alignment));
            sequentialSeconds = Math.Max(sequentialSeconds, 16 * secondsPerPoint); // about 2 s at the default
        }
        var points = new List<StorageProfile.Point>();
        int maxDepth = Depths.Max();
        long laneBytes = ProbeLaneBytes(maxDepth, maxBufferBytes);
        using var buffers = new NativeBuffer(laneBytes, DirectFile.Alignment);
        // The streamer's unit (a layer's streamed tensors) double-buffered, when the plan says how big it is: measured
        // here, the same reads ran at 1.2 GB/s into 16 MiB units, 1.5 into 64 MiB and 2.3–2.5 into 204–400 MiB.
        long unitRoom = maxBufferBytes == long.MaxValue ? long.MaxValue : (maxBufferBytes - laneBytes) / 2;
        long unit = Math.Max(Sizes.Max(), Math.Min(unitBytes, unitRoom) / Sizes.Max() * Sizes.Max());
        using (var units = unitBytes > 0 && unit <= unitRoom ? new NativeBuffer(2 * unit, DirectFile.Alignment) : null)
            foreach (int depth in SequentialDepths)
                points.Add(MeasureSequential(file, origin, usable, units ?? buffers, Sizes.Max(), depth, sequentialSeconds, ct));
        foreach (int depth in Depths)
            foreach (int size in Sizes)
            {
                ct.ThrowIfCancellationRequested();
                int readSize = (int)Math.Min(size, usable);
                long slots = Math.Max(1, (usable - readSize) / DirectFile.Alignment);
                var (bytes, reads, seconds) = RunLanes(depth, secondsPerPoint, lane =>
                {
                    var rng = new Random(lane * 7919 + size);
                    int fits = Math.Max(1, Sizes.Max() / readSize), k = 0;
                    long span = buffers.Length - readSize + 1;
                    // Each read lands in the next part of the lane's buffer, as reads land across the streamer's (flash)
                    // buffers: on this VM's disk, reads into the same few pages over and over ran markedly slower.
                    // Under a small budget the lanes' parts wrap around one shared buffer (the data is never read).
                    return () => file.Read(origin + rng.NextInt64(slots) * DirectFile.Alignment,
                        new Span<byte>(buffers.Pointer + ((long)lane * Sizes.Max() + (long)(k++ % fits) * readSize) % span / DirectFile.Alignment * DirectFile.Alignment, readSize));
                });
                points.Add(new StorageProfile.Point(readSize, depth, bytes / seconds, reads > 0 ? seconds * depth / reads : 0));
            }
        return new StorageProfile(path, file.IsDirect, points);
    }

    /// <summary>Held besides the probe's buffers while it runs (its threads' stacks, the GC's growth).</summary>
    private const long ProbeSlackBytes = 8L << 20;

    /// <summary>The least buffer memory the probe runs with: two of its largest reads.</summary>
    public static long MinBufferBytes => 2L * Sizes.Max();

    /// <summary>
    /// What a budget of <paramref name="budgetBytes"/> for the whole process leaves a probe beside what the process holds
    /// now; the probe runs with <see cref="MinBufferBytes"/> or more, else not at all.
    /// </summary>
    public static long RoomWithin(long budgetBytes) => budgetBytes - ProcessMemory.RssBytes() - ProbeSlackBytes;

    /// <summary>The random lanes' buffer: one largest read per lane, within <paramref name="maxBufferBytes"/>, never less than two largest reads (the sequential points double-buffer in it).</summary>
    public static long ProbeLaneBytes(int depth, long maxBufferBytes) =>
        Math.Max(2L * Sizes.Max(), Math.Min((long)depth * Sizes.Max(), maxBufferBytes / DirectFile.Alignment * DirectFile.Alignment));

    /// <summary>
    /// Consecutive reads of <paramref name="size"/>, the way the streamer reads whole tensors: an <see cref="IoQueue"/>
    /// of <paramref name="depth"/> threads fed a unit of reads at a time into one half of the buffers while the other
    /// half's unit completes (double buffering), the units as large as the streamer's when the caller knows them. On
    /// this VM's disk the pattern and the unit size both move the throughput (see Measure), so the probe runs the
    /// streamer's pattern rather than a model of it.
    /// </summary>
    private static StorageProfile.Point MeasureSequential(DirectFile file, long origin, long usable, NativeBuffer buffers, int size,
        int depth, double seconds, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        int readSize = (int)Math.Min(size, usable);
        long chunks = Math.Max(1, usable / readSize);
        int perUnit = (int)Math.Max(1, buffers.Length / 2 / readSize);
        long next = origin == 0 ? new Random(depth).NextInt64(chunks) : 0; // a region: from its start, as the streamer reads it
        using var queue = new IoQueue(depth);
        var groups = new[] { new ReadGroup(), new ReadGroup() };
        var requests = new ReadRequest[2][];
        for (int h = 0; h < 2; h++)
        {
            requests[h] = new ReadRequest[perUnit];
            for (int k = 0; k < perUnit; k++)
                requests[h][k] = new ReadRequest { File = file, Length = readSize, Destination = buffers.Pointer + ((long)h * perUnit + k) * readSize, Group = groups[h] };
        }
        long bytes = 0, reads = 0;
        var sw = Stopwatch.StartNew();
        for (int h = 0; sw.Elapsed.TotalSeconds < seconds; h ^= 1)
        {
            ct.ThrowIfCancellationRequested();
            groups[h].Wait(ct);
            foreach (var r in requests[h])
            {
                r.Offset = origin + next++ % chunks * readSize / DirectFile.Alignment * DirectFile.Alignment;
                queue.Submit(r);
                bytes += readSize;
                reads++;
            }
        }
        groups[0].Wait(ct);
        groups[1].Wait(ct);
        double elapsed = sw.Elapsed.TotalSeconds;
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
