namespace FitLM.Storage;

/// <summary>A set of reads that complete together (e.g. one layer's weights); waited on as a whole.</summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "ManualResetEventSlim allocates a kernel handle only when its WaitHandle is read, which this class never does")]
public sealed class ReadGroup
{
    private int _pending;
    private readonly ManualResetEventSlim _done = new(true);
    private Exception? _error;

    internal void Add(int n)
    {
        if (Interlocked.Add(ref _pending, n) == n) _done.Reset();
    }

    internal void Complete(Exception? error)
    {
        if (error != null) _error ??= error;
        if (Interlocked.Decrement(ref _pending) == 0) _done.Set();
    }

    public bool IsComplete => Volatile.Read(ref _pending) == 0;

    /// <summary>Blocks until every read of the group finished; rethrows the first failure.</summary>
    public void Wait(CancellationToken ct = default)
    {
        _done.Wait(ct);
        if (_error is { } e)
        {
            _error = null;
            throw e as FitLMException ?? new FitLMException($"read failed: {e.Message}", e);
        }
    }
}

/// <summary>One read: bytes [Offset, Offset + Length) of a file into Destination, reported to a group.</summary>
public sealed unsafe class ReadRequest
{
    public DirectFile File = null!;
    public long Offset;
    public int Length;
    public byte* Destination;
    public ReadGroup Group = null!;
}

/// <summary>
/// Keeps several reads in flight: storage serves many outstanding small requests far faster than one at a
/// time (queue depth), so a fixed set of I/O threads each issue blocking reads from a shared queue.
/// Request objects are reused by their owners; nothing is allocated per read.
/// </summary>
public sealed class IoQueue : IDisposable
{
    private readonly Queue<ReadRequest> _queue = new();
    private readonly SemaphoreSlim _available = new(0);
    private readonly Thread[] _threads;
    private volatile bool _disposed;

    public int Depth { get; }

    public IoQueue(int depth)
    {
        Depth = Math.Clamp(depth, 1, 256);
        _threads = new Thread[Depth];
        for (int i = 0; i < Depth; i++)
        {
            _threads[i] = new Thread(Loop) { IsBackground = true, Name = $"fitlm-io-{i}" };
            _threads[i].Start();
        }
    }

    public void Submit(ReadRequest r)
    {
        r.Group.Add(1);
        lock (_queue) _queue.Enqueue(r);
        _available.Release();
    }

    private unsafe void Loop()
    {
        while (true)
        {
            _available.Wait();
            if (_disposed) return;
            ReadRequest r;
            lock (_queue)
            {
                if (_queue.Count == 0) continue;
                r = _queue.Dequeue();
            }
            Exception? error = null;
            try
            {
                int n = r.File.Read(r.Offset, new Span<byte>(r.Destination, r.Length));
                if (n < r.Length && r.Offset + n < r.File.Length)
                    error = new FitLMException($"{r.File.Path}: short read at offset {r.Offset} ({n} of {r.Length} bytes)");
            }
            catch (Exception e)
            {
                error = e;
            }
            r.Group.Complete(error);
        }
    }

    public void Dispose()
    {
        _disposed = true;
        _available.Release(_threads.Length);
    }
}
