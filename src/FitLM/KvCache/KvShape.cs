namespace FitLM.KvCache;

/// <summary>
/// The dimensions a KV cache is laid out by: what the stores need of a model's configuration, so the cache does
/// not depend on the model layer above it (a KvShape converts to this implicitly).
/// </summary>
public sealed record KvShape(int Layers, int Dim, int Heads, int KvHeads, int HeadDim)
{
    /// <summary>Width of one key (or value) row over all KV heads.</summary>
    public int KvDim => KvHeads * HeadDim;
    /// <summary>Width of one query row over all heads.</summary>
    public int QDim => Heads * HeadDim;

    /// <summary>Scale of q·k; 0 for 1/√HeadDim.</summary>
    public float ScoreScale { get; init; }
    /// <summary>Scores become c·tanh(s/c) before the softmax (Gemma 2); 0 for none.</summary>
    public float Softcap { get; init; }
    /// <summary>Positions a sliding-window layer's query sees, itself included; 0 when no layer slides.</summary>
    public int SlidingWindow { get; init; }
    /// <summary>Layer l slides when l % SlidingPeriod &lt; SlidingPeriod - 1 (1: every layer).</summary>
    public int SlidingPeriod { get; init; } = 1;

    /// <summary>The scale attention applies to q·k.</summary>
    public float Scale => ScoreScale > 0 ? ScoreScale : 1f / MathF.Sqrt(HeadDim);
    /// <summary>Whether layer <paramref name="layer"/> attends through a window of <paramref name="window"/> positions when layers slide with <paramref name="period"/> (llama.cpp's swa pattern).</summary>
    public static bool Slides(int layer, int window, int period) => window > 0 && (period <= 1 || layer % period < period - 1);

    /// <summary>The first position a query at <paramref name="queryPos"/> of <paramref name="layer"/> sees.</summary>
    public int FirstVisible(int layer, int queryPos) =>
        Slides(layer, SlidingWindow, SlidingPeriod) ? Math.Max(0, queryPos - SlidingWindow + 1) : 0;

    /// <summary>Scores of one query over its visible keys, capped in place when the model soft-caps them.</summary>
    public void Cap(Span<float> scores) => CapInPlace(scores, Softcap);

    /// <summary>x = c·tanh(x/c) in place (Gemma 2's attention and final soft-capping); nothing for c ≤ 0.</summary>
    public static void CapInPlace(Span<float> x, float c)
    {
        if (c <= 0) return;
        System.Numerics.Tensors.TensorPrimitives.Multiply(x, 1f / c, x);
        System.Numerics.Tensors.TensorPrimitives.Tanh(x, x);
        System.Numerics.Tensors.TensorPrimitives.Multiply(x, c, x);
    }
}
