using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.KvCache;

/// <summary>
/// Causal attention for a prompt (a batch of 8+ queries) over a source whose tiles read the same for every query
/// (<see cref="IKvTiles.SameTilesForEveryQuery"/>: the plain f32/f16 store). One work item is a block of up to 16
/// consecutive queries and one KV head: each tile is read (f16 converted) once for the block instead of once per
/// query, and every row keeps the arithmetic of <see cref="TileAttention"/>'s one-query items (the same
/// <see cref="AttentionKernels"/>, scores over the row's visible span, soft-cap, window mask, softmax, weighted
/// values), so a prompt's attention is bit for bit what it would be query by query.
/// Measured on llama-0.8b q4_0 pp512, 2 threads (Xeon, AVX-512): attention went from 21% of prefill time to a few
/// percent (docs/cpu-speed.md). Blocks are handed out last first, so the longest rows start early.
/// </summary>
internal sealed unsafe class PrefillAttention : IParallelJob
{
    private const int Tile = KvCacheOptions.Group;
    /// <summary>The fewest queries that take this path (decode batches keep <see cref="TileAttention"/>'s split).</summary>
    public const int MinBatch = 8;
    private const int MaxBlock = 16;
    /// <summary>Score floats a block may use (256 KiB, about L2's share): long contexts get smaller blocks.</summary>
    public const int ScoreFloats = 65536;

    private readonly KvShape _c;
    private readonly int _hd, _group;
    private readonly long _scoreFloats;
    private IKvTiles _src = null!;
    private int _layer, _pos, _n, _block, _blocks;
    private float* _q, _out;

    public PrefillAttention(KvShape c, int maxContext)
    {
        _c = c;
        _scoreFloats = ScoreFloatsFor(c, maxContext);
        _hd = c.HeadDim;
        _group = c.Heads / c.KvHeads;
    }

    public static bool Applies(KvShape c, IKvTiles src, int n) =>
        n >= MinBatch && !MatMul.RowWise && src.SameTilesForEveryQuery && AttentionKernels.VectorSupported(c.HeadDim);

    /// <summary>Score floats one thread may need for a context (with its tile scratch: <see cref="TileAttention.ThreadScratchBytes"/>).</summary>
    /// <remarks>
    /// Below <see cref="BlockScratchFrom"/> positions the blocks get no scratch beyond one query's (group × context):
    /// attention is a small part of such a prompt, and the smallest budgets the planner names (the demo model at 76
    /// MiB with 256 positions) have no room for it; blocks there are as long as that scratch allows.
    /// </remarks>
    public static long ScoreFloatsFor(KvShape c, int maxContext)
    {
        long row = (long)(c.Heads / c.KvHeads) * RoundUp(maxContext);   // one query's group over the whole context
        return maxContext < BlockScratchFrom ? row : Math.Max(row, Math.Min(ScoreFloats, MaxBlock * row));
    }

    /// <summary>Contexts of at least this many positions get block scratch of their own (<see cref="ScoreFloatsFor"/>).</summary>
    public const int BlockScratchFrom = 512;

    /// <summary>out[t] = attention of q[t] (position pos + t) over positions [0, pos + t]; q and out pinned.</summary>
    public void Run(IKvTiles src, int layer, int pos, int n, float* q, float* output)
    {
        _src = src; _layer = layer; _pos = pos; _n = n; _q = q; _out = output;
        _block = (int)Math.Clamp(_scoreFloats / ((long)_group * RoundUp(pos + n)), 1, MaxBlock);
        _blocks = (n + _block - 1) / _block;
        try { WorkerPool.Shared.Run(this, _blocks * _c.KvHeads); }
        finally { _src = null!; _q = _out = null; }
    }

    private static int RoundUp(int n) => (n + Tile - 1) / Tile * Tile;

    public void Execute(int item)
    {
        int kvHeads = _c.KvHeads, hd = _hd, group = _group, width = _c.QDim;
        int kvh = item % kvHeads, b = _blocks - 1 - item / kvHeads;
        int t0 = b * _block, t1 = Math.Min(_n, t0 + _block);
        int last = _pos + t1 - 1;
        int from = _c.FirstVisible(_layer, _pos + t0) / Tile * Tile, to = last + 1;
        int stride = RoundUp(to - from), rows = (t1 - t0) * group;
        // The most any block may use, at once: growing the thread's array block by block would leave a large-object
        // array behind at each step (a server's prompts of every length), RSS the budget does not count.
        var scratch = TileAttention.Scratch.Get((int)Math.Max(_scoreFloats, (long)rows * stride), Tile * hd);
        fixed (float* scores = scratch.Scores, buf = scratch.Tile)
        {
            var tileBuf = new Span<float>(buf, Tile * hd);
            // Scores of every row over the tiles it sees (whole tiles: the tail past a row's position is ignored).
            for (int p0 = from; p0 < to; p0 += Tile)
            {
                var keys = _src.Keys(_layer, p0 / Tile, kvh, last, tileBuf, out bool channelMajor);
                if (channelMajor || keys.Length < Tile * hd) throw new InvalidOperationException("prefill attention reads whole token-major tiles");
                fixed (float* k = keys)
                {
                    for (int t = t0; t < t1; t++)
                    {
                        int qp = _pos + t;
                        if (p0 > qp || p0 < _c.FirstVisible(_layer, qp) / Tile * Tile) continue;
                        int rowsUsed = Math.Min(Tile, qp + 1 - p0) <= 16 ? 16 : Tile;
                        float* qt = _q + (long)t * width + kvh * group * hd;
                        float* st = scores + (long)(t - t0) * group * stride + (p0 - from);
                        for (int g = 0; g < group; g++)
                            AttentionKernels.Scores(k, hd, rowsUsed, qt + g * hd, st + (long)g * stride, _c.Scale, vector: true);
                    }
                }
            }
            // Softmax of each row over its visible span, as TileAttention's one-query items do.
            for (int t = t0; t < t1; t++)
            {
                int qp = _pos + t, first = _c.FirstVisible(_layer, qp), rowFrom = first / Tile * Tile;
                for (int g = 0; g < group; g++)
                {
                    var s = new Span<float>(scores + ((long)(t - t0) * group + g) * stride + (rowFrom - from), qp + 1 - rowFrom);
                    _c.Cap(s);
                    if (first > rowFrom) s[..(first - rowFrom)].Fill(float.NegativeInfinity);
                    TensorPrimitives.SoftMax(s, s);
                }
                new Span<float>(_out + (long)t * width + kvh * group * hd, group * hd).Clear();
            }
            // Weighted values.
            for (int p0 = from; p0 < to; p0 += Tile)
            {
                var values = _src.Values(_layer, p0 / Tile, kvh, last, tileBuf);
                fixed (float* v = values)
                {
                    for (int t = t0; t < t1; t++)
                    {
                        int qp = _pos + t;
                        if (p0 > qp || p0 < _c.FirstVisible(_layer, qp) / Tile * Tile) continue;
                        int j1 = Math.Min(Tile, qp + 1 - p0);
                        float* ot = _out + (long)t * width + kvh * group * hd;
                        float* st = scores + (long)(t - t0) * group * stride + (p0 - from);
                        for (int g = 0; g < group; g++)
                            AttentionKernels.AccumulateValues(v, hd, st + (long)g * stride, 0, j1, ot + g * hd, vector: true);
                    }
                }
            }
        }
    }
}
