using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.KvCache;

/// <summary>
/// A fixed KV budget whatever the length: H2O (Zhang et al., 2023) keeps the "heavy hitters" — tokens with the
/// largest attention accumulated over every query so far — plus a window of recent tokens, and StreamingLLM
/// (Xiao et al., 2024) keeps the first few tokens, the attention sinks, whatever their score. Each layer and KV
/// head chooses its own tokens (scores summed over the query heads of its group), from a budget of Keep tokens:
/// Sinks sinks, a recent window of (Keep − Sinks) / 2 tokens, and heavy hitters for the rest. Keys keep the
/// RoPE of their original positions.
/// <para>
/// Tokens live in slots (f32 or f16 float pages of 32 slots); an evicted token's slot is reused. A batch is
/// processed as decoding would: its queries attend one after another, each seeing the cache its predecessors
/// left, and eviction follows each query, so prefill and decode keep the same tokens.
/// </para>
/// </summary>
internal sealed unsafe class H2OKvStore : IKvStore, IParallelJob
{
    /// <summary>Bookkeeping per held token and KV head: its position (int) and accumulated score (float).</summary>
    public const int BytesPerSlot = 8;
    private const int G = KvCacheOptions.Group;
    private readonly IKvModel _model;
    private readonly KvShape _c;
    private readonly KvPagePool _pool;
    private readonly bool _half;
    private readonly int _keep, _sinks, _recent, _capacity, _group;
    private readonly float _scale;
    private readonly int[][] _pages;       // [layer][slot / 32]
    private readonly int[][] _pos;         // [layer * KvHeads + kvh][slot], -1 = free
    private readonly float[][] _score;     // accumulated attention
    private readonly int[] _slotEnd;       // slots in use are below this, per (layer, kvh)
    private readonly int[] _length;
    private readonly float[] _probs;       // [Heads × capacity] attention of the current query over its visible slots
    private readonly int[] _slots;         // the slot of each of those
    private readonly int[] _visible;       // how many slots each head saw
    private readonly float[] _row;
    private int _heldPages, _live;

    // The query being attended (the parallel job's arguments).
    private int _layer, _qp;
    private float* _q, _out;

    public H2OKvStore(KvStoreFactory f)
    {
        _model = f.Model;
        _c = f.Config;
        _pool = f.Pool;
        _half = f.Options.Type == KvType.F16;
        _keep = f.Options.Keep;
        _sinks = f.Options.Sinks;
        _recent = (_keep - _sinks) / 2;
        _capacity = _keep + f.MaxBatch;
        _group = _c.Heads / _c.KvHeads;
        _scale = _c.Scale;
        _pages = new int[_c.Layers][];
        for (int l = 0; l < _c.Layers; l++) { _pages[l] = new int[(_capacity + G - 1) / G]; _pages[l].AsSpan().Fill(-1); }
        int lists = _c.Layers * _c.KvHeads;
        _pos = new int[lists][];
        _score = new float[lists][];
        for (int i = 0; i < lists; i++) { _pos[i] = new int[_capacity]; _pos[i].AsSpan().Fill(-1); _score[i] = new float[_capacity]; }
        _slotEnd = new int[lists];
        _length = new int[_c.Layers];
        _probs = new float[_c.Heads * _capacity];
        _slots = new int[_c.Heads * _capacity];
        _visible = new int[_c.Heads];
        _row = new float[_c.KvDim];
    }

    public int Length => _length[^1];
    public long Bytes => (long)_heldPages * _pool.PageBytes + (long)_live * BytesPerSlot;

    /// <summary>Tokens a (layer, KV head) holds now.</summary>
    public int Held(int layer, int kvHead)
    {
        var pos = _pos[layer * _c.KvHeads + kvHead];
        int n = 0;
        for (int s = 0; s < _slotEnd[layer * _c.KvHeads + kvHead]; s++) if (pos[s] >= 0) n++;
        return n;
    }

    public void Truncate(int pos)
    {
        for (int l = 0; l < _c.Layers; l++)
        {
            if (pos > _length[l]) throw new FitLMException($"KV cache: cannot move to position {pos}, layer {l} holds {_length[l]}");
            for (int h = 0; h < _c.KvHeads; h++)
            {
                int i = l * _c.KvHeads + h;
                for (int s = 0; s < _slotEnd[i]; s++)
                    if (_pos[i][s] >= pos) { _pos[i][s] = -1; _live--; }
                if (pos == 0) _slotEnd[i] = 0;
            }
            if (pos == 0)
                for (int t = 0; t < _pages[l].Length && _pages[l][t] >= 0; t++) { _pool.Return(_pages[l][t]); _pages[l][t] = -1; _heldPages--; }
            _length[l] = pos;
        }
    }

    public void Append(int layer, int pos, in KvRows rows)
    {
        if (pos != _length[layer]) throw new FitLMException($"KV cache: layer {layer} holds {_length[layer]} positions, cannot append at {pos}");
        int kvDim = _c.KvDim, hd = _c.HeadDim;
        for (int t = 0; t < rows.Count; t++)
        {
            int p = pos + t;
            for (int which = 0; which < 2; which++)
            {
                (which == 0 ? rows.K : rows.V).Slice(t * kvDim, kvDim).CopyTo(_row);
                if (which == 0) _model.FinishKey(layer, _row, p); else _model.FinishValue(layer, _row);
                for (int h = 0; h < _c.KvHeads; h++)
                {
                    int i = layer * _c.KvHeads + h;
                    int s = which == 0 ? NewSlot(layer, h, p) : FindSlot(i, p);
                    FloatPage.WriteHeadRow(_pool.Page(_pages[layer][s / G]), _half, _c, which, h, s % G, _row.AsSpan(h * hd, hd));
                }
            }
        }
        _length[layer] = pos + rows.Count;
    }

    private int NewSlot(int layer, int kvHead, int p)
    {
        int i = layer * _c.KvHeads + kvHead;
        var pos = _pos[i];
        int s = 0;
        while (s < _slotEnd[i] && pos[s] >= 0) s++;
        if (s == _slotEnd[i])
        {
            if (s == _capacity) throw new InvalidOperationException("H2O: no free slot");
            _slotEnd[i]++;
        }
        ref int page = ref _pages[layer][s / G];
        if (page < 0) { page = _pool.Rent(); _heldPages++; }
        pos[s] = p;
        _score[i][s] = 0;
        _live++;
        return s;
    }

    private int FindSlot(int list, int p)
    {
        var pos = _pos[list];
        for (int s = _slotEnd[list] - 1; s >= 0; s--) if (pos[s] == p) return s;
        throw new InvalidOperationException("H2O: slot not found");
    }

    public void Attend(int layer, int pos, int n, ReadOnlySpan<float> q, Span<float> output)
    {
        fixed (float* pq = q, po = output)
        {
            _layer = layer;
            for (int t = 0; t < n; t++)
            {
                _qp = pos + t;
                _q = pq + t * _c.QDim;
                _out = po + t * _c.QDim;
                WorkerPool.Shared.Run(this, _c.Heads);
                for (int h = 0; h < _c.KvHeads; h++) AccumulateAndEvict(layer, h);
            }
            _q = _out = null;
        }
    }

    /// <summary>
    /// One query head: softmax over the slots visible to the current query (gathered in slot order, which is
    /// position order until something is evicted), weighted sum of their values.
    /// </summary>
    public void Execute(int head)
    {
        int hd = _c.HeadDim, kvh = head / _group, list = _layer * _c.KvHeads + kvh, end = _slotEnd[list];
        var pos = _pos[list];
        var att = _probs.AsSpan(head * _capacity, _capacity);
        var idx = _slots.AsSpan(head * _capacity, _capacity);
        var q = new ReadOnlySpan<float>(_q + head * hd, hd);
        var row = Scratch(hd);
        int m = 0, first = _c.FirstVisible(_layer, _qp);
        bool vector = AttentionKernels.VectorSupported(hd);
        if (vector)
        {
            // The visible keys gathered 16 at a time, scored by the kernel every other store's attention uses, so
            // that with nothing evicted the result equals theirs bit for bit.
            var keys = Gathered(16 * hd);
            float* scores = stackalloc float[16];
            int pending = 0;
            fixed (float* pk = keys, pq = q)
            {
                for (int s = 0; s <= end; s++)
                {
                    if (s < end)
                    {
                        if (pos[s] < first || pos[s] > _qp) continue;
                        FloatPage.Read(_pool.Page(_pages[_layer][s / G]), _half, _c, 0, kvh, s % G, 1, row).CopyTo(keys.Slice(pending * hd, hd));
                        idx[m + pending++] = s;
                        if (pending < 16) continue;
                    }
                    if (pending == 0) continue;
                    AttentionKernels.Scores(pk, hd, 16, pq, scores, _scale, vector: true);
                    new ReadOnlySpan<float>(scores, pending).CopyTo(att.Slice(m));
                    m += pending;
                    pending = 0;
                }
            }
        }
        else
        {
            for (int s = 0; s < end; s++)
            {
                if (pos[s] < first || pos[s] > _qp) continue;
                var k = FloatPage.Read(_pool.Page(_pages[_layer][s / G]), _half, _c, 0, kvh, s % G, 1, row);
                att[m] = TensorPrimitives.Dot(q, k) * _scale;
                idx[m++] = s;
            }
        }
        _visible[head] = m;
        _c.Cap(att.Slice(0, m));
        TensorPrimitives.SoftMax(att.Slice(0, m), att.Slice(0, m));
        var o = new Span<float>(_out + head * hd, hd);
        o.Clear();
        for (int i = 0; i < m; i++)
        {
            int s = idx[i];
            var v = FloatPage.Read(_pool.Page(_pages[_layer][s / G]), _half, _c, 1, kvh, s % G, 1, row);
            if (vector)
                fixed (float* pv = v, pw = &att[i], po = o) AttentionKernels.AccumulateValues(pv, hd, pw, 0, 1, po, vector: true);
            else
                TensorPrimitives.MultiplyAdd(v, att[i], o, o);
        }
    }

    [ThreadStatic] private static float[]? t_row, t_gathered;
    private static Span<float> Gathered(int n) => (t_gathered is { } a && a.Length >= n ? a : t_gathered = new float[n]).AsSpan(0, n);
    private static Span<float> Scratch(int n) => (t_row is { } a && a.Length >= n ? a : t_row = new float[n]).AsSpan(0, n);

    /// <summary>Adds the current query's attention to the scores, then evicts down to the budget.</summary>
    private void AccumulateAndEvict(int layer, int kvHead)
    {
        int list = layer * _c.KvHeads + kvHead, end = _slotEnd[list];
        var pos = _pos[list];
        var score = _score[list];
        for (int g = 0; g < _group; g++)
        {
            int head = kvHead * _group + g, m = _visible[head];
            var att = _probs.AsSpan(head * _capacity, m);
            var idx = _slots.AsSpan(head * _capacity, m);
            for (int i = 0; i < m; i++) score[idx[i]] += att[i];
        }
        int visible = _visible[kvHead * _group];
        while (visible > _keep)
        {
            int victim = -1;
            float best = float.PositiveInfinity;
            for (int s = 0; s < end; s++)
            {
                int p = pos[s];
                if (p < _sinks || p > _qp - _recent) continue;   // free (-1), a sink, in the recent window, or not yet attended
                if (score[s] < best) { best = score[s]; victim = s; }
            }
            if (victim < 0) break;
            pos[victim] = -1;
            _live--;
            visible--;
        }
    }

    public void Dispose() => Truncate(0);
}
