using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.KvCache;

/// <summary>
/// Keys and values of one layer, 32 positions (a tile, one page) of one KV head at a time, as floats.
/// Position p lies in tile p / 32, row p % 32. A source returns a view of its storage where it holds floats,
/// or decodes into the scratch it is given.
/// </summary>
internal interface IKvTiles
{
    /// <summary>Keys of a tile for one KV head: token-major [32 × HeadDim], or channel-major [HeadDim × 32] when <paramref name="channelMajor"/>.</summary>
    ReadOnlySpan<float> Keys(int layer, int tile, int kvHead, int queryPos, Span<float> scratch, out bool channelMajor);
    /// <summary>Values of a tile for one KV head, token-major [32 × HeadDim].</summary>
    ReadOnlySpan<float> Values(int layer, int tile, int kvHead, int queryPos, Span<float> scratch);
    /// <summary>Whether a tile reads the same whatever the query position (KIVI and XQuant's tiles depend on it), so a block of queries may share one read.</summary>
    bool SameTilesForEveryQuery => false;
}

/// <summary>
/// Causal grouped-query attention over an <see cref="IKvTiles"/> source. One work item is a (query token,
/// KV head, span of positions): the query heads of a group share each decoded tile. Short batches (decode)
/// split long contexts into spans of whole tiles, merged afterwards with their softmax maxima (flash-decoding);
/// the split depends only on the batch and context, never on the thread count, so results are reproducible.
/// The job object is reused; per-thread scratch is allocated once per thread.
/// </summary>
internal sealed unsafe class TileAttention : IParallelJob
{
    private const int Tile = KvCacheOptions.Group;
    /// <summary>Batches shorter than this split the context into spans.</summary>
    private const int SplitBelow = 8;
    private const int MaxSplits = 16;
    private const int MinSplitTiles = 8;

    private readonly KvShape _c;
    private readonly float _scale;
    private readonly int _group, _hd, _maxContext;
    // Partial results of split items: per (item, query head of the group): max, sum, acc[hd].
    private readonly float[] _partMax, _partSum, _partAcc;
    private readonly PrefillAttention _prefill;

    private IKvTiles _src = null!;
    private int _layer, _pos, _n, _splits, _splitTiles;
    private float* _q, _out;

    public TileAttention(KvShape c, int maxContext)
    {
        _c = c;
        _maxContext = maxContext;
        _hd = c.HeadDim;
        _group = c.Heads / c.KvHeads;
        _scale = c.Scale;
        int items = SplitBelow * c.KvHeads * MaxSplits;
        _partMax = new float[items * _group];
        _partSum = new float[items * _group];
        _partAcc = new float[items * _group * _hd];
        _prefill = new PrefillAttention(c, maxContext);
    }

    /// <summary>
    /// Bytes of the split partials that attention over <paramref name="maxContext"/> positions can write: the
    /// constructor allocates room for the most splits (untouched pages of a large array are never resident), a
    /// batch of n &lt; 8 tokens writes n·KvHeads·splits items, and a context under 16 tiles never splits.
    /// </summary>
    public static long PartialBytes(KvShape c, int maxContext)
    {
        int splits = DecodeSplits(maxContext);
        if (splits == 1) return 0;
        long items = (long)(SplitBelow - 1) * c.KvHeads * splits, group = c.Heads / c.KvHeads;
        return 4 * items * group * (2L + c.HeadDim);
    }

    /// <summary>Bytes of one worker thread's scores and tile scratch for a context (allocated at its first attention, kept).</summary>
    public static long ThreadScratchBytes(KvShape c, int maxContext) => 4L * (PrefillAttention.ScoreFloatsFor(c, maxContext) + (long)Tile * c.HeadDim);

    /// <summary>out[t] = attention of q[t] (position pos + t) over positions [0, pos + t].</summary>
    public void Run(IKvTiles src, int layer, int pos, int n, ReadOnlySpan<float> q, Span<float> output)
    {
        if (q.Length < n * _c.QDim || output.Length < n * _c.QDim) throw new ArgumentException("attention buffers too small");
        fixed (float* pq = q, po = output)
        {
            _src = src; _layer = layer; _pos = pos; _n = n; _q = pq; _out = po;
            RunPinned();
            _q = _out = null;
            _src = null!;
        }
    }

    /// <summary>Spans a short batch (decode) splits a context of <paramref name="positions"/> into: one per 8 tiles, 1..16.</summary>
    private static int DecodeSplits(int positions) => Math.Clamp((positions + Tile - 1) / Tile / MinSplitTiles, 1, MaxSplits);

    private void RunPinned()
    {
        if (_n > 1 && MatMul.RowWise && DecodeSplits(_pos + _n) > 1)
        {
            RunQueryByQuery();
            return;
        }
        int pos = _pos, n = _n;
        if (PrefillAttention.Applies(_c, _src, n))
        {
            _prefill.Run(_src, _layer, pos, n, _q, _out);
            return;
        }
        int tiles = (pos + n + Tile - 1) / Tile;
        _splits = n >= SplitBelow ? 1 : DecodeSplits(pos + n);
        _splitTiles = (tiles + _splits - 1) / _splits;
        WorkerPool.Shared.Run(this, n * _c.KvHeads * _splits);
        if (_splits > 1) Merge();
    }

    /// <summary>
    /// Under <see cref="MatMul.RowWise"/> (each row of a batch exactly as alone: speculative verification), every
    /// query runs as a one-query call at its own position would: a decode step splits a context of 16+ tiles into
    /// spans merged by their softmax maxima, which a batch of 8+ queries does not, and the split of a shorter batch
    /// depends on its last position, so the sums differ in the last bits (and, after the next layer's activation
    /// quantization, sometimes in the greedy token). One parallel run per query instead of one per batch. Below 16
    /// tiles no query splits and the batch already computes each query as alone (one parallel run: fewer barriers).
    /// </summary>
    private void RunQueryByQuery()
    {
        int pos = _pos, n = _n, width = _c.QDim;
        float* q = _q, o = _out;
        try
        {
            for (int t = 0; t < n; t++)
            {
                _pos = pos + t;
                _n = 1;
                _q = q + (long)t * width;
                _out = o + (long)t * width;
                RunPinned();
            }
        }
        finally
        {
            _pos = pos; _n = n; _q = q; _out = o;
        }
    }

    public void Execute(int item)
    {
        int kvHeads = _c.KvHeads, hd = _hd, group = _group;
        int s = item % _splits, kvh = item / _splits % kvHeads, t = item / (_splits * kvHeads);
        int qp = _pos + t, len = qp + 1;
        // A sliding-window layer skips the tiles wholly before its window and masks the rest of it below.
        int first = _c.FirstVisible(_layer, qp);
        int from = Math.Max(s * _splitTiles * Tile, first / Tile * Tile), to = Math.Min(len, (s + 1) * _splitTiles * Tile);
        if (from >= to)
        {
            for (int g = 0; g < group; g++) { _partMax[item * group + g] = float.NegativeInfinity; _partSum[item * group + g] = 0; }
            return;
        }
        int span = to - from;
        // Sized for the whole context at once, so decoding never grows it.
        var scratch = Scratch.Get(group * Math.Max(span, _maxContext), Tile * hd);
        var scores = scratch.Scores.AsSpan(0, group * span);
        var tileBuf = scratch.Tile.AsSpan(0, Tile * hd);
        var q = new ReadOnlySpan<float>(_q + t * _c.QDim + kvh * group * hd, group * hd);

        // Scores q·k for every query head of the group (AttentionKernels, as PrefillAttention computes them).
        bool vector = AttentionKernels.VectorSupported(hd);
        float* tileScores = stackalloc float[Tile];
        for (int p0 = from; p0 < to; p0 += Tile)
        {
            int cnt = Math.Min(Tile, to - p0), j0 = p0 - from;
            var keys = _src.Keys(_layer, p0 / Tile, kvh, qp, tileBuf, out bool channelMajor);
            for (int g = 0; g < group; g++)
            {
                var qg = q.Slice(g * hd, hd);
                var sc = scores.Slice(g * span + j0, cnt);
                if (channelMajor)
                {
                    sc.Clear();
                    for (int d = 0; d < hd; d++) TensorPrimitives.MultiplyAdd(keys.Slice(d * Tile, cnt), qg[d], sc, sc);
                    TensorPrimitives.Multiply(sc, _scale, sc);
                }
                else if (vector && keys.Length >= Tile * hd)
                {
                    fixed (float* pk = keys, pq = qg) AttentionKernels.Scores(pk, hd, cnt <= 16 ? 16 : Tile, pq, tileScores, _scale, vector: true);
                    new ReadOnlySpan<float>(tileScores, cnt).CopyTo(sc);
                }
                else
                {
                    for (int j = 0; j < cnt; j++) sc[j] = TensorPrimitives.Dot(qg, keys.Slice(j * hd, hd)) * _scale;
                }
            }
        }
        // Softmax: normalized in place when this item covers the whole context, else kept with its max and sum.
        // Soft-capping (Gemma 2) first, then positions before the window out (from is tile-aligned, so at most
        // 31 of them; the span always holds visible ones, since from < to and qp itself is visible).
        for (int g = 0; g < group; g++)
        {
            var sc = scores.Slice(g * span, span);
            _c.Cap(sc);
            if (first > from) sc[..Math.Min(span, first - from)].Fill(float.NegativeInfinity);
            if (_splits == 1) TensorPrimitives.SoftMax(sc, sc);
            else
            {
                float max = TensorPrimitives.Max(sc);
                TensorPrimitives.Subtract(sc, max, sc);
                TensorPrimitives.Exp(sc, sc);
                _partMax[item * group + g] = max;
                _partSum[item * group + g] = TensorPrimitives.Sum(sc);
            }
        }
        // Weighted sum of values.
        Span<float> acc = _splits == 1
            ? new Span<float>(_out + t * _c.QDim + kvh * group * hd, group * hd)
            : _partAcc.AsSpan(item * group * hd, group * hd);
        acc.Clear();
        for (int p0 = from; p0 < to; p0 += Tile)
        {
            int cnt = Math.Min(Tile, to - p0), j0 = p0 - from;
            var values = _src.Values(_layer, p0 / Tile, kvh, qp, tileBuf);
            for (int g = 0; g < group; g++)
            {
                var o = acc.Slice(g * hd, hd);
                var w = scores.Slice(g * span + j0, cnt);
                if (vector)
                    fixed (float* pv = values, pw = w, po = o) AttentionKernels.AccumulateValues(pv, hd, pw, 0, cnt, po, vector: true);
                else
                    for (int j = 0; j < cnt; j++) TensorPrimitives.MultiplyAdd(values.Slice(j * hd, hd), w[j], o, o);
            }
        }
    }

    /// <summary>Combines the spans of each (token, head): out = Σ e^(m_s - M) acc_s / Σ e^(m_s - M) l_s.</summary>
    private void Merge()
    {
        int kvHeads = _c.KvHeads, hd = _hd, group = _group;
        for (int t = 0; t < _n; t++)
            for (int kvh = 0; kvh < kvHeads; kvh++)
                for (int g = 0; g < group; g++)
                {
                    int first = (t * kvHeads + kvh) * _splits;
                    float max = float.NegativeInfinity;
                    for (int s = 0; s < _splits; s++) max = Math.Max(max, _partMax[(first + s) * group + g]);
                    var o = new Span<float>(_out + t * _c.QDim + (kvh * group + g) * hd, hd);
                    o.Clear();
                    float sum = 0;
                    for (int s = 0; s < _splits; s++)
                    {
                        int i = (first + s) * group + g;
                        if (_partSum[i] == 0) continue;
                        float w = MathF.Exp(_partMax[i] - max);
                        sum += w * _partSum[i];
                        TensorPrimitives.MultiplyAdd(_partAcc.AsSpan(i * hd, hd), w, o, o);
                    }
                    TensorPrimitives.Multiply(o, 1f / sum, o);
                }
    }

    /// <summary>Per-thread buffers: scores of a group over a span, and one decoded tile.</summary>
    internal sealed class Scratch
    {
        public float[] Scores = [], Tile = [];
        [ThreadStatic] private static Scratch? t_scratch;

        public static Scratch Get(int scores, int tile)
        {
            var s = t_scratch ??= new Scratch();
            if (s.Scores.Length < scores) s.Scores = new float[scores];
            if (s.Tile.Length < tile) s.Tile = new float[tile];
            return s;
        }
    }
}
