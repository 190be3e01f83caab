using FitLM.Tensors;

namespace FitLM.KvCache;

/// <summary>
/// Moves a live KV cache to another storage type between decode steps, keeping every position: each layer's
/// finished keys and values are read back from the old store (quantized tiles dequantized) and appended to a new
/// store as they are (no RoPE again), then the old layer's pages are returned and the slabs they empty freed, so
/// the memory held during the conversion stays near max(old, new) plus one layer.
/// Supported: f32, f16, kivi4 and kivi2, either way (up the ladder the positions keep the error they have).
/// A KIVI target quantizes from its float16 window exactly as it would have while decoding, so f32/f16 → kivi
/// equals a KIVI cache filled from the start, bit for bit.
/// </summary>
internal static class KvConversion
{
    private const int G = KvCacheOptions.Group;

    /// <summary>Why <paramref name="from"/> cannot move to <paramref name="to"/>'s type, or null when it can.</summary>
    public static string? Problem(IKvStore from, KvCacheOptions to, int maxContext)
    {
        if (!KvLadder.OnLadder(to))
            return $"KV cache: cannot convert to {to}: only f32, f16, kivi4 and kivi2 without eviction can be converted to";
        if (from is not IKvLayers)
            return $"KV cache: cannot convert {Describe(from)} store to {to}: only f32, f16, kivi4 and kivi2 stores can be converted";
        if (from.Length > maxContext)
            return $"KV cache: cannot convert {from.Length} positions into a context of {maxContext}";
        return null;
    }

    private static string Describe(IKvStore s) => s switch
    {
        H2OKvStore => "an H2O (evicting)",
        XQuantKvStore or XQuantClKvStore => "an XQuant",
        _ => "a " + s.GetType().Name,
    };

    /// <summary>
    /// A store of <paramref name="to"/> holding every position of <paramref name="from"/>, which is emptied and disposed.
    /// Not cancellable: stopping halfway would leave the sequence with neither cache. The tiles of a layer are
    /// converted in parallel; layers one after the other, so only one layer is held twice at a time.
    /// </summary>
    public static IKvStore Convert(IKvStore from, KvStoreFactory to)
    {
        ArgumentNullException.ThrowIfNull(from);
        if (Problem(from, to.Options, to.MaxContext) is { } problem) throw new FitLMException(problem);
        var store = to.Create();
        var job = new LayerJob((IKvLayers)from, (IKvLayers)store, to.Config, from.Length);
        try
        {
            for (int layer = 0; layer < to.Config.Layers; layer++)
            {
                job.Run(layer);
                job.Source.ReleaseLayer(layer);
            }
        }
        catch
        {
            store.Dispose();
            throw;
        }
        from.Dispose();
        // The float pages KIVI quantized from are free now, one layer's worth: give back the slabs they fill.
        to.Pool.Trim();
        to.SecondPool?.Trim();
        return store;
    }

    /// <summary>One layer's tiles, a work item each: read back from the source, written to the target.</summary>
    private sealed class LayerJob(IKvLayers source, IKvLayers target, KvShape c, int length) : IParallelJob
    {
        public IKvLayers Source => source;
        private int _layer;

        public void Run(int layer)
        {
            _layer = layer;
            target.BeginLayer(layer, length);
            WorkerPool.Shared.Run(this, (length + G - 1) / G);
            target.EndLayer(layer);
        }

        public void Execute(int tile)
        {
            int hd = c.HeadDim, kvDim = c.KvDim, rows = Math.Min(G, length - tile * G);
            var s = Scratch.Get(G * kvDim, G * hd + target.ScratchFloats);
            var keys = s.Keys.AsSpan(0, G * kvDim);
            var values = s.Values.AsSpan(0, G * kvDim);
            var read = s.Tile.AsSpan(0, G * hd);
            for (int h = 0; h < c.KvHeads; h++)
            {
                // The cache as the next query sees it: KIVI's tiles quantized or in its window as decoding left them.
                var k = source.Keys(_layer, tile, h, length - 1, read, out bool channelMajor);
                for (int j = 0; j < rows; j++)
                {
                    var row = keys.Slice(j * kvDim + h * hd, hd);
                    if (channelMajor) for (int d = 0; d < hd; d++) row[d] = k[d * G + j];
                    else k.Slice(j * hd, hd).CopyTo(row);
                }
                var v = source.Values(_layer, tile, h, length - 1, read);
                for (int j = 0; j < rows; j++) v.Slice(j * hd, hd).CopyTo(values.Slice(j * kvDim + h * hd, hd));
            }
            target.WriteTile(_layer, tile, keys, values, rows, s.Tile.AsSpan(G * hd));
        }
    }

    /// <summary>Per-thread buffers of a conversion: a tile's rows, and the read and encode scratch (kept: conversions repeat).</summary>
    private sealed class Scratch
    {
        public float[] Keys = [], Values = [], Tile = [];
        [ThreadStatic] private static Scratch? t_scratch;

        public static Scratch Get(int rows, int tile)
        {
            var s = t_scratch ??= new Scratch();
            if (s.Keys.Length < rows) { s.Keys = new float[rows]; s.Values = new float[rows]; }
            if (s.Tile.Length < tile) s.Tile = new float[tile];
            return s;
        }
    }
}
