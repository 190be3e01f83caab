using FitLM.Model;
using FitLM.Runtime;
using FitLM.Storage;

namespace FitLM.Weights;

/// <summary>
/// One slot's read: expert <see cref="Expert"/>'s gate, up and down bytes from the stacked tensors into the slot's
/// three buffers. The slot owns the object and reuses it for every expert it loads (nothing allocated per read).
/// </summary>
internal sealed class ExpertRead
{
    public readonly TensorDesc[] Tensors;
    public readonly NativeBuffer[] Buffers;
    public readonly ReadGroup Group = new();
    public int Expert = -1;
    /// <summary>Started by a prediction rather than by the layer that needs it.</summary>
    public bool Ahead;

    public ExpertRead(TensorDesc[] tensors, NativeBuffer[] buffers)
    {
        Tensors = tensors;
        Buffers = buffers;
    }

    public long Bytes => Buffers[0].Length + Buffers[1].Length + Buffers[2].Length;

    public void Run(IModelSource source)
    {
        // Expert e of a stack [experts × rows] is the e-th run of one expert's bytes (docs/moe.md).
        for (int i = 0; i < 3; i++)
        {
            var b = Buffers[i];
            source.Read(Tensors[i], Expert * b.Length, b.Span);
        }
    }
}

/// <summary>
/// Reads experts on background threads through <see cref="IModelSource.Read"/>, which works for GGUF files and for
/// Hugging Face folders whose experts are stored one tensor each (Locate refuses those). Reads are served in the
/// order submitted, so a layer's misses, submitted before its read-ahead for the next layer, go first; two threads
/// keep two experts in flight (the machine the project targets has 2 cores; the readers mostly wait on storage or copy
/// from the page cache).
/// </summary>
internal sealed class ExpertReader : IDisposable
{
    private readonly IModelSource _source;
    private readonly Queue<ExpertRead> _queue = new();
    private readonly SemaphoreSlim _available = new(0);
    private readonly Thread[] _threads;
    private volatile bool _disposed;

    public ExpertReader(IModelSource source, int threads = 2)
    {
        _source = source;
        _threads = new Thread[threads];
        for (int i = 0; i < threads; i++)
        {
            _threads[i] = new Thread(Loop) { IsBackground = true, Name = $"fitlm-experts-{i}" };
            _threads[i].Start();
        }
    }

    public void Submit(ExpertRead read)
    {
        read.Group.Add(1);
        lock (_queue) _queue.Enqueue(read);
        _available.Release();
    }

    private void Loop()
    {
        while (true)
        {
            _available.Wait();
            if (_disposed) return;
            ExpertRead r;
            lock (_queue)
            {
                if (_queue.Count == 0) continue;
                r = _queue.Dequeue();
            }
            Exception? error = null;
            try { r.Run(_source); }
            catch (Exception e) { error = e; }
            r.Group.Complete(error);
        }
    }

    /// <summary>Stops the threads; the caller has waited for every read it submitted (their buffers are freed next).</summary>
    public void Dispose()
    {
        _disposed = true;
        _available.Release(_threads.Length);
        foreach (var t in _threads) t.Join();
        _available.Dispose();
    }
}
