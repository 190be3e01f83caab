using System.Diagnostics;

namespace FitLM.Runtime;

/// <summary>
/// Where a forward pass spends its time, by phase (as llama.cpp's perf counters do), for `fitlm bench --profile`.
/// Off by default: when off, <see cref="Start"/> returns 0 and <see cref="Stop"/> does nothing, so the hot loop pays
/// one branch per phase.
/// </summary>
public static class PhaseTimes
{
    /// <summary>
    /// Attention: RoPE of the queries, the KV store's append and its attention. The training phases: Loss (Cut
    /// Cross-Entropy, both passes), LoraForward (the adapters' products in forward), FrozenBackward (dX = dY·W of
    /// the base weights), LoraBackward (the adapters' gradients), AttentionBackward (with RoPE's), OtherBackward
    /// (norms and the FFN gate).
    /// </summary>
    public enum Phase { Embed, Norm, Qkv, Attention, Wo, Ffn, Logits, Loss, LoraForward, FrozenBackward, LoraBackward, AttentionBackward, OtherBackward, Count }

    private static readonly long[] s_ticks = new long[(int)Phase.Count];
    public static bool Enabled { get; set; }

    public static long Start() => Enabled ? Stopwatch.GetTimestamp() : 0;

    /// <summary>Adds the time since <paramref name="start"/> to <paramref name="phase"/> and returns now (the next phase's start).</summary>
    public static long Stop(Phase phase, long start)
    {
        if (!Enabled) return 0;
        long now = Stopwatch.GetTimestamp();
        s_ticks[(int)phase] += now - start;
        return now;
    }

    public static void Reset() => Array.Clear(s_ticks);

    /// <summary>Seconds per phase since the last reset.</summary>
    public static IReadOnlyList<(Phase Phase, double Seconds)> Snapshot() =>
        Enumerable.Range(0, (int)Phase.Count).Select(i => ((Phase)i, s_ticks[i] / (double)Stopwatch.Frequency)).ToArray();
}
