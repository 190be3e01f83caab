namespace FitLM.KvCache;

/// <summary>
/// The KV types a running cache steps through when memory shrinks and grows: f32 → f16 → kivi4 → kivi2, each
/// about half the bytes per token of the one before (at 512 tokens on pycoder-29m: see bench/kv-ladder.sh for
/// the perplexity each step costs). A step keeps everything but the type (KIVI's window, for instance).
/// Evicting caches (H2O) and XQuant are not on the ladder: they have no next step.
/// </summary>
public static class KvLadder
{
    private static readonly KvType[] Steps = [KvType.F32, KvType.F16, KvType.Kivi4, KvType.Kivi2];

    /// <summary>The next smaller type, or null at the bottom (kivi2) or off the ladder.</summary>
    public static KvCacheOptions? Smaller(KvCacheOptions now)
    {
        int i = Index(now);
        return i < 0 || i + 1 == Steps.Length ? null : now with { Type = Steps[i + 1] };
    }

    /// <summary>
    /// The next larger type, no larger than <paramref name="top"/> (the type the model was loaded with; f32 when
    /// null), or null when there is none. Growing back does not restore what quantization lost: the positions
    /// keep their values (kivi2 → kivi4 re-encodes each kivi2 level within 1% of its step), new tokens get the larger type.
    /// </summary>
    public static KvCacheOptions? Larger(KvCacheOptions now, KvCacheOptions? top = null)
    {
        int i = Index(now), limit = top == null ? 0 : Index(top);
        return i <= 0 || limit < 0 || i <= limit ? null : now with { Type = Steps[i - 1] };
    }

    /// <summary>Whether a running cache of these options can be converted (<see cref="KvStoreFactory.Convert"/>).</summary>
    public static bool OnLadder(KvCacheOptions o) => Index(o) >= 0;

    private static int Index(KvCacheOptions o) => o.Evict == KvEviction.None ? Array.IndexOf(Steps, o.Type) : -1;
}
