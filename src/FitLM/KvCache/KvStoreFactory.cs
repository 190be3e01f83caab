
namespace FitLM.KvCache;

/// <summary>
/// Makes the KV stores of one model and one <see cref="KvCacheOptions"/>: it owns the page pools every store
/// draws from (so many sequences share their memory), anything fixed per model (XQuant's latent basis), and the
/// scratch attention works in. Stores of one factory attend one at a time (the forward pass of a batch runs
/// on the shared worker pool anyway). Also sizes caches without a model: <see cref="Bytes"/>.
/// </summary>
public sealed class KvStoreFactory : IDisposable
{
    public KvCacheOptions Options { get; }
    public KvShape Config { get; }
    public int MaxContext { get; }
    public int MaxBatch { get; }
    /// <summary>The pool of the main pages (float pages, KIVI's quantized pages, XQuant's latent pages).</summary>
    public KvPagePool Pool { get; }
    /// <summary>A second pool where a store has a second kind of page (KIVI's full-precision window, XQuant-CL's token ids).</summary>
    public KvPagePool? SecondPool { get; }
    internal IKvModel Model { get; }
    internal TileAttention Attention { get; }
    internal LatentBasis? Basis { get; }
    internal XQuantWorkspace? Workspace { get; }

    public KvStoreFactory(IKvModel model, KvCacheOptions options, int maxContext, int maxBatch)
    {
        options.Validate();
        Model = model;
        Options = options;
        Config = model.Config;
        MaxContext = maxContext;
        MaxBatch = maxBatch;
        var c = Config;
        var (main, second) = PageBytes(c, options);
        Pool = new KvPagePool(main);
        SecondPool = second > 0 ? new KvPagePool(second) : null;
        Attention = new TileAttention(c, maxContext);
        if (options.IsXQuant && Form(c, options) == XQuantForm.Latent) Basis = LatentBasis.Compute(model);
        if (options.IsXQuant || options.Type == KvType.XQuantCl) Workspace = new XQuantWorkspace(c, maxContext, maxBatch, Basis);
    }

    /// <summary>A new, empty store for one sequence.</summary>
    public IKvStore Create()
    {
        var o = Options;
        if (o.Evict == KvEviction.H2O) return new H2OKvStore(this);
        return o.Type switch
        {
            KvType.F32 or KvType.F16 => new PagedKvStore(Model, Pool, o.Type == KvType.F16, MaxContext, Attention),
            KvType.Kivi2 or KvType.Kivi4 => new KiviKvStore(this),
            KvType.XQuantCl => new XQuantClKvStore(this),
            _ => new XQuantKvStore(this),
        };
    }

    /// <summary>Bytes held once per model whatever the number of sequences (XQuant's basis).</summary>
    public long FixedBytes => Basis?.Bytes ?? 0;

    /// <summary>
    /// Bytes one sequence of <paramref name="context"/> tokens holds: pages (whole pages of 32 tokens), scales,
    /// zero points, full-precision windows, per-token bookkeeping, and the latent basis where there is one.
    /// Not counted: attention scratch (XQuant's rematerialized layer, per-thread tiles), shared by all sequences.
    /// </summary>
    public static long Bytes(KvShape c, KvCacheOptions o, int context)
    {
        o.Validate();
        const int G = KvCacheOptions.Group;
        long Pages(long tokens) => (tokens + G - 1) / G;
        var (main, second) = PageBytes(c, o);
        if (o.Evict == KvEviction.H2O)
        {
            long held = Math.Min(context, o.Keep);
            return c.Layers * (Pages(held) * main + held * c.KvHeads * H2OKvStore.BytesPerSlot);
        }
        switch (o.Type)
        {
            case KvType.F32:
            case KvType.F16:
                return c.Layers * Pages(context) * main;
            case KvType.Kivi2:
            case KvType.Kivi4:
                long quantized = KiviKvStore.QuantizedTiles(context, o.Residual) * (long)G;
                return c.Layers * (quantized / G * main + Pages(context - quantized) * second);
            case KvType.XQuantCl:
                return Pages(context) * (second + (c.Layers - 1) * main);
            default:
                // Per-channel latents keep the open tile's rows in float16 until its 32 tokens are complete.
                long open = o.XQuantPerChannel && Form(c, o) != XQuantForm.X && context % G != 0 ? second : 0;
                return c.Layers * (context / G * main + (o.XQuantPerChannel && Form(c, o) != XQuantForm.X ? open : Pages(context % G) * main))
                    + (Form(c, o) == XQuantForm.Latent ? LatentBasis.BytesFor(c) : 0);
        }
    }

    /// <summary>KV bytes per token of a sequence of <paramref name="context"/> tokens: <see cref="Bytes"/> / context.</summary>
    public static double BytesPerToken(KvShape c, KvCacheOptions o, int context = 512) => (double)Bytes(c, o, context) / context;

    /// <summary>What XQuant caches: the latent on the SVD basis of [Wk; Wv] when X is wider than K and V together, else X.</summary>
    internal static XQuantForm Form(KvShape c, KvCacheOptions o) =>
        o.XQuantForm != XQuantForm.Auto ? o.XQuantForm : c.Dim > 2 * c.KvDim ? XQuantForm.Latent : XQuantForm.X;

    /// <summary>Page sizes (bytes, as the pools round them) of the main and second pool for 32 tokens of one layer.</summary>
    internal static (int Main, int Second) PageBytes(KvShape c, KvCacheOptions o)
    {
        var (main, second) = UnroundedPageBytes(c, o);
        return (KvPagePool.Round(main), second == 0 ? 0 : KvPagePool.Round(second));
    }

    private static (int Main, int Second) UnroundedPageBytes(KvShape c, KvCacheOptions o)
    {
        const int G = KvCacheOptions.Group;
        int block = GroupQuant.BlockBytes(Math.Max(2, o.Bits));
        int groupsPerHead = (c.HeadDim + G - 1) / G;
        switch (o.Type)
        {
            case KvType.F32: return (FloatPage.Bytes(c, half: false), 0);
            case KvType.F16: return (FloatPage.Bytes(c, half: true), 0);
            case KvType.Kivi2:
            case KvType.Kivi4:
                // Keys: one block per channel (32 tokens); values: per token, per head, per 32 channels.
                return (c.KvDim * block + G * c.KvHeads * groupsPerHead * block, FloatPage.Bytes(c, half: !o.FullPrecisionResidual));
            case KvType.XQuantCl:
                return (G * ((c.Dim + G - 1) / G) * block, G * sizeof(int));
            default:
                bool x = Form(c, o) == XQuantForm.X;
                int width = x ? c.Dim : 2 * c.KvDim;
                return (G * ((width + G - 1) / G) * block, o.XQuantPerChannel && !x ? G * width * 2 : 0);
        }
    }

    public void Dispose()
    {
        Pool.Dispose();
        SecondPool?.Dispose();
    }
}
