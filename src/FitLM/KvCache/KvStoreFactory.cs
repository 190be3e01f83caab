
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

    /// <summary>Bytes of the pages every store of this factory holds now (both pools).</summary>
    public long BytesInUse => Pool.BytesInUse + (SecondPool?.BytesInUse ?? 0);

    /// <summary>Bytes the pools hold, in use or free.</summary>
    public long BytesReserved => Pool.BytesReserved + (SecondPool?.BytesReserved ?? 0);

    /// <summary>Bytes held once per model whatever the number of sequences (XQuant's basis).</summary>
    public long FixedBytes => Basis?.Bytes ?? 0;

    /// <summary>
    /// Bytes one sequence of <paramref name="context"/> tokens holds: pages (whole pages of 32 tokens), scales,
    /// zero points, full-precision windows, per-token bookkeeping, and the latent basis where there is one.
    /// Not counted: attention scratch (XQuant's rematerialized layer, per-thread tiles), shared by all sequences
    /// (<see cref="PlanBytes"/> counts everything).
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

    /// <summary>
    /// The one source of the KV bytes a plan counts (the planner, the BitStack planner, the server's pool and
    /// `fitlm plan`): <paramref name="sequences"/> sequences of <paramref name="context"/> tokens each
    /// (<see cref="SequenceBytes"/>) plus what a factory holds once whatever the number of sequences
    /// (<see cref="SharedBytes"/>: XQuant's basis and the attention scratch). <paramref name="maxBatch"/> is the
    /// prefill batch the factory is made with (the transformer clamps it to the context).
    /// </summary>
    public static long PlanBytes(KvShape c, KvCacheOptions o, int context, int sequences = 1, int maxBatch = 256) =>
        sequences * SequenceBytes(c, o, context, maxBatch) + SharedBytes(c, o, context, maxBatch);

    /// <summary>
    /// What one sequence of <paramref name="context"/> tokens holds: the pages and per-token bookkeeping its store
    /// reports as <see cref="IKvStore.Bytes"/> when full (<see cref="PageBytesFor"/>) and the arrays the store
    /// allocates when it is created (<see cref="StoreArrayBytes"/>).
    /// </summary>
    public static long SequenceBytes(KvShape c, KvCacheOptions o, int context, int maxBatch = 256) =>
        PageBytesFor(c, o, context, maxBatch) + StoreArrayBytes(c, o, context, maxBatch) - SlotBytesFor(c, o, context);

    /// <summary>H2O's per-slot bookkeeping that <see cref="IKvStore.Bytes"/> counts but that lives in arrays <see cref="StoreArrayBytes"/> counts whole.</summary>
    private static long SlotBytesFor(KvShape c, KvCacheOptions o, int context) =>
        o.Evict == KvEviction.H2O ? (long)c.Layers * c.KvHeads * Math.Min(context, o.Keep) * H2OKvStore.BytesPerSlot : 0;

    /// <summary>
    /// <see cref="IKvStore.Bytes"/> of a store holding <paramref name="context"/> tokens: <see cref="Bytes"/> without the
    /// basis, which is shared. H2O's is a bound: a batch is appended before it is evicted, and freed slots leave holes,
    /// so its pages can reach the slot capacity (Keep + the batch), not just Keep (measured: one page more per layer).
    /// </summary>
    public static long PageBytesFor(KvShape c, KvCacheOptions o, int context, int maxBatch = 256)
    {
        if (o.Evict != KvEviction.H2O) return Bytes(c, o, context) - FixedBytesFor(c, o);
        o.Validate();
        const int G = KvCacheOptions.Group;
        int batch = Math.Clamp(maxBatch, 1, Math.Max(1, context));
        long slots = Math.Min(context, (long)o.Keep + batch), held = Math.Min(context, o.Keep);
        return c.Layers * ((slots + G - 1) / G * PageBytes(c, o).Main + held * c.KvHeads * H2OKvStore.BytesPerSlot);
    }

    /// <summary>What a factory of these options holds once per model: XQuant's latent basis (<see cref="FixedBytes"/>).</summary>
    public static long FixedBytesFor(KvShape c, KvCacheOptions o) =>
        o.IsXQuant && o.Evict == KvEviction.None && Form(c, o) == XQuantForm.Latent ? LatentBasis.BytesFor(c) : 0;

    /// <summary>
    /// What one factory holds whatever the number of sequences: the basis, <see cref="TileAttention"/>'s split
    /// partials, every worker's score and tile scratch (thread-static, as long as the context), and XQuant's
    /// workspace (one layer rematerialized as float pages for the whole context, alternates, row buffers).
    /// </summary>
    public static long SharedBytes(KvShape c, KvCacheOptions o, int context, int maxBatch = 256)
    {
        o.Validate();
        const int G = KvCacheOptions.Group;
        int batch = Math.Clamp(maxBatch, 1, Math.Max(1, context));
        long attention = TileAttention.PartialBytes(c, context) + (long)Math.Max(1, Tensors.MatMul.Threads) * TileAttention.ThreadScratchBytes(c, context);
        long workspace = 0;
        if (o.Evict == KvEviction.None && (o.IsXQuant || o.Type == KvType.XQuantCl))
        {
            bool latent = o.IsXQuant && Form(c, o) == XQuantForm.Latent;
            long r = 2L * c.KvDim, page = FloatPage.Bytes(c, half: false);
            workspace = (context + G - 1) / G * page + (batch + 2 * G - 1) / G * page
                + 4L * ((latent ? r * r : 0) + batch * (c.Dim + 2L * c.KvDim + r + (latent ? r : 0)));
        }
        return FixedBytesFor(c, o) + attention + workspace;
    }

    /// <summary>
    /// Managed arrays a store allocates when created for a context of <paramref name="context"/> tokens: page
    /// tables, positions per layer, row buffers; H2O's per-slot positions and scores (for Keep + a batch) and
    /// per-head probabilities and slots; XQuant-CL's batch of rows.
    /// </summary>
    public static long StoreArrayBytes(KvShape c, KvCacheOptions o, int context, int maxBatch = 256)
    {
        const int G = KvCacheOptions.Group;
        const long ArrayHeader = 24; // a .NET array's object header and length
        int batch = Math.Clamp(maxBatch, 1, Math.Max(1, context));
        long tiles = (context + G - 1) / G;
        long Table(long length) => ArrayHeader + 4 * length;
        long Layers(long each) => ArrayHeader + 8L * c.Layers + c.Layers * each; // a jagged [layer][...] table
        long common = Table(c.Layers); // positions per layer
        if (o.Evict == KvEviction.H2O)
        {
            long capacity = o.Keep + batch;
            return common + Layers(Table((capacity + G - 1) / G)) + 2 * (ArrayHeader + 8L * c.Layers * c.KvHeads)
                + 2 * c.Layers * c.KvHeads * Table(capacity) + Table(c.Layers * c.KvHeads) + 2 * Table(c.Heads * capacity)
                + Table(c.Heads) + Table(c.KvDim);
        }
        return o.Type switch
        {
            KvType.F32 or KvType.F16 => common + Layers(Table(tiles)) + Table(c.KvDim),
            KvType.Kivi2 or KvType.Kivi4 => common + 2 * Layers(Table(tiles)) + Table(c.Layers) + Table(c.KvDim) + Table(G) + Table((long)G * c.HeadDim),
            KvType.XQuantCl => common + Table(tiles) + Layers(Table(tiles)) + Table((long)batch * c.Dim) + 2 * Table(c.Dim),
            _ => common + 2 * Layers(Table(tiles)) + Table(G),
        };
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

    /// <summary>
    /// A store of this factory holding every position of <paramref name="from"/> (a store of another factory of the
    /// same model), converted between decode steps: f32, f16, kivi4 and kivi2 either way (docs: KvConversion).
    /// <paramref name="from"/> is emptied layer by layer as the new store fills, then disposed; its pools give back
    /// the slabs that empties. Anything else (XQuant, H2O) throws a FitLMException and leaves <paramref name="from"/> as it was.
    /// </summary>
    public IKvStore Convert(IKvStore from) => KvConversion.Convert(from, this);

    /// <summary>Why <paramref name="from"/> cannot be converted into this factory's type, or null when <see cref="Convert"/> would work.</summary>
    public string? ConversionProblem(IKvStore from) => KvConversion.Problem(from, Options, MaxContext);

    /// <summary>The same check before a factory exists (making one of XQuant computes a basis: not worth it for a refusal).</summary>
    public static string? ConversionProblem(IKvStore from, KvCacheOptions to, int maxContext) => KvConversion.Problem(from, to, maxContext);

    public void Dispose()
    {
        Pool.Dispose();
        SecondPool?.Dispose();
    }
}
