using System.Runtime.CompilerServices;
using FitLM.Tensors;

namespace FitLM.KvCache;

/// <summary>
/// Scratch shared by the XQuant stores of one factory: the layer being attended, rematerialized into float
/// pages (K after RoPE, V), the basis of the current layer in float32, and row buffers for chunked projection.
/// Rematerialized keys and values live here only while one layer attends; nothing of it is per sequence.
/// </summary>
internal sealed unsafe class XQuantWorkspace : IKvTiles
{
    private const int G = KvCacheOptions.Group;
    private readonly KvShape _c;
    private readonly LatentBasis? _basis;
    private readonly int _pageFloats;
    private float[]? _pages, _alt;      // pinned: [tile][K | V] float pages of the current layer; alternates
    private int _basisLayer = -1;
    private bool _basisTransposed;

    /// <summary>The basis of one layer as float32 [r × r]: Uᵀ (to project) or U (to rematerialize).</summary>
    public readonly float[] Basis;
    /// <summary>Rows for chunked work: X or residual rows [MaxBatch × Dim], raw K and V [MaxBatch × KvDim], latents [MaxBatch × r].</summary>
    public readonly float[] X, KRaw, VRaw, Cat, Z;
    public int MaxBatch { get; }
    public int MaxContext { get; }

    public XQuantWorkspace(KvShape c, int maxContext, int maxBatch, LatentBasis? basis)
    {
        _c = c;
        _basis = basis;
        MaxBatch = maxBatch;
        MaxContext = maxContext;
        _pageFloats = FloatPage.Bytes(c, half: false) / sizeof(float);
        int r = 2 * c.KvDim;
        Basis = basis != null ? new float[r * r] : [];
        X = new float[maxBatch * c.Dim];
        KRaw = new float[maxBatch * c.KvDim];
        VRaw = new float[maxBatch * c.KvDim];
        Cat = new float[maxBatch * r];
        Z = basis != null ? new float[maxBatch * r] : [];
    }

    /// <summary>Bytes of scratch (allocated at the first attention).</summary>
    public long Bytes => (long)((_pages?.Length ?? 0) + (_alt?.Length ?? 0)) * sizeof(float) + 4L * (Basis.Length + X.Length + KRaw.Length + VRaw.Length + Cat.Length + Z.Length);

    /// <summary>Loads layer <paramref name="layer"/>'s basis: Uᵀ when <paramref name="transposed"/>, else U.</summary>
    public float[] LoadBasis(int layer, bool transposed)
    {
        if (_basisLayer == layer && _basisTransposed == transposed) return Basis;
        var ut = _basis!.Transposed[layer];
        int r = _basis.Rank;
        if (transposed)
            for (int i = 0; i < ut.Length; i++) Basis[i] = (float)ut[i];
        else
            for (int i = 0; i < r; i++)
                for (int j = 0; j < r; j++) Basis[j * r + i] = (float)ut[i * r + j];
        _basisLayer = layer;
        _basisTransposed = transposed;
        return Basis;
    }

    /// <summary>Allocates the rematerialized layer's pages (the whole context, once) before they are written.</summary>
    public void Prepare() => _pages ??= GC.AllocateArray<float>((MaxContext + G - 1) / G * _pageFloats, pinned: true);

    /// <summary>
    /// Tiles [from, to) also have an alternate version (rematerialized from float rows), which queries read
    /// while they precede the tile's last position: the group was still open when they were decoded.
    /// </summary>
    public void SetAlternates(int from, int to)
    {
        AltFrom = from;
        AltTo = to;
        if (to > from) _alt ??= GC.AllocateArray<float>((MaxBatch + 2 * G - 1) / G * _pageFloats, pinned: true);
        if (to - from > (MaxBatch + 2 * G - 1) / G) throw new InvalidOperationException("too many alternate tiles");
    }

    public int AltFrom { get; private set; }
    public int AltTo { get; private set; }

    /// <summary>The float page of a rematerialized tile (or of its alternate).</summary>
    public byte* Page(int tile, bool alt = false) => alt
        ? (byte*)Unsafe.AsPointer(ref _alt![(long)(tile - AltFrom) * _pageFloats])
        : (byte*)Unsafe.AsPointer(ref _pages![(long)tile * _pageFloats]);

    /// <summary>Writes a finished key and value row of position p into the rematerialized layer.</summary>
    public void Write(int p, ReadOnlySpan<float> k, ReadOnlySpan<float> v, bool alt = false)
    {
        byte* page = Page(p / G, alt);
        FloatPage.WriteRow(page, false, _c, 0, p % G, k);
        FloatPage.WriteRow(page, false, _c, 1, p % G, v);
    }

    private bool UseAlt(int tile, int queryPos) => tile >= AltFrom && tile < AltTo && queryPos < (tile + 1) * G - 1;

    public ReadOnlySpan<float> Keys(int layer, int tile, int kvHead, int queryPos, Span<float> scratch, out bool channelMajor)
    {
        channelMajor = false;
        return FloatPage.Read(Page(tile, UseAlt(tile, queryPos)), false, _c, 0, kvHead, 0, G, scratch);
    }

    public ReadOnlySpan<float> Values(int layer, int tile, int kvHead, int queryPos, Span<float> scratch) =>
        FloatPage.Read(Page(tile, UseAlt(tile, queryPos)), false, _c, 1, kvHead, 0, G, scratch);

    /// <summary>
    /// Rematerializes rows [0, count) through the model's own projections, in chunks of MaxBatch rows, always with
    /// the matrix-matrix kernel (never <see cref="MatMul.RowWise"/>, which a verification or server pass may have set):
    /// the cached rows' keys and values must not depend on what kind of pass attends them.
    /// <paramref name="fill"/> writes rows [from, from + n) of X (after the attention norm) into <see cref="X"/>.
    /// </summary>
    public void ProjectAndWrite(IKvModel model, int layer, int count, Action<int, int> fill)
    {
        int kvDim = _c.KvDim;
        Prepare();
        using var matrixMatrix = MatMul.RowWiseScope(false);
        for (int from = 0; from < count; from += MaxBatch)
        {
            int n = Math.Min(MaxBatch, count - from);
            fill(from, n);
            model.Project(layer, X, KRaw, VRaw, n);
            for (int t = 0; t < n; t++)
            {
                var k = KRaw.AsSpan(t * kvDim, kvDim);
                var v = VRaw.AsSpan(t * kvDim, kvDim);
                model.FinishKey(layer, k, from + t);
                model.FinishValue(layer, v);
                Write(from + t, k, v);
            }
        }
    }

    /// <summary>
    /// y[t] = B · x[t] for n rows of width r (B is the loaded basis, [r × r]). Every row is computed by the 4-token
    /// tile kernel, the last n mod 4 through a padded copy: <see cref="Gemm.Tile"/> sums its tail rows in another order
    /// (one dot per row), so a row's latent would depend on how many rows it was projected with — one when decoding,
    /// several in a speculative verification batch — and its greedy token could change. Padding costs at most 3
    /// extra rows of r² multiply-adds per call.
    /// </summary>
    public static void Multiply(float[] basis, int r, ReadOnlySpan<float> x, Span<float> y, int n)
    {
        int whole = n & ~3, rest = n - whole;
        fixed (float* pb = basis, px = x, py = y)
        {
            if (whole > 0) Gemm.Tile(pb, r, px, whole, r, py, r, Gemm.Best);
            if (rest == 0) return;
            var padIn = t_padIn is { } a && a.Length >= 4 * r ? a : t_padIn = new float[4 * r];
            var padOut = t_padOut is { } b && b.Length >= 4 * r ? b : t_padOut = new float[4 * r];
            x.Slice(whole * r, rest * r).CopyTo(padIn);
            padIn.AsSpan(rest * r, (4 - rest) * r).Clear();
            fixed (float* pi = padIn, po = padOut)
                Gemm.Tile(pb, r, pi, 4, r, po, r, Gemm.Best);
            padOut.AsSpan(0, rest * r).CopyTo(y.Slice(whole * r, rest * r));
        }
    }

    [ThreadStatic] private static float[]? t_padIn, t_padOut;
}
