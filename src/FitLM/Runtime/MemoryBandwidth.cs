using System.Runtime.Intrinsics;
using FitLM.Storage;

namespace FitLM.Runtime;

/// <summary>
/// Measures the machine's memory read bandwidth: threads sum disjoint parts of a buffer much larger than
/// the caches. Decode is memory-bound, so this is the physical limit its speed is compared against.
/// </summary>
public static unsafe class MemoryBandwidth
{
    /// <summary>Bytes per second read by <paramref name="threads"/> threads; best of a few passes.</summary>
    public static double Measure(int threads, long bufferBytes = 1L << 30, int passes = 3)
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
