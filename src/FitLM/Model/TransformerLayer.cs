using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>One decoder layer's weights, as <see cref="TransformerWeights"/> loads them; what a family lacks is null.</summary>
internal sealed class TransformerLayer
{
    public required float[] AttnNorm, FfnNorm;
    public required IMatrix Wo;
    /// <summary>Separate projections, or null where one fused matrix holds all three (Phi-3's <see cref="Wqkv"/>).</summary>
    public IMatrix? Wq, Wk, Wv, Wqkv;
    public required IFeedForward Ffn;
    public required Rope Rope;
    public float[]? Bq, Bk, Bv, QNorm, KNorm, PostAttnNorm, PostFfnNorm;
}
