using System.Numerics.Tensors;

namespace FitLM.KvCache;

/// <summary>
/// XQuant-CL: the residual stream entering consecutive layers changes little (each layer adds a delta to it),
/// so cache it across layers as quantized deltas. Layer 0's input is the token's embedding row, so the token id
/// stands for it exactly (4 bytes); layer l ≥ 1 caches Δ_l = x_l − x̂_{l−1}, quantized per token in groups of 32,
/// where x̂_{l−1} is what the cache itself rebuilds for the previous layer (error feedback: errors do not
/// accumulate across layers). Attending layer l rebuilds x̂_l = embed(token) + Σ_{i ≤ l} Δ̂_i, applies the
/// layer's attention norm, and rematerializes K and V with the layer's own Wk and Wv (then bias, k-norm, RoPE).
/// No basis: nothing is held per model.
/// </summary>
internal sealed unsafe class XQuantClKvStore : IKvStore
{
    private const int G = KvCacheOptions.Group;
    private readonly IKvModel _model;
    private readonly KvShape _c;
    private readonly KvPagePool _deltaPool, _tokenPool;
    private readonly TileAttention _attention;
    private readonly XQuantWorkspace _ws;
    private readonly int _bits, _block, _groups;
    private readonly int[] _tokenPages;
    private readonly int[][] _deltaPages;   // [layer][tile], layer 0 unused
    private readonly int[] _length;
    private readonly float[] _acc;          // x̂ of the batch being appended, [MaxBatch × Dim]
    private readonly float[] _delta, _row;
    private long _held;

    public XQuantClKvStore(KvStoreFactory f)
    {
        _model = f.Model;
        _c = f.Config;
        _deltaPool = f.Pool;
        _tokenPool = f.SecondPool!;
        _attention = f.Attention;
        _ws = f.Workspace!;
        _bits = f.Options.Bits;
        _block = GroupQuant.BlockBytes(_bits);
        _groups = (_c.Dim + G - 1) / G;
        int tiles = (f.MaxContext + G - 1) / G;
        _tokenPages = new int[tiles];
        _tokenPages.AsSpan().Fill(-1);
        _deltaPages = new int[_c.Layers][];
        for (int l = 0; l < _c.Layers; l++) { _deltaPages[l] = new int[tiles]; _deltaPages[l].AsSpan().Fill(-1); }
        _length = new int[_c.Layers];
        _acc = new float[f.MaxBatch * _c.Dim];
        _delta = new float[_c.Dim];
        _row = new float[_c.Dim];
    }

    public int Length => _length[^1];
    public long Bytes => _held;

    public void Truncate(int pos)
    {
        int keep = (pos + G - 1) / G;
        for (int l = 0; l < _c.Layers; l++)
        {
            if (pos > _length[l]) throw new FitLMException($"KV cache: cannot move to position {pos}, layer {l} holds {_length[l]}");
            var pages = l == 0 ? _tokenPages : _deltaPages[l];
            var pool = l == 0 ? _tokenPool : _deltaPool;
            for (int t = keep; t < pages.Length && pages[t] >= 0; t++)
            {
                pool.Return(pages[t]);
                pages[t] = -1;
                _held -= pool.PageBytes;
            }
            _length[l] = pos;
        }
    }

    private int* TokenSlot(int p) => (int*)_tokenPool.Page(_tokenPages[p / G]) + p % G;

    private Span<byte> Block(int layer, int p, int group) =>
        new(_deltaPool.Page(_deltaPages[layer][p / G]) + ((long)(p % G) * _groups + group) * _block, _block);

    public void Append(int layer, int pos, in KvRows rows)
    {
        if (pos != _length[layer]) throw new FitLMException($"KV cache: layer {layer} holds {_length[layer]} positions, cannot append at {pos}");
        if (layer > 0 && _length[layer - 1] != pos + rows.Count) throw new InvalidOperationException("XQuant-CL appends layers in order");
        int n = rows.Count, dim = _c.Dim;
        for (int t = 0; t < n; t++)
        {
            int p = pos + t;
            var acc = _acc.AsSpan(t * dim, dim);
            if (layer == 0)
            {
                if (_tokenPages[p / G] < 0) { _tokenPages[p / G] = _tokenPool.Rent(); _held += _tokenPool.PageBytes; }
                *TokenSlot(p) = rows.Tokens[t];
                _model.Embed(rows.Tokens[t], acc);
                continue;
            }
            if (_deltaPages[layer][p / G] < 0) { _deltaPages[layer][p / G] = _deltaPool.Rent(); _held += _deltaPool.PageBytes; }
            TensorPrimitives.Subtract(rows.Residual.Slice(t * dim, dim), acc, _delta);
            for (int g = 0; g < _groups; g++)
            {
                var part = _delta.AsSpan(g * G, Math.Min(G, dim - g * G));
                var block = Block(layer, p, g);
                GroupQuant.Quantize(part, _bits, block);
                GroupQuant.Dequantize(block, _bits, part);
            }
            TensorPrimitives.Add(acc, _delta, acc);
        }
        _length[layer] = pos + n;
    }

    public void Attend(int layer, int pos, int n, ReadOnlySpan<float> q, Span<float> output)
    {
        int dim = _c.Dim;
        _ws.SetAlternates(0, 0);
        _ws.ProjectAndWrite(_model, layer, _length[layer], (from, count) =>
        {
            for (int t = 0; t < count; t++)
            {
                int p = from + t;
                var x = _row.AsSpan();
                _model.Embed(*TokenSlot(p), x);
                for (int l = 1; l <= layer; l++)
                    for (int g = 0; g < _groups; g++)
                    {
                        var part = _delta.AsSpan(0, Math.Min(G, dim - g * G));
                        GroupQuant.Dequantize(Block(l, p, g), _bits, part);
                        TensorPrimitives.Add(x.Slice(g * G, part.Length), part, x.Slice(g * G, part.Length));
                    }
                _model.Normalize(layer, x, _ws.X.AsSpan(t * dim, dim));
            }
        });
        _attention.Run(_ws, layer, pos, n, q, output);
    }

    public void Dispose() => Truncate(0);
}
