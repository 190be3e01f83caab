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

    public void Run(IModelSource source, DirectFile? file, NativeBuffer? bounce)
    {
        // Expert e of a stack [experts × rows] is the e-th run of one expert's bytes (docs/moe.md).
        for (int i = 0; i < 3; i++)
        {
            var b = Buffers[i];
            long offset = Expert * b.Length;
            if (file == null || bounce == null)
            {
                source.Read(Tensors[i], offset, b.Span);
                continue;
            }
            // Direct I/O: the aligned pages that cover the expert's rows, then its bytes out of them.
            long at = source.Locate(Tensors[i]).Offset + offset;
            var (start, length) = DirectFile.AlignedRange(at, b.Length);
            var pages = bounce.Slice(0, (int)length);
            int got = file.Read(start, pages);
            if (got < at - start + b.Length)
                throw new FitLMException($"{file.Path}: short read of expert {Expert} of '{Tensors[i].Name}' ({got} of {length} bytes at {start})");
            pages.Slice((int)(at - start), (int)b.Length).CopyTo(b.Span);
        }
    }
}

/// <summary>
/// Reads experts on background threads: from a GGUF file with direct I/O (page-aligned reads into a per-thread staging
/// buffer, so the page cache does not fill with experts and a read costs what storage costs), else through
/// <see cref="IModelSource.Read"/> (Hugging Face folders, whose experts are stored one tensor each: Locate refuses those). Reads are served in the
/// order submitted, so a layer's misses, submitted before its read-ahead for the next layer, go first; two threads
/// keep two experts in flight (the machine the project targets has 2 cores; the readers mostly wait on storage or copy
/// from the page cache).
/// </summary>
internal sealed class ExpertReader : IDisposable
{
    private readonly IModelSource _source;
    /// <summary>A GGUF file opened for direct I/O (reads bypass the page cache, as streamed layers' do), or null: reads go through <see cref="IModelSource.Read"/>.</summary>
    private readonly DirectFile? _direct;
    /// <summary>Per reader thread: page-aligned room for the pages that cover one expert's largest matrix.</summary>
    private readonly NativeBuffer[] _bounce = [];
    private readonly Queue<ExpertRead> _queue = new();
    private readonly SemaphoreSlim _available = new(0);
    private readonly Thread[] _threads;
    private volatile bool _disposed;

    /// <summary>Reader threads: two experts in flight.</summary>
    public const int DefaultThreads = 2;

    public ExpertReader(IModelSource source, int threads = DefaultThreads)
    {
        _source = source;
        if (source is GgufSource && source.Config.IsMoe)
        {
            var file = DirectFile.Open(source.Path, direct: true);
            if (file.IsDirect)
            {
                _direct = file;
                long largest = LargestExpertMatrixBytes(source);
                _bounce = new NativeBuffer[threads];
                for (int i = 0; i < threads; i++) _bounce[i] = new NativeBuffer(BounceBytes(largest), DirectFile.Alignment);
            }
            else file.Dispose();
        }
        _threads = new Thread[threads];
        for (int i = 0; i < threads; i++)
        {
            int index = i;
            _threads[i] = new Thread(() => Loop(index)) { IsBackground = true, Name = $"fitlm-experts-{i}" };
            _threads[i].Start();
        }
    }

    /// <summary>One expert's largest matrix (gate, up or down, of any layer): what a staging buffer must cover.</summary>
    public static long LargestExpertMatrixBytes(IModelSource source) =>
        source.Tensors.Where(t => TensorNames.IsExpertStack(t.Name)).Select(t => t.ByteSize / source.Config.ExpertCount).DefaultIfEmpty(0).Max();

    /// <summary>The aligned pages that can cover <paramref name="matrixBytes"/> at any offset.</summary>
    public static long BounceBytes(long matrixBytes) => (matrixBytes + 2L * DirectFile.Alignment + DirectFile.Alignment - 1) / DirectFile.Alignment * DirectFile.Alignment;

    /// <summary>Whether reads bypass the page cache (a GGUF file on storage that takes O_DIRECT).</summary>
    public bool Direct => _direct != null;

    /// <summary>Bytes the readers hold besides the slots: their page-aligned staging buffers.</summary>
    public long ScratchBytes => _bounce.Sum(b => b.Length);

    public void Submit(ExpertRead read)
    {
        read.Group.Add(1);
        lock (_queue) _queue.Enqueue(read);
        _available.Release();
    }

    private void Loop(int index)
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
            try { r.Run(_source, _direct, _direct != null ? _bounce[index] : null); }
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
        foreach (var b in _bounce) b.Dispose();
        _direct?.Dispose();
    }
}
