using FitLM.KvCache;
using FitLM.Model;

namespace FitLM.Generation;

/// <summary>
/// What a verification step may append to the target's KV cache so that any rejection can be rolled back with
/// <see cref="IKvStore.Truncate"/>: float caches rewind anywhere, but the quantized ones refuse to rewind into a
/// group they have already quantized (KIVI: tiles that left the full-precision window; XQuant per channel: a
/// completed 32-token group). The draft is shortened so the step never completes such a group past the first
/// position it may roll back to; near a group boundary that costs one plain step per 32 tokens at most.
/// H2O evicts by accumulated attention, which rejected queries would already have changed, so it is refused.
/// </summary>
internal static class SpeculativeKv
{
    private const int G = KvCacheOptions.Group;

    /// <summary>A one-line reason speculation cannot run on this cache, or null.</summary>
    public static string? Problem(KvCacheOptions o) => o.Evict == KvEviction.H2O
        ? "speculative decoding (--draft, --lookup) needs a KV cache that can roll back rejected tokens, and --kv-evict h2o cannot; use --kv-evict none"
        : null;

    /// <summary>
    /// The most drafted tokens (at most <paramref name="k"/>) a step may verify when the cache holds positions
    /// [0, <paramref name="pos"/>) and the step appends <paramref name="pos"/> … pos + drafted: every length in
    /// [pos + 1, pos + drafted] must remain a legal rollback target.
    /// </summary>
    public static int MaxDraft(KvCacheOptions o, ModelConfig c, int pos, int k)
    {
        int got = k;
        while (got > 0 && !CanRollBack(o, c, pos + 1, pos + 1 + got)) got--;
        return got;
    }

    /// <summary>Whether a store holding <paramref name="length"/> positions can truncate to every r in [first, length).</summary>
    private static bool CanRollBack(KvCacheOptions o, ModelConfig c, int first, int length)
    {
        switch (o.Type)
        {
            case KvType.Kivi2 or KvType.Kivi4:
                // KiviKvStore.Truncate: refused once the target leaves fewer quantized tiles than the store holds.
                return KiviKvStore.QuantizedTiles(first, o.Residual) >= KiviKvStore.QuantizedTiles(length, o.Residual);
            case KvType.XQuant4 or KvType.XQuant3 or KvType.XQuant2:
                if (!o.XQuantPerChannel || KvStoreFactory.Form(c, o) == XQuantForm.X) return true;
                // XQuantKvStore.Truncate: refused inside a group that is complete (quantized).
                for (int r = first; r < length; r++)
                    if (r % G != 0 && r / G < length / G) return false;
                return true;
            default:
                return true;
        }
    }
}
