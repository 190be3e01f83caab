using FitLM.Tensors;

namespace FitLM.KvCache;

/// <summary>
/// XQuant (Tomar et al., 2025): instead of K and V, cache the quantized layer input X (after the attention norm)
/// and rematerialize K = X·Wkᵀ, V = X·Wvᵀ when attending — RoPE (and bias, k-norm) applied after
/// rematerialization — trading compute for memory. On grouped-query models X is wider than K and V together,
/// so what is cached is X's latent z = Uᵀ [X·Wkᵀ; X·Wvᵀ] on the SVD basis of [Wk; Wv] (<see cref="LatentBasis"/>),
/// 2·KvDim numbers, and [k; v] = U ẑ.
/// <para>
/// The latent is quantized per channel — each latent channel over a group of 32 tokens, asymmetric min-max —
/// because its channels differ in scale by their singular values (as key channels do in KIVI); the open group's
/// rows wait in float16 until its 32 tokens are complete. X itself (multi-head models) is quantized per token,
/// in groups of 32 channels, at append. Pages hold 32 tokens of one layer.
/// </para>
/// <para>
/// Attending a layer rematerializes it whole into the factory's workspace (one GEMM with U per tile, run on the
/// worker pool, or the model's own Wk and Wv for X) and attends over floats. Within a batch, a query before the
/// end of a group that the batch completed reads the group's float16 rows, as decoding would have.
/// </para>
/// </summary>
internal sealed unsafe class XQuantKvStore : IKvStore, IParallelJob
{
    private const int G = KvCacheOptions.Group;
    private readonly IKvModel _model;
    private readonly KvShape _c;
    private readonly KvPagePool _pool, _fPool;
    private readonly TileAttention _attention;
    private readonly XQuantWorkspace _ws;
    private readonly XQuantForm _form;
    private readonly bool _perChannel;
    private readonly int _bits, _block, _width, _groups;
    private readonly int[][] _pages, _fPages;   // quantized pages; float16 pages of groups not yet quantized (per channel)
    private readonly int[] _length;
    private readonly float[] _column = new float[G];
    private long _held;

    public XQuantKvStore(KvStoreFactory f)
    {
        _model = f.Model;
        _c = f.Config;
        _pool = f.Pool;
        _fPool = f.SecondPool!;
        _attention = f.Attention;
        _ws = f.Workspace!;
        _form = KvStoreFactory.Form(_c, f.Options);
        _perChannel = f.Options.XQuantPerChannel && _form != XQuantForm.X;
        _bits = f.Options.Bits;
        _block = GroupQuant.BlockBytes(_bits);
        _width = _form == XQuantForm.X ? _c.Dim : 2 * _c.KvDim;
        _groups = (_width + G - 1) / G;
        int tiles = (f.MaxContext + G - 1) / G;
        _pages = NewTable(_c.Layers, tiles);
        _fPages = NewTable(_c.Layers, tiles);
        _length = new int[_c.Layers];
    }

    private static int[][] NewTable(int layers, int tiles)
    {
        var t = new int[layers][];
        for (int l = 0; l < layers; l++) { t[l] = new int[tiles]; t[l].AsSpan().Fill(-1); }
        return t;
    }

    public int Length => _length[^1];
    public long Bytes => _held;

    public void Truncate(int pos)
    {
        for (int l = 0; l < _c.Layers; l++)
        {
            if (pos > _length[l]) throw new FitLMException($"KV cache: cannot move to position {pos}, layer {l} holds {_length[l]}");
            if (_perChannel && pos % G != 0 && pos / G < _length[l] / G)
                throw new FitLMException($"KV cache: XQuant cannot rewind to position {pos}: its group is already quantized");
            for (int t = (pos + G - 1) / G; t < _pages[l].Length; t++)
            {
                Release(_pages[l], t, _pool);
                if (_perChannel) Release(_fPages[l], t, _fPool);
            }
            _length[l] = pos;
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

    /// <summary>Block g of a tile: per token, (row r, group g); per channel, channel g.</summary>
    private Span<byte> Block(int layer, int tile, int index) => new(_pool.Page(_pages[layer][tile]) + (long)index * _block, _block);

    private Span<Half> OpenRow(int layer, int p) => new((Half*)_fPool.Page(_fPages[layer][p / G]) + (long)(p % G) * _width, _width);

    public void Append(int layer, int pos, in KvRows rows)
    {
        if (pos != _length[layer]) throw new FitLMException($"KV cache: layer {layer} holds {_length[layer]} positions, cannot append at {pos}");
        int n = rows.Count, kvDim = _c.KvDim, r = _width;
        ReadOnlySpan<float> z;
        if (_form == XQuantForm.X) z = rows.X;
        else
        {
            for (int t = 0; t < n; t++)
            {
                rows.K.Slice(t * kvDim, kvDim).CopyTo(_ws.Cat.AsSpan(t * r));
                rows.V.Slice(t * kvDim, kvDim).CopyTo(_ws.Cat.AsSpan(t * r + kvDim));
            }
            if (_form == XQuantForm.Latent)
            {
                // z = Uᵀ [k; v] for each new token.
                XQuantWorkspace.Multiply(_ws.LoadBasis(layer, transposed: true), r, _ws.Cat, _ws.Z, n);
                z = _ws.Z;
            }
            else z = _ws.Cat;
        }
        for (int t = 0; t < n; t++)
        {
            int p = pos + t;
            var row = z.Slice(t * r, r);
            if (_perChannel)
            {
                Ensure(_fPages[layer], p / G, _fPool);
                System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(row, OpenRow(layer, p));
                if (p % G == G - 1) QuantizeChannels(layer, p / G);
            }
            else
            {
                int tile = Ensure(_pages[layer], p / G, _pool);
                for (int g = 0; g < _groups; g++)
                    GroupQuant.Quantize(row.Slice(g * G, Math.Min(G, r - g * G)), _bits, Block(layer, p / G, (p % G) * _groups + g));
            }
        }
        _length[layer] = pos + n;
    }

    /// <summary>A complete group of 32 tokens: each channel's 32 values become one block (float16 rows kept until Attend).</summary>
    private void QuantizeChannels(int layer, int tile)
    {
        Ensure(_pages[layer], tile, _pool);
        var rows = new ReadOnlySpan<Half>(_fPool.Page(_fPages[layer][tile]), G * _width);
        var column = _column;
        for (int ch = 0; ch < _width; ch++)
        {
            for (int j = 0; j < G; j++) column[j] = (float)rows[j * _width + ch];
            GroupQuant.Quantize(column, _bits, Block(layer, tile, ch));
        }
    }

    public void Attend(int layer, int pos, int n, ReadOnlySpan<float> q, Span<float> output)
    {
        int len = _length[layer], tiles = (len + G - 1) / G;
        _ws.Prepare();
        if (_form == XQuantForm.X)
        {
            _ws.SetAlternates(0, 0);
            _ws.ProjectAndWrite(_model, layer, len, (from, count) =>
            {
                for (int t = 0; t < count; t++) DequantizeRow(layer, from + t, _ws.X.AsSpan(t * _c.Dim, _c.Dim));
            });
        }
        else
        {
            if (_form == XQuantForm.Latent) _ws.LoadBasis(layer, transposed: false);
            // Groups this batch completed are also rematerialized from their float16 rows, for the queries before their end.
            int altFrom = _perChannel ? Math.Min(pos / G, len / G) : 0, altTo = _perChannel ? len / G : 0;
            _ws.SetAlternates(altFrom, altTo);
            _rematLayer = layer;
            _rematTiles = tiles;
            WorkerPool.Shared.Run(this, tiles + (altTo - altFrom));
        }
        _attention.Run(_ws, layer, pos, n, q, output);
        if (_perChannel)
            for (int t = len / G - 1; t >= 0 && _fPages[layer][t] >= 0; t--) Release(_fPages[layer], t, _fPool);
    }

    /// <summary>The cached X row of position p (per-token layout), dequantized.</summary>
    private void DequantizeRow(int layer, int p, Span<float> dst)
    {
        for (int g = 0; g < _groups; g++)
            GroupQuant.Dequantize(Block(layer, p / G, (p % G) * _groups + g), _bits, dst.Slice(g * G, Math.Min(G, _width - g * G)));
    }

    // Rematerialization of one tile: ẑ (quantized, or the float16 rows of an open or alternate group), [k; v] = U ẑ,
    // then bias, k-norm and RoPE of each row's position.
    private int _rematLayer, _rematTiles;
    [ThreadStatic] private static float[]? t_z, t_kv, t_col;

    void IParallelJob.Execute(int item)
    {
        int layer = _rematLayer, r = _width, kvDim = _c.KvDim;
        bool alt = item >= _rematTiles;
        int tile = alt ? _ws.AltFrom + item - _rematTiles : item;
        int from = tile * G, cnt = Math.Min(G, _length[layer] - from);
        var z = t_z is { } a && a.Length >= G * r ? a : t_z = new float[G * r];
        var kv = t_kv is { } b && b.Length >= G * r ? b : t_kv = new float[G * r];
        bool quantized = _perChannel ? !alt && cnt == G : true;
        if (!quantized)
        {
            var rows = new ReadOnlySpan<Half>(_fPool.Page(_fPages[layer][tile]), cnt * r);
            System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(rows, z.AsSpan(0, cnt * r));
        }
        else if (_perChannel)
        {
            var col = t_col ??= new float[G];
            for (int ch = 0; ch < r; ch++)
            {
                GroupQuant.Dequantize(Block(layer, tile, ch), _bits, col);
                for (int j = 0; j < G; j++) z[j * r + ch] = col[j];
            }
        }
        else
            for (int j = 0; j < cnt; j++) DequantizeRow(layer, from + j, z.AsSpan(j * r, r));
        var kvRows = kv;
        if (_form == XQuantForm.Latent) XQuantWorkspace.Multiply(_ws.Basis, r, z, kv, cnt);
        else kvRows = z;
        for (int j = 0; j < cnt; j++)
        {
            var k = kvRows.AsSpan(j * r, kvDim);
            var v = kvRows.AsSpan(j * r + kvDim, kvDim);
            _model.FinishKey(layer, k, from + j);
            _model.FinishValue(layer, v);
            _ws.Write(from + j, k, v, alt);
        }
    }

    public void Dispose() => Truncate(0);
}
