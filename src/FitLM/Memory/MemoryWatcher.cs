namespace FitLM.Memory;

/// <summary>A change of the budget as a consumer sees it: only the latest one matters (changes in between are coalesced).</summary>
public sealed record BudgetChange(long OldBytes, long NewBytes, long Version, string Cause);

/// <summary>
/// Keeps the current memory budget of a <see cref="BudgetSpec"/> while the model runs. A background thread
/// re-reads the source every <see cref="DefaultInterval"/> (so a change is seen within ~0.1-0.2 s; the goal
/// is to be back under a new budget within 1 s), and at once when a PSI trigger on /proc/pressure/memory reports
/// memory pressure. Consumers read <see cref="Current"/>/<see cref="Version"/> between decode steps, or wait with
/// <see cref="WaitForChange"/>: changes that arrive faster than they are handled are coalesced, the consumer
/// only ever sees the latest. Jitter below <see cref="JitterBytes"/> or 1% of the budget is not a change.
/// A fixed size never changes by itself; <see cref="SetBudget"/> (the embedder's API) overrides any source.
/// </summary>
public sealed class MemoryWatcher : IDisposable
{
    public static readonly TimeSpan DefaultInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>
    /// A reading within max(2 MiB, 1%) of the current budget is noise (MemAvailable moves by a few hundred KiB
    /// every tick on an idle machine as caches age): an adaptation costs far more than it would gain.
    /// </summary>
    public const long JitterBytes = 2L << 20;

    private sealed record Snapshot(long Bytes, long Version);

    private readonly object _gate = new();
    private readonly int _intervalMs;
    private readonly ManualResetEventSlim _stop = new();
    private readonly Thread? _thread;
    private PressureTrigger? _trigger;
    private Snapshot _snapshot;
    private TaskCompletionSource _changed = NewSignal();
    private long _override;
    private bool _failing;
    private volatile bool _disposed;

    private MemoryWatcher(BudgetSpec spec, TimeSpan interval)
    {
        Spec = spec;
        _intervalMs = Math.Max(10, (int)interval.TotalMilliseconds);
        _snapshot = new Snapshot(spec.Read(), 0);
        if (!spec.Moves) return;
        // The kernel's pressure says nothing about a file the user rewrites; it speaks for auto and cgroup.
        if (spec.Source is BudgetSource.Available or BudgetSource.Cgroup)
            _trigger = PressureTrigger.TryOpen(spec.Files.ProcPath(Path.Combine("pressure", "memory")));
        _thread = new Thread(Run) { IsBackground = true, Name = "fitlm memory watcher" };
        _thread.Start();
    }

    /// <summary>Reads the budget once (a FitLMException if it cannot) and, for a moving source, starts following it.</summary>
    public static MemoryWatcher Start(BudgetSpec spec, TimeSpan? interval = null) => new(spec, interval ?? DefaultInterval);

    public BudgetSpec Spec { get; }

    /// <summary>The budget in bytes now.</summary>
    public long Current => Volatile.Read(ref _snapshot).Bytes;

    /// <summary>Goes up by one with every change of <see cref="Current"/>.</summary>
    public long Version => Volatile.Read(ref _snapshot).Version;

    /// <summary>The budget and its version, read together.</summary>
    public (long Bytes, long Version) Read()
    {
        var s = Volatile.Read(ref _snapshot);
        return (s.Bytes, s.Version);
    }

    /// <summary>The PSI trigger in use ("some 100000 1000000"), or null where the watcher only polls.</summary>
    public string? PressureThreshold => _trigger is { Alive: true } t ? t.Threshold : null;

    /// <summary>Raised (on the watcher's thread, or SetBudget's caller) after each change. Handlers must be quick: read <see cref="Current"/> and signal.</summary>
    public event Action<BudgetChange>? Changed;

    /// <summary>Raised once when the source stops being readable (the budget stays as it was until it reads again).</summary>
    public event Action<string>? ReadFailed;

    /// <summary>Sets the budget (the embedder's API, and the server's): from now on the source is not followed until <see cref="FollowSource"/>.</summary>
    public void SetBudget(long bytes)
    {
        if (bytes <= 0) throw new FitLMException($"a memory budget must be positive (got {bytes} bytes)");
        lock (_gate) Interlocked.Exchange(ref _override, bytes);
        Publish(bytes, "set", exact: true);
    }

    /// <summary>Drops a <see cref="SetBudget"/> override: the budget follows the spec again (a fixed size: that size).</summary>
    public void FollowSource()
    {
        Interlocked.Exchange(ref _override, 0);
        Refresh();
    }

    /// <summary>Reads the source now rather than at the next tick.</summary>
    public void Refresh() => Poll(SourceName());

    /// <summary>
    /// Waits until the version differs from <paramref name="seenVersion"/>; true if it does, false after the timeout.
    /// An OperationCanceledException when <paramref name="ct"/> is cancelled.
    /// </summary>
    public bool WaitForChange(long seenVersion, TimeSpan timeout, CancellationToken ct = default)
    {
        Task signal;
        lock (_gate)
        {
            if (_snapshot.Version != seenVersion) return true;
            signal = _changed.Task;
        }
        signal.Wait(timeout == Timeout.InfiniteTimeSpan ? -1 : (int)Math.Min(int.MaxValue, timeout.TotalMilliseconds), ct);
        return Version != seenVersion;
    }

    /// <inheritdoc cref="WaitForChange"/>
    public async Task<bool> WaitForChangeAsync(long seenVersion, TimeSpan timeout, CancellationToken ct = default)
    {
        Task signal;
        lock (_gate)
        {
            if (_snapshot.Version != seenVersion) return true;
            signal = _changed.Task;
        }
        try { await signal.WaitAsync(timeout, ct).ConfigureAwait(false); }
        catch (TimeoutException) { }
        return Version != seenVersion;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _stop.Set();
        // The thread closes the trigger itself when it leaves poll() (at most one interval): closing the fd
        // under a poll() in progress could wake on a reused descriptor.
        if (_thread != null && _thread != Thread.CurrentThread) _thread.Join();
        else if (_thread == null) _trigger?.Dispose();
        _stop.Dispose();
    }

    private void Run()
    {
        try
        {
            while (!_disposed)
            {
                bool pressure = _trigger is { Alive: true } t ? t.Wait(_intervalMs) : _stop.Wait(_intervalMs);
                if (_disposed) break;
                Poll(pressure ? "memory pressure" : SourceName());
            }
        }
        finally
        {
            _trigger?.Dispose();
        }
    }

    private void Poll(string cause)
    {
        long bytes;
        try
        {
            bytes = Spec.Read();
        }
        catch (FitLMException e)
        {
            // A file being rewritten can read empty for an instant; keep the budget, say so once.
            bool first;
            lock (_gate) { first = !_failing; _failing = true; }
            if (first) ReadFailed?.Invoke($"{e.Message}; keeping the budget at {Runtime.ProcessMemory.Format(Current)}");
            return;
        }
        lock (_gate) _failing = false;
        Publish(bytes, cause, exact: false);
    }

    /// <param name="exact">SetBudget's value: published as it is, and it silences the source (checked under the lock, so a poll in flight cannot undo it).</param>
    private void Publish(long bytes, string cause, bool exact)
    {
        BudgetChange change;
        TaskCompletionSource signal;
        lock (_gate)
        {
            if (!exact && Interlocked.Read(ref _override) > 0) return;
            var old = _snapshot;
            long delta = Math.Abs(bytes - old.Bytes);
            if (delta == 0 || !exact && delta < Math.Max(JitterBytes, old.Bytes / 100)) return;
            _snapshot = new Snapshot(bytes, old.Version + 1);
            signal = _changed;
            _changed = NewSignal();
            change = new BudgetChange(old.Bytes, bytes, old.Version + 1, cause);
        }
        signal.TrySetResult();
        Changed?.Invoke(change);
    }

    private string SourceName() => Spec.Source switch
    {
        BudgetSource.Available => "available memory",
        BudgetSource.Cgroup => "cgroup limit",
        BudgetSource.LimitFile => "limit file",
        _ => "fixed",
    };

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
