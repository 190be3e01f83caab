using System.Diagnostics;
using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Server;

/// <summary>
/// Continuous batching. One background thread owns the transformer; requests wait in a bounded queue. Between
/// forward passes, finished and cancelled sequences leave (their KV pages go back to the shared pool at once)
/// and queued ones join while a slot is free and the KV budget holds their worst case. Each decode step is ONE
/// batched forward over every generating sequence; between decode steps, prompts are prefilled in chunks of
/// <see cref="ServerOptions.PrefillChunk"/> tokens at most per step, so a long prompt cannot stall the others.
///
/// A request's output does not depend on what else runs, and at temperature 0 equals `fitlm run`'s: the decode
/// pass computes each row as a one-row product (<see cref="MatMul.RowWise"/>: the matrix-vector kernel, weights
/// read once for all rows), attention is per sequence, and each prompt chunk runs in a pass of its own, cut the
/// same way whatever else is queued. <see cref="ServerOptions.BatchInvariant"/> off decodes with the
/// matrix-matrix kernel instead (faster for large batches; greedy text may then change at near-ties).
/// </summary>
public sealed class Scheduler : IDisposable, Adaptation.IKvStoreOwner
{
    private readonly LanguageModel _lm;
    private readonly Transformer _tf;
    private readonly KvBudget _budget;
    private readonly ServerMetrics _metrics;
    private readonly int _parallel, _queueCapacity, _prefillChunk;
    private readonly bool _batchInvariant;
    private readonly LinkedList<Sequence> _queue = new();
    private readonly List<Sequence> _active = new();
    private readonly SequenceSlice[] _slices;
    private readonly Sequence[] _sliceOwner;
    private readonly float[] _logits;
    private float[]? _hidden;
    private readonly SemaphoreSlim _wake = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;

    public Scheduler(LanguageModel lm, KvBudget budget, ServerMetrics metrics, ServerOptions o)
    {
        _lm = lm;
        var tf = _tf = lm.Transformer;
        _budget = budget;
        _metrics = metrics;
        // Decode passes and prefill passes are separate: each holds at most one batch.
        _parallel = Math.Max(1, Math.Min(Math.Min(o.Parallel, tf.MaxBatch), tf.Device?.Sequences ?? int.MaxValue));
        _queueCapacity = o.QueueCapacity;
        _batchInvariant = o.BatchInvariant;
        _prefillChunk = Math.Max(1, Math.Min(o.PrefillChunk, tf.MaxBatch));
        _slices = new SequenceSlice[_parallel];
        _sliceOwner = new Sequence[_parallel];
        _logits = new float[_parallel * tf.Config.Vocab];
        // A smaller KV type (memory short) converts every running sequence's store, between passes.
        lm.Kv.AddOwner(this);
        _thread = new Thread(Loop) { IsBackground = true, Name = "fitlm-scheduler" };
        _thread.Start();
    }

    public int QueueDepth { get { lock (_queue) return _queue.Count; } }

    /// <summary>The sequences in the running batch (scheduler thread only: the KV lever converts their stores between passes).</summary>
    internal IReadOnlyList<Sequence> Active => _active;

    IReadOnlyList<KvCache.IKvStore> Adaptation.IKvStoreOwner.Stores => SequencesWithKv().Select(s => s.Kv!).ToArray();

    void Adaptation.IKvStoreOwner.Replace(IReadOnlyList<KvCache.IKvStore> converted)
    {
        var owners = SequencesWithKv();
        for (int i = 0; i < converted.Count; i++) owners[i].Kv = converted[i];
    }

    /// <summary>Sequences with a KV store, in the order <see cref="Adaptation.IKvStoreOwner.Stores"/> gives them (under the model's step lock, which guards the batch).</summary>
    private List<Sequence> SequencesWithKv() => _active.Where(s => s.Kv != null).ToList();

    /// <summary>Wakes the scheduler thread now (a new memory budget waits to be applied).</summary>
    public void Wake() => _wake.Release();
    public int ActiveCount => Volatile.Read(ref _activeCount);
    private int _activeCount;

    /// <summary>Queues a request; false when the queue is full (the caller answers 503).</summary>
    public bool TryEnqueue(Sequence s)
    {
        lock (_queue)
        {
            if (_queue.Count >= _queueCapacity && !(_queue.Count == 0 && ActiveCount < _parallel)) return false;
            _queue.AddLast(s);
        }
        _wake.Release();
        return true;
    }

    /// <summary>Cancels a request: a queued one leaves the queue now, a running one before the next pass.</summary>
    public void Cancel(Sequence s)
    {
        s.Cancel();
        bool removed;
        lock (_queue) removed = _queue.Remove(s);
        if (removed) s.Finish(FinishReason.Cancelled);
        _wake.Release();
    }

    private void Loop()
    {
        var ct = _stop.Token;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                // The batch changes only under the model's step lock: an adaptation (here, or LanguageModel.SetBudget on
                // another thread) converts its sequences' KV stores. A new budget applies before anyone is admitted.
                lock (_lm.StepLock)
                {
                    Retire();
                    _lm.AdaptBetweenSteps();
                    Admit();
                }
                if (_active.Count == 0)
                {
                    _wake.Wait(TimeSpan.FromSeconds(1), ct);
                    continue;
                }
                lock (_lm.StepLock) Step(ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { break; }
            catch (Exception e)
            {
                // A failed pass fails the sequences in it, not the server.
                string message = e is FitLMException ? e.Message : $"internal error ({e.GetType().Name}): {e.Message}";
                lock (_lm.StepLock)
                {
                    foreach (var s in _active) s.Finish(FinishReason.Error, message);
                    Retire();
                }
            }
        }
        lock (_lm.StepLock)
        {
            foreach (var s in _active) s.Finish(FinishReason.Cancelled);
            Retire();
        }
        lock (_queue)
        {
            foreach (var s in _queue) s.Finish(FinishReason.Cancelled);
            _queue.Clear();
        }
    }

    /// <summary>Drops finished and cancelled sequences; their pages return to the pool and their reservation to the budget.</summary>
    private void Retire()
    {
        for (int i = _active.Count - 1; i >= 0; i--)
        {
            var s = _active[i];
            if (!s.Done && !s.Cancelled) continue;
            if (!s.Done) s.Finish(FinishReason.Cancelled);
            s.Kv?.Dispose();
            s.Kv = null;
            _budget.Release(s.ReservedBytes);
            _active.RemoveAt(i);
        }
        Volatile.Write(ref _activeCount, _active.Count);
    }

    /// <summary>Moves queued requests into free slots, first come first served, while their worst case fits the KV budget.</summary>
    private void Admit()
    {
        while (_active.Count < _parallel)
        {
            Sequence s;
            bool reserved = false;
            lock (_queue)
            {
                if (_queue.First is not { } first) break;
                s = first.Value;
                if (!s.Cancelled)
                {
                    long need = _budget.BytesFor(s.Prompt.Length + s.MaxTokens);
                    // Strict order: a big request at the head waits for room rather than being overtaken forever.
                    if (!_budget.TryReserve(need)) break;
                    s.ReservedBytes = need;
                    reserved = true;
                }
                _queue.RemoveFirst();
            }
            if (!reserved) { s.Finish(FinishReason.Cancelled); continue; }
            // Admitted even if cancelled a moment ago: Retire then returns its reservation like any other's.
            s.Kv = _tf.CreateSequenceKv(); // a store of the shared pools, or a KV slot of the GPU
            _active.Add(s);
        }
        Volatile.Write(ref _activeCount, _active.Count);
    }

    /// <summary>
    /// One decode pass over every generating sequence (a sampled token each), then whole prompt chunks of the
    /// sequences still prefilling, oldest first, up to the per-pass allowance (the first chunk always runs).
    /// </summary>
    private void Step(CancellationToken ct)
    {
        int n = 0;
        foreach (var s in _active)
        {
            if (s.Prefilled < s.Prompt.Length) continue;
            // Each generating sequence feeds its last sampled token.
            _slices[n] = new SequenceSlice(s.Kv!, s.History.AsMemory(s.Position - 1, 1), s.Position - 1, WantLogits: true);
            _sliceOwner[n++] = s;
        }
        if (n > 0)
        {
            double seconds = Run(n, _batchInvariant, ct); // each row as alone: see the class comment
            _metrics.RecordPass(n, 0, n, seconds);
        }

        int allowance = _prefillChunk;
        foreach (var s in _active)
        {
            if (s.Prefilled >= s.Prompt.Length) continue;
            int take = Math.Min(_prefillChunk, s.Prompt.Length - s.Prefilled);
            if (take > allowance) break;
            allowance -= take;
            // One sequence's chunk per pass: its rows then go through the same kernels whatever else is queued
            // (the matrix-matrix kernel for a chunk of several tokens, as `fitlm run` prefills).
            bool last = s.Prefilled + take == s.Prompt.Length;
            if (s.IsEmbedding)
            {
                _metrics.RecordPass(0, take, 0, Embed(s, take, ct));
                continue;
            }
            _slices[0] = new SequenceSlice(s.Kv!, s.Prompt.AsMemory(s.Prefilled, take), s.Prefilled, WantLogits: last);
            _sliceOwner[0] = s;
            double seconds = Run(1, batchInvariant: false, ct);
            _metrics.RecordPass(0, take, last ? 1 : 0, seconds);
        }
    }

    /// <summary>
    /// The next chunk of an embedding request, in a pass of its own as any prompt chunk (so its numbers do not
    /// depend on the load): its final hidden states join the pool; after the last chunk the sequence finishes.
    /// </summary>
    private double Embed(Sequence s, int take, CancellationToken ct)
    {
        int dim = _tf.Config.Dim;
        // Allocated on the first embedding request: a server that only generates does not hold it.
        _hidden ??= new float[_prefillChunk * dim];
        long t0 = Stopwatch.GetTimestamp();
        var rows = _hidden.AsSpan(0, take * dim);
        _tf.ForwardHidden(s.Kv!, s.Prompt.AsSpan(s.Prefilled, take), s.Prefilled, rows, ct);
        double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        s.AddHidden(rows);
        s.Prefilled += take;
        if (s.Prefilled == s.Prompt.Length) s.FinishEmbedding();
        return seconds;
    }

    /// <summary>Runs slices [0, n) in one forward pass, advances prefill counts, samples where there are logits.</summary>
    private double Run(int n, bool batchInvariant, CancellationToken ct)
    {
        long t0 = Stopwatch.GetTimestamp();
        _tf.Forward(_slices.AsSpan(0, n), _logits, batchInvariant, ct);
        double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        int vocab = _tf.Config.Vocab, row = 0;
        for (int i = 0; i < n; i++)
        {
            var s = _sliceOwner[i];
            var slice = _slices[i];
            _slices[i] = default;
            _sliceOwner[i] = null!;
            if (s.Prefilled < s.Prompt.Length) s.Prefilled += slice.Tokens.Length;
            if (!slice.WantLogits) continue;
            var logits = _logits.AsSpan(row++ * vocab, vocab);
            if (!s.Cancelled) s.Step(logits);
        }
        return seconds;
    }

    public void Dispose()
    {
        _lm.Kv.RemoveOwner(this);
        _stop.Cancel();
        _wake.Release();
        _thread.Join(TimeSpan.FromSeconds(10));
    }
}
