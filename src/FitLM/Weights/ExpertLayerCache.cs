using System.Diagnostics;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;

namespace FitLM.Weights;

/// <summary>
/// One layer's routed experts in a pool of slots (EdgeMoE, ExpertFlow): each slot holds one expert's gate, up and
/// down bytes in buffers of its own with resident matrices over them, so an expert multiplies exactly as the
/// resident stacked tensors' rows do (same type, same kernel: bit-identical output). <see cref="Prepare"/> pins the
/// batch's experts that are held, starts reads for the others (evicting per <see cref="ExpertSlots"/>), then, for the
/// predicting policies, applies the next layer's router to x and starts reading the next layer's predicted experts in
/// the background while this layer computes. <see cref="Get"/> waits only for its own expert's read.
///
/// A batch that routes to more experts than there are slots (a long prompt) runs in groups rather than growing the
/// pool, so memory stays what the budget gave: Prepare loads as many as fit, and when <see cref="Get"/> asks for one
/// not loaded, the experts the batch has already run are unpinned and the next group (in the order Prepare named them,
/// which is the order MoeFeedForward runs them) is read into their slots. This relies on what MoeFeedForward does: it
/// runs each expert's products right after its Get and keeps no Expert across the next Get.
/// </summary>
internal sealed class ExpertLayerCache : IExpertWeights, IDisposable
{
    private readonly int _layer;
    private readonly ExpertSlots _slots;
    private readonly ExpertRead[] _reads;
    private readonly Expert[] _views;
    private readonly ResidentMatrix[] _matrices;
    private readonly ExpertReader _reader;
    private readonly ExpertStatistics _stats;
    private readonly bool _countsTokens;

    // The current batch: its experts in Prepare's order, each one's position, and where each stands in the statistics.
    private readonly int[] _batch;
    private readonly int[] _position;
    private readonly Use[] _use;
    private int _batchCount;

    private enum Use : byte
    {
        /// <summary>Not yet pinned or placed.</summary>
        Pending,
        /// <summary>Held or read ahead when pinned: a hit if its bytes are complete when Get comes, else a late read ahead.</summary>
        Held,
        /// <summary>Held and read ahead for this batch by the layer before.</summary>
        HeldAhead,
        /// <summary>Counted: a miss when placed, or classified at Get.</summary>
        Counted,
    }

    // Reading ahead for the next layer.
    private ExpertLayerCache? _next;
    private ExpertPredictor? _predictor;
    private readonly int[] _predicted;
    private readonly bool[] _seen;

    public int Count => _slots.ExpertCount;
    public int Slots => _slots.Capacity;
    public long ExpertBytes { get; }
    public long SlotBytes => ExpertBytes * Slots;
    public ExpertPolicy Policy => _slots.Policy;

    public ExpertLayerCache(IModelSource source, int layer, ModelConfig c, int slots, ExpertPolicy policy, ExpertReader reader,
        ExpertStatistics stats, bool countsTokens)
    {
        _layer = layer;
        _reader = reader;
        _stats = stats;
        _countsTokens = countsTokens;
        int e = c.ExpertCount;
        slots = Math.Clamp(slots, 1, e);
        _slots = new ExpertSlots(e, slots, policy);
        _batch = new int[e];
        _position = new int[e];
        _use = new Use[e];
        _predicted = new int[e];
        _seen = new bool[e];
        string p = $"blk.{layer}.";
        var tensors = new[] { source.Get(p + "ffn_gate_exps.weight"), source.Get(p + "ffn_up_exps.weight"), source.Get(p + "ffn_down_exps.weight") };
        int[] rows = [c.ExpertFfnDim, c.ExpertFfnDim, c.Dim];
        var bytes = new long[3];
        for (int i = 0; i < 3; i++)
        {
            var t = tensors[i];
            bytes[i] = GgmlTypes.RowBytes(t.Type, t.RowLength) * rows[i];
            if (t.Rows != e * rows[i] || bytes[i] * e != t.ByteSize)
                throw new FitLMException($"{source.Path}: tensor '{t.Name}' does not hold {e} experts of {rows[i]} rows");
        }
        ExpertBytes = bytes.Sum();
        _reads = new ExpertRead[slots];
        _views = new Expert[slots];
        _matrices = new ResidentMatrix[3 * slots];
        try
        {
            for (int s = 0; s < slots; s++)
            {
                var buffers = new NativeBuffer[3];
                for (int i = 0; i < 3; i++)
                {
                    buffers[i] = new NativeBuffer(bytes[i]);
                    _matrices[3 * s + i] = new ResidentMatrix($"{tensors[i].Name}[slot {s}]", tensors[i].Type, rows[i], tensors[i].RowLength, buffers[i]);
                }
                _reads[s] = new ExpertRead(tensors, buffers);
                _views[s] = new Expert(_matrices[3 * s], _matrices[3 * s + 1], _matrices[3 * s + 2]);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Layer <paramref name="next"/> follows: read its experts ahead with <paramref name="predictor"/> (predicting policies only).</summary>
    public void Precede(ExpertLayerCache next, ExpertPredictor predictor)
    {
        _next = next;
        _predictor = predictor;
    }

    public void Prepare(ReadOnlySpan<int> experts, ReadOnlySpan<float> x, int n)
    {
        if (_countsTokens) _stats.AddTokens(n);
        _slots.BeginBatch();
        if (Policy == ExpertPolicy.None)
            for (int s = 0; s < Slots; s++) _slots.Forget(s); // naive: nothing kept from the batch before
        _batchCount = experts.Length;
        for (int i = 0; i < experts.Length; i++)
        {
            int e = experts[i];
            _batch[i] = e;
            _position[e] = i;
            _use[i] = Use.Pending;
            _slots.Touch(e);
        }
        LoadGroup(0);

        if (_next != null && _predictor != null && n <= _next.Slots)
        {
            int count = _predictor.Predict(x, n, _predicted.AsSpan(0, _next.Slots), _seen);
            _next.ReadAhead(_predicted.AsSpan(0, count));
        }
        _slots.ClearPredicted(); // this batch's prediction is spent
        foreach (var r in _reads) r.Ahead = false;
    }

    public Expert Get(int expert)
    {
        int at = (uint)expert < (uint)Count ? _position[expert] : -1;
        if (at < 0 || at >= _batchCount || _batch[at] != expert)
            throw new InvalidOperationException($"layer {_layer}: expert {expert} was not named by Prepare");
        int slot = _slots.SlotOf(expert);
        if (slot < 0)
        {
            LoadGroup(at);
            slot = _slots.SlotOf(expert);
        }
        bool complete = _reads[slot].Group.IsComplete;
        if (_use[at] != Use.Counted)
        {
            if (complete) _stats.Hit(_layer, _use[at] == Use.HeldAhead);
            else _stats.Late(_layer);
            _use[at] = Use.Counted;
        }
        if (!complete) Wait(slot);
        return _views[slot];
    }

    /// <summary>
    /// Loads the group of the batch's experts at positions [from, from + slots): pins those held, then places the others
    /// (their reads start), which always fits, since the group has no more experts than slots. A miss is counted when
    /// placed; an expert held is counted at its Get: a hit if its bytes are complete then, else a late read ahead.
    /// </summary>
    private void LoadGroup(int from)
    {
        if (from > 0) _slots.ReleasePins(); // the experts already run give their slots to the next group
        int end = Math.Min(_batchCount, from + Slots);
        for (int i = from; i < end; i++)
        {
            int slot = _slots.SlotOf(_batch[i]);
            if (slot < 0) continue;
            _slots.Pin(slot);
            if (_use[i] == Use.Pending) _use[i] = _reads[slot].Ahead ? Use.HeldAhead : Use.Held;
        }
        for (int i = from; i < end; i++)
        {
            int e = _batch[i];
            if (_slots.SlotOf(e) >= 0) continue;
            int slot = _slots.Place(e, prefetch: false);
            _slots.Pin(slot);
            _use[i] = Use.Counted;
            _stats.Miss(_layer);
            Start(slot, e, ahead: false);
        }
    }

    /// <summary>Starts reading the experts predicted for this layer's next batch into free or evictable slots.</summary>
    private void ReadAhead(ReadOnlySpan<int> predicted)
    {
        _slots.ReleasePins(); // this layer is not running: its last batch's experts may go
        _slots.ClearPredicted();
        foreach (int e in predicted) _slots.Predict(e);
        foreach (int e in predicted)
        {
            if (_slots.SlotOf(e) >= 0) continue;
            int slot = _slots.Place(e, prefetch: true);
            if (slot < 0) break;
            Start(slot, e, ahead: true);
        }
    }

    private void Start(int slot, int expert, bool ahead)
    {
        var read = _reads[slot];
        if (!read.Group.IsComplete) WaitDiscarding(slot); // the evicted expert's read ahead is still landing there
        read.Expert = expert;
        read.Ahead = ahead;
        _stats.Read(read.Bytes, ahead);
        _reader.Submit(read);
    }

    private void Wait(int slot)
    {
        long t0 = Stopwatch.GetTimestamp();
        try
        {
            _reads[slot].Group.Wait();
        }
        catch (FitLMException)
        {
            _slots.Forget(slot); // its bytes are not the expert's: read it again next time
            throw;
        }
        finally
        {
            _stats.Waited(t0);
        }
    }

    /// <summary>Waits for a read whose expert was evicted: its failure no longer matters.</summary>
    private void WaitDiscarding(int slot)
    {
        long t0 = Stopwatch.GetTimestamp();
        try { _reads[slot].Group.Wait(); }
        catch (FitLMException) { }
        _stats.Waited(t0);
    }

    /// <summary>Waits for reads still landing (before the buffers are freed).</summary>
    public void Drain()
    {
        foreach (var r in _reads)
        {
            if (r == null) continue;
            try { r.Group.Wait(); }
            catch (FitLMException) { } // a read ahead that failed is thrown away with its slot
        }
    }

    public void Dispose()
    {
        Drain();
        foreach (var m in _matrices) m?.Dispose();
    }
}
