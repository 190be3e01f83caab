namespace FitLM.Tensors;

/// <summary>A unit of parallel work: items [0, count) are handed out to threads one index at a time.</summary>
internal interface IParallelJob
{
    void Execute(int item);
}

/// <summary>
/// A fixed set of worker threads for the forward pass. A parallel region costs a counter increment and a
/// wake-up, not a Task per row: workers spin briefly between regions (a decode step runs hundreds of
/// regions a few microseconds apart), then sleep. The calling thread works too. Nothing is allocated per
/// region; jobs are reusable objects.
/// </summary>
internal sealed class WorkerPool : IDisposable
{
    private static WorkerPool? s_shared;
    private static readonly object s_lock = new();

    /// <summary>The process-wide pool, sized by <see cref="MatMul.Threads"/>.</summary>
    public static WorkerPool Shared
    {
        get
        {
            var p = s_shared;
            if (p != null && p.Threads == MatMul.Threads) return p;
            lock (s_lock)
            {
                if (s_shared == null || s_shared.Threads != MatMul.Threads)
                {
                    s_shared?.Dispose();
                    s_shared = new WorkerPool(MatMul.Threads);
                }
                return s_shared;
            }
        }
    }

    public int Threads { get; }

    private readonly Thread[] _workers;
    private readonly SemaphoreSlim _wake = new(0);
    private volatile IParallelJob? _job;
    private int _count;
    private int _next;
    private int _pending;           // workers still inside the current region
    private volatile int _generation;
    private volatile bool _disposed;
    private int _sleepers;
    private Exception? _error;
    private readonly object _runLock = new();

    /// <summary>How long an idle worker spins before sleeping, in SpinWait iterations.</summary>
    private const int SpinIterations = 2000;

    public WorkerPool(int threads)
    {
        Threads = Math.Max(1, threads);
        _workers = new Thread[Threads - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            _workers[i] = new Thread(WorkerLoop) { IsBackground = true, Name = $"fitlm-worker-{i + 1}" };
            _workers[i].Start();
        }
    }

    /// <summary>Runs job.Execute(i) for every i in [0, count) across the pool; returns when all are done.</summary>
    public void Run(IParallelJob job, int count)
    {
        if (count <= 0) return;
        if (_workers.Length == 0 || count == 1)
        {
            for (int i = 0; i < count; i++) job.Execute(i);
            return;
        }
        lock (_runLock)
        {
            _job = job;
            _count = count;
            _error = null;
            Volatile.Write(ref _next, 0);
            Volatile.Write(ref _pending, _workers.Length);
            _generation++;
            int sleepers = Volatile.Read(ref _sleepers);
            if (sleepers > 0) _wake.Release(sleepers);
            Work(job, count);
            var spin = new SpinWait();
            while (Volatile.Read(ref _pending) > 0) spin.SpinOnce(sleep1Threshold: -1);
            _job = null;
            if (_error is { } e) throw new AggregateException("a parallel job failed", e);
        }
    }

    private void Work(IParallelJob job, int count)
    {
        try
        {
            int i;
            while ((i = Interlocked.Increment(ref _next) - 1) < count) job.Execute(i);
        }
        catch (Exception e)
        {
            _error ??= e;
            Volatile.Write(ref _next, count); // stop handing out items
        }
    }

    private void WorkerLoop()
    {
        int seen = 0;
        while (!_disposed)
        {
            // Wait for a new region: spin first, then sleep on the semaphore.
            var spin = new SpinWait();
            int iterations = 0;
            while (_generation == seen && !_disposed)
            {
                if (iterations++ < SpinIterations) { spin.SpinOnce(sleep1Threshold: -1); continue; }
                Interlocked.Increment(ref _sleepers);
                if (_generation == seen && !_disposed) _wake.Wait(50);
                Interlocked.Decrement(ref _sleepers);
                iterations = 0;
            }
            if (_disposed) return;
            seen = _generation;
            var job = _job;
            if (job != null) Work(job, _count);
            Interlocked.Decrement(ref _pending);
        }
    }

    public void Dispose()
    {
        _disposed = true;
        _wake.Release(_workers.Length + 1);
    }
}
