
namespace FitLM.KvCache;

/// <summary>
/// Plain keys (after RoPE) and values in float32 or float16, in pages of 32 positions of one layer rented from a
/// shared <see cref="KvPagePool"/> as the sequence grows. A page holds K then V, each [KvHeads × 32 × HeadDim],
/// so a tile of one KV head is contiguous: float32 tiles are read in place, float16 ones converted.
/// </summary>
internal sealed unsafe class PagedKvStore : IKvStore, IKvLayers
{
    private const int Tile = KvCacheOptions.Group;
    private readonly IKvModel _model;
    private readonly KvShape _c;
    private readonly KvPagePool _pool;
    private readonly bool _half;
    private readonly int[][] _pages;   // [layer][tile] → page id, -1 when none
    private readonly int[] _length;     // positions held per layer
    private readonly TileAttention _attention;
    private readonly float[] _row;      // one key or value row being finished
    private int _held;

    public PagedKvStore(IKvModel model, KvPagePool pool, bool half, int maxContext, TileAttention attention)
    {
        _model = model;
        _c = model.Config;
        _pool = pool;
        _half = half;
        if (pool.PageBytes < FloatPage.Bytes(_c, half)) throw new ArgumentException("page pool pages are too small");
        int tiles = (maxContext + Tile - 1) / Tile;
        _pages = new int[_c.Layers][];
        for (int l = 0; l < _c.Layers; l++) { _pages[l] = new int[tiles]; _pages[l].AsSpan().Fill(-1); }
        _length = new int[_c.Layers];
        _attention = attention;
        _row = new float[_c.KvDim];
    }

    public int Length => _length[^1];
    public long Bytes => (long)_held * _pool.PageBytes;

    public void Truncate(int pos)
    {
        for (int l = 0; l < _c.Layers; l++)
        {
            if (pos > _length[l]) throw new FitLMException($"KV cache: cannot move to position {pos}, layer {l} holds {_length[l]}");
            int keepTiles = (pos + Tile - 1) / Tile;
            for (int t = keepTiles; t < _pages[l].Length && _pages[l][t] >= 0; t++)
            {
                _pool.Return(_pages[l][t]);
                _pages[l][t] = -1;
                _held--;
            }
            _length[l] = pos;
        }
    }

    public void Append(int layer, int pos, in KvRows rows)
    {
        if (pos != _length[layer]) throw new FitLMException($"KV cache: layer {layer} holds {_length[layer]} positions, cannot append at {pos}");
        int kvDim = _c.KvDim;
        for (int t = 0; t < rows.Count; t++)
        {
            int p = pos + t;
            rows.K.Slice(t * kvDim, kvDim).CopyTo(_row);
            _model.FinishKey(layer, _row, p);
            Write(layer, p, 0, _row);
            rows.V.Slice(t * kvDim, kvDim).CopyTo(_row);
            _model.FinishValue(layer, _row);
            Write(layer, p, 1, _row);
        }
        _length[layer] = pos + rows.Count;
    }

    public void BeginLayer(int layer, int length)
    {
        if (_length[layer] != 0) throw new InvalidOperationException($"layer {layer} is not empty");
        for (int t = 0; t * Tile < length; t++) { _pages[layer][t] = _pool.Rent(); _held++; }
        _length[layer] = length;
    }

    public int ScratchFloats => 0;

    public void WriteTile(int layer, int tile, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int rows, Span<float> scratch)
    {
        FloatPage.WriteRows(_pool.Page(_pages[layer][tile]), _half, _c, keys, values, rows);
    }

    public void EndLayer(int layer) { }

    public void ReleaseLayer(int layer)
    {
        var pages = _pages[layer];
        for (int t = 0; t < pages.Length && pages[t] >= 0; t++)
        {
            _pool.Return(pages[t]);
            pages[t] = -1;
            _held--;
        }
        _length[layer] = 0;
        _pool.Trim();
    }

    /// <summary>Writes a finished key (which 0) or value (1) row of position p into its page, renting it if new.</summary>
    private void Write(int layer, int p, int which, ReadOnlySpan<float> row)
    {
        ref int page = ref _pages[layer][p / Tile];
        if (page < 0) { page = _pool.Rent(); _held++; }
        FloatPage.WriteRow(_pool.Page(page), _half, _c, which, p % Tile, row);
    }

    public void Attend(int layer, int pos, int n, ReadOnlySpan<float> q, Span<float> output) =>
        _attention.Run(this, layer, pos, n, q, output);

    public ReadOnlySpan<float> Keys(int layer, int tile, int kvHead, int queryPos, Span<float> scratch, out bool channelMajor)
    {
        channelMajor = false;
        return Read(layer, tile, kvHead, 0, scratch);
    }

    public ReadOnlySpan<float> Values(int layer, int tile, int kvHead, int queryPos, Span<float> scratch) =>
        Read(layer, tile, kvHead, 1, scratch);

    public bool SameTilesForEveryQuery => true;

    private ReadOnlySpan<float> Read(int layer, int tile, int kvHead, int which, Span<float> scratch) =>
        FloatPage.Read(_pool.Page(_pages[layer][tile]), _half, _c, which, kvHead, 0, Tile, scratch);

    public void Dispose() => Truncate(0);
}
