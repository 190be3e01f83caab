// How the read pattern moves direct-I/O throughput on this machine's disk (docs/streaming.md).
#:project ../src/FitLM/FitLM.csproj
#:property AllowUnsafeBlocks=true
using System.Diagnostics;
using FitLM.Storage;
using FitLM.Runtime;
unsafe
{
    // usage: dotnet run -c Release bench/io-patterns.cs -- MODEL.gguf queue|lanes|lanesbig [UNIT_MiB]
    // Reads 3.4 GB from offset 3.4 GB of MODEL with direct I/O, 4 MiB reads, 4 in flight, three ways: queue = the
    // streamer's pattern (an IoQueue fed one unit of reads at a time, two units double-buffered); lanes = four threads
    // each reading its next chunk into its own 4 MiB buffer (the old probe); lanesbig = lanes into a 204 MiB buffer.
    string path = args[0];
    args = args[1..];
    using var file = DirectFile.Open(path);
    long start = 3_400_000_000L / 4096 * 4096, len = 3_400_000_000L;
    int chunk = 4 << 20;
    string mode = args[0];
    var sw = Stopwatch.StartNew();
    long bytes = 0;
    if (mode == "queue")
    {
        // the streamer: units of 205 MB submitted at once into a slot, two slots alternating
        using var q = new IoQueue(4);
        long unit = (long.Parse(args.Length > 1 ? args[1] : "204")) << 20;
        var slots = new[] { new NativeBuffer(unit, 4096), new NativeBuffer(unit, 4096) };
        var groups = new[] { new ReadGroup(), new ReadGroup() };
        int s = 0;
        for (long u = start; u + unit <= start + len; u += unit, s ^= 1)
        {
            groups[s].Wait();
            for (long o = 0; o < unit; o += chunk)
            {
                q.Submit(new ReadRequest { File = file, Offset = u + o, Length = chunk, Destination = slots[s].Pointer + o, Group = groups[s] });
                bytes += chunk;
            }
        }
        groups[0].Wait(); groups[1].Wait();
    }
    else if (mode == "lanesbig")
    {
        long next = -1;
        long chunks = len / chunk;
        var big = new NativeBuffer(204L << 20, 4096);
        var th = Enumerable.Range(0, 4).Select(i => new Thread(() =>
        {
            while (true)
            {
                long c = Interlocked.Increment(ref next);
                if (c >= chunks) return;
                file.Read(start + c * chunk, new Span<byte>(big.Pointer + (c % 51) * chunk, chunk));
                Interlocked.Add(ref bytes, chunk);
            }
        })).ToArray();
        foreach (var t in th) t.Start();
        foreach (var t in th) t.Join();
    }
    else
    {
        // the probe: 4 threads, each reads the next chunk into its own buffer
        long next = -1;
        long chunks = len / chunk;
        var bufs = Enumerable.Range(0, 4).Select(_ => new NativeBuffer(chunk, 4096)).ToArray();
        var th = Enumerable.Range(0, 4).Select(i => new Thread(() =>
        {
            while (true)
            {
                long c = Interlocked.Increment(ref next);
                if (c >= chunks) return;
                file.Read(start + c * chunk, new Span<byte>(bufs[i].Pointer, chunk));
                Interlocked.Add(ref bytes, chunk);
            }
        })).ToArray();
        foreach (var t in th) t.Start();
        foreach (var t in th) t.Join();
    }
    Console.WriteLine($"{mode}: {bytes / sw.Elapsed.TotalSeconds / 1e9:F2} GB/s ({bytes / 1e9:F1} GB in {sw.Elapsed.TotalSeconds:F1} s)");
}
