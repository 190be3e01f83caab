
namespace FitLM.KvCache;

/// <summary>
/// KIVI (Liu et al., 2024): keys quantized per channel — each channel over a group of 32 tokens shares a scale
/// and zero point, because key outliers sit in fixed channels — and values per token — each token's channels
/// in groups of 32, because value errors mix across channels through the attention weights. Asymmetric min-max,
/// 2 or 4 bits, scales and zero points in float16, keys quantized after RoPE. The most recent R tokens stay in
/// full precision (float16 pages, or float32 for tests): a 32-token group is quantized once all of it is older
/// than the newest R tokens, so the window holds R to R + 31 tokens.
/// <para>
/// Pages: tiles [0, q) of a layer are quantized pages (keys: a block per channel; values: a block per token,
/// head and 32 channels), later tiles are float pages. Within a batch every query sees the cache as decoding
/// would have left it at its own position: a tile quantized by this batch keeps its float page until the
/// batch's attention is done, and queries that precede the quantization still read it.
/// </para>
/// </summary>
internal sealed unsafe class KiviKvStore : IKvStore, IKvLayers
{
    private const int G = KvCacheOptions.Group;
    private readonly IKvModel _model;
    private readonly KvShape _c;
    private readonly KvPagePool _qPool, _fPool;
    private readonly TileAttention _attention;
    private readonly int _bits, _residual, _block, _groupsPerHead;
    private readonly bool _half;
    private readonly int[][] _qPages, _fPages;   // [layer][tile] → page id or -1
    private readonly int[] _length, _quantized;  // positions and quantized tiles per layer
    private readonly float[] _row;
    private readonly float[] _gather = new float[G], _tileBuf;
    private int _held;

    public KiviKvStore(KvStoreFactory f)
    {
        _model = f.Model;
        _c = f.Config;
        _qPool = f.Pool;
        _fPool = f.SecondPool!;
        _attention = f.Attention;
        _bits = f.Options.Bits;
        _residual = f.Options.Residual;
        _half = !f.Options.FullPrecisionResidual;
        _block = GroupQuant.BlockBytes(_bits);
        _groupsPerHead = (_c.HeadDim + G - 1) / G;
        int tiles = (f.MaxContext + G - 1) / G;
        _qPages = NewTable(_c.Layers, tiles);
        _fPages = NewTable(_c.Layers, tiles);
        _length = new int[_c.Layers];
        _quantized = new int[_c.Layers];
        _row = new float[_c.KvDim];
        _tileBuf = new float[G * _c.HeadDim];
    }

    private static int[][] NewTable(int layers, int tiles)
    {
        var t = new int[layers][];
        for (int l = 0; l < layers; l++) { t[l] = new int[tiles]; t[l].AsSpan().Fill(-1); }
        return t;
    }

    /// <summary>Tiles quantized once a layer holds <paramref name="length"/> positions: those wholly older than the newest R.</summary>
    public static int QuantizedTiles(int length, int residual) => Math.Max(0, length - residual) / G;

    /// <summary>
    /// Why a cache with <paramref name="quantizedTiles"/> tiles quantized cannot move back to <paramref name="pos"/>, or
    /// null: the tokens before pos must not be in a tile quantized already (their float rows are gone). The GPU's KIVI
    /// (Backends/Cuda/DeviceKvLayout.cs) refuses by the same rule.
    /// </summary>
    internal static string? RewindRefusal(int pos, int residual, int quantizedTiles) =>
        pos > 0 && QuantizedTiles(pos, residual) < quantizedTiles
            ? $"KV cache: KIVI cannot rewind to position {pos}: the tokens before it are already quantized" : null;

    public int Length => _length[^1];
    public long Bytes => _held;

    public void Truncate(int pos)
    {
        for (int l = 0; l < _c.Layers; l++)
        {
            if (pos > _length[l]) throw new FitLMException($"KV cache: cannot move to position {pos}, layer {l} holds {_length[l]}");
            if (RewindRefusal(pos, _residual, _quantized[l]) is { } why) throw new FitLMException(why);
            for (int t = (pos + G - 1) / G; t < _qPages[l].Length; t++)
            {
                Release(_qPages[l], t, _qPool);
                Release(_fPages[l], t, _fPool);
            }
            _length[l] = pos;
            if (pos == 0) _quantized[l] = 0;
        }
    }

    private void Release(int[] table, int tile, KvPagePool pool)
    {
        if (table[tile] < 0) return;
        pool.Return(table[tile]);
        _held -= pool.PageBytes;
        table[tile] = -1;
    }

    private int Ensure(int[] table, int tile, KvPagePool pool)
    {
        if (table[tile] < 0) { table[tile] = pool.Rent(); _held += pool.PageBytes; }
        return table[tile];
    }

    public void Append(int layer, int pos, in KvRows rows)
    {
        if (pos != _length[layer]) throw new FitLMException($"KV cache: layer {layer} holds {_length[layer]} positions, cannot append at {pos}");
        int kvDim = _c.KvDim;
        for (int t = 0; t < rows.Count; t++)
        {
            int p = pos + t;
            byte* page = _fPool.Page(Ensure(_fPages[layer], p / G, _fPool));
            rows.K.Slice(t * kvDim, kvDim).CopyTo(_row);
            _model.FinishKey(layer, _row, p);
            FloatPage.WriteRow(page, _half, _c, 0, p % G, _row);
            rows.V.Slice(t * kvDim, kvDim).CopyTo(_row);
            _model.FinishValue(layer, _row);
            FloatPage.WriteRow(page, _half, _c, 1, p % G, _row);
        }
        _length[layer] = pos + rows.Count;
        // Quantize every group now wholly outside the full-precision window (float pages kept until Attend).
        int target = QuantizedTiles(_length[layer], _residual);
        for (int tile = _quantized[layer]; tile < target; tile++) Quantize(layer, tile, _tileBuf, _gather);
        _quantized[layer] = target;
    }

    public void BeginLayer(int layer, int length)
    {
        if (_length[layer] != 0) throw new InvalidOperationException($"layer {layer} is not empty");
        int quantized = QuantizedTiles(length, _residual);
        for (int t = 0; t * G < length; t++)
        {
            Ensure(_fPages[layer], t, _fPool);
            if (t < quantized) Ensure(_qPages[layer], t, _qPool);
        }
        _length[layer] = length;
        _quantized[layer] = quantized;
    }

    public int ScratchFloats => G * _c.HeadDim + G;

    public void WriteTile(int layer, int tile, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int rows, Span<float> scratch)
    {
        FloatPage.WriteRows(_fPool.Page(_fPages[layer][tile]), _half, _c, keys, values, rows);
        // Quantized from the float16 window as Append would have: the same codes as a cache filled from the start.
        if (tile < _quantized[layer]) Quantize(layer, tile, scratch.Slice(0, G * _c.HeadDim), scratch.Slice(G * _c.HeadDim, G));
    }

    /// <summary>No attention of a batch reads the float pages of the tiles just quantized: they go back at once.</summary>
    public void EndLayer(int layer)
    {
        for (int t = 0; t < _quantized[layer]; t++) Release(_fPages[layer], t, _fPool);
    }

    public void ReleaseLayer(int layer)
    {
        for (int t = 0; t < _qPages[layer].Length; t++)
        {
            Release(_qPages[layer], t, _qPool);
            Release(_fPages[layer], t, _fPool);
        }
        _length[layer] = 0;
        _quantized[layer] = 0;
        _qPool.Trim();
        _fPool.Trim();
    }

    /// <summary>Quantizes a tile from its float page into its quantized page (rented if new); tileBuf [32 × HeadDim] and gather [32] are scratch.</summary>
    private void Quantize(int layer, int tile, Span<float> tileBuf, Span<float> gather)
    {
        int hd = _c.HeadDim, kvDim = _c.KvDim;
        byte* src = _fPool.Page(_fPages[layer][tile]);
        byte* dst = _qPool.Page(Ensure(_qPages[layer], tile, _qPool));
        // Keys: per channel, the 32 tokens of the tile.
        for (int h = 0; h < _c.KvHeads; h++)
        {
            var keys = FloatPage.Read(src, _half, _c, 0, h, 0, G, tileBuf);
            for (int d = 0; d < hd; d++)
            {
                for (int j = 0; j < G; j++) gather[j] = keys[j * hd + d];
                GroupQuant.Quantize(gather, _bits, new Span<byte>(dst + (long)(h * hd + d) * _block, _block));
            }
        }
        // Values: per token, each head's channels in groups of 32.
        byte* vdst = dst + (long)kvDim * _block;
        for (int h = 0; h < _c.KvHeads; h++)
        {
            var values = FloatPage.Read(src, _half, _c, 1, h, 0, G, tileBuf);
            for (int j = 0; j < G; j++)
                for (int gi = 0; gi < _groupsPerHead; gi++)
                {
                    int from = gi * G, cnt = Math.Min(G, hd - from);
                    GroupQuant.Quantize(values.Slice(j * hd + from, cnt), _bits, new Span<byte>(vdst + ValueBlock(j, h, gi) * _block, _block));
                }
        }
    }

    private long ValueBlock(int token, int kvHead, int group) => ((long)token * _c.KvHeads + kvHead) * _groupsPerHead + group;

    public void Attend(int layer, int pos, int n, ReadOnlySpan<float> q, Span<float> output)
    {
        _attention.Run(this, layer, pos, n, q, output);
        // Float pages of tiles quantized by this batch are no longer read.
        for (int t = _quantized[layer] - 1; t >= 0 && _fPages[layer][t] >= 0; t--) Release(_fPages[layer], t, _fPool);
    }

    /// <summary>Whether the query at queryPos saw this tile quantized (it did once the tile left its window).</summary>
    private bool Quantized(int tile, int queryPos) => tile < QuantizedTiles(queryPos + 1, _residual);

    public ReadOnlySpan<float> Keys(int layer, int tile, int kvHead, int queryPos, Span<float> scratch, out bool channelMajor)
    {
        if (!Quantized(tile, queryPos))
        {
            channelMajor = false;
            return FloatPage.Read(_fPool.Page(_fPages[layer][tile]), _half, _c, 0, kvHead, 0, G, scratch);
        }
        // Channel-major [HeadDim × 32]: each channel's block decodes to one row.
        channelMajor = true;
        int hd = _c.HeadDim;
        byte* page = _qPool.Page(_qPages[layer][tile]);
        for (int d = 0; d < hd; d++)
            GroupQuant.Dequantize(new ReadOnlySpan<byte>(page + (long)(kvHead * hd + d) * _block, _block), _bits, scratch.Slice(d * G, G));
        return scratch.Slice(0, hd * G);
    }

    public ReadOnlySpan<float> Values(int layer, int tile, int kvHead, int queryPos, Span<float> scratch)
    {
        if (!Quantized(tile, queryPos))
            return FloatPage.Read(_fPool.Page(_fPages[layer][tile]), _half, _c, 1, kvHead, 0, G, scratch);
        int hd = _c.HeadDim;
        byte* page = _qPool.Page(_qPages[layer][tile]) + (long)_c.KvDim * _block;
        for (int j = 0; j < G; j++)
            for (int gi = 0; gi < _groupsPerHead; gi++)
            {
                int from = gi * G, cnt = Math.Min(G, hd - from);
                GroupQuant.Dequantize(new ReadOnlySpan<byte>(page + ValueBlock(j, kvHead, gi) * _block, _block), _bits, scratch.Slice(j * hd + from, cnt));
            }
        return scratch.Slice(0, G * hd);
    }

    public void Dispose() => Truncate(0);
}
