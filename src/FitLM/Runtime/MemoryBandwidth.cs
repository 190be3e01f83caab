using System.Runtime.Intrinsics;
using FitLM.Storage;

namespace FitLM.Runtime;

/// <summary>
/// Measures the machine's memory read bandwidth: threads sum disjoint parts of a buffer much larger than
/// the caches. Decode is memory-bound, so this is the physical limit its speed is compared against.
/// </summary>
public static unsafe class MemoryBandwidth
{
    /// <summary>The probe's buffer when memory allows: 1 GiB.</summary>
    public const long FullProbeBytes = 1L << 30;

    /// <summary>Held besides the buffer while it runs (worker threads' stacks, the GC): measured under 2 MiB.</summary>
    private const long ProbeSlackBytes = 8L << 20;

    /// <summary>
    /// The smallest buffer that still measures memory rather than cache: twice the last-level cache (sysfs), at least 64 MiB.
    /// </summary>
    public static long MinProbeBytes { get; } = Math.Max(64L << 20, 2 * LastLevelCacheBytes());

    /// <summary>
    /// The buffer the probe may use within a budget of <paramref name="budgetBytes"/> for the whole process (0: none), beside
    /// what the process holds now; 0 when that leaves less than <see cref="MinProbeBytes"/> (the probe would exceed the
    /// budget, as `bench --memory 86MiB` once did with 1.1 GB, or measure the caches).
    /// </summary>
    public static long ProbeBytesWithin(long budgetBytes)
    {
        long bytes = budgetBytes <= 0 ? FullProbeBytes : Math.Min(FullProbeBytes, budgetBytes - ProcessMemory.RssBytes() - ProbeSlackBytes);
        bytes = bytes / 4096 * 4096;
        return bytes >= MinProbeBytes ? bytes : 0;
    }

    private static long LastLevelCacheBytes()
    {
        long largest = 0;
        try
        {
            foreach (var dir in Directory.EnumerateDirectories("/sys/devices/system/cpu/cpu0/cache", "index*"))
            {
                string size = File.ReadAllText(Path.Combine(dir, "size")).Trim();
                long mult = size.EndsWith('K') ? 1024 : size.EndsWith('M') ? 1L << 20 : 1;
                if (long.TryParse(size.TrimEnd('K', 'M'), out long n)) largest = Math.Max(largest, n * mult);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return largest;
    }

    /// <summary>Bytes per second read by <paramref name="threads"/> threads; best of a few passes.</summary>
    public static double Measure(int threads, long bufferBytes = FullProbeBytes, int passes = 3)
    {
        bufferBytes = bufferBytes / 4096 * 4096;
        using var buf = new NativeBuffer(bufferBytes);
        new Span<byte>(buf.Pointer, (int)Math.Min(int.MaxValue, bufferBytes)).Fill(1); // touch every page
        for (long off = int.MaxValue; off < bufferBytes; off += int.MaxValue)
            new Span<byte>(buf.Pointer + off, (int)Math.Min(int.MaxValue, bufferBytes - off)).Fill(1);
        double best = 0;
        float sink = 0;
        for (int p = 0; p < passes; p++)
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            long part = bufferBytes / threads / 64 * 64;
            var sums = new float[threads];
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                sums[t] = Sum((float*)(buf.Pointer + t * part), part / 4);
            });
            sw.Stop();
            sink += sums.Sum();
            best = Math.Max(best, part * threads / sw.Elapsed.TotalSeconds);
        }
        GC.KeepAlive(sink);
        return best;
    }

    private static float Sum(float* p, long n)
    {
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        long i = 0;
        for (; i + 32 <= n; i += 32)
        {
            a0 += Vector256.Load(p + i); a1 += Vector256.Load(p + i + 8);
            a2 += Vector256.Load(p + i + 16); a3 += Vector256.Load(p + i + 24);
        }
        return Vector256.Sum(a0 + a1 + a2 + a3);
    }
}
