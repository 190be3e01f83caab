using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>
/// What a <see cref="Transformer"/> loads once from an <see cref="IWeightProvider"/>: the configuration, each layer's
/// matrices, norms and biases, the embedding, the output norm and head, and the RoPE tables for the context. Shared
/// by every pass; the per-pass activations are a <see cref="ForwardContext"/>'s, the positions a KV store's.
/// </summary>
internal sealed class TransformerWeights
{
    public ModelConfig Config { get; }
    public TransformerLayer[] Layers { get; }
    public IMatrix TokenEmbedding { get; }
    /// <summary>The output head: its own matrix, or the embedding where the model ties them.</summary>
    public IMatrix Output { get; }
    public float[] OutputNorm { get; }

    public TransformerWeights(ModelConfig c, IWeightProvider weights, int maxContext)
    {
        Config = c;
        var rope = new Rope(c, maxContext, weights.Has("rope_freqs.weight") ? weights.Vector("rope_freqs.weight") : null);
        // The sliding-window layers' RoPE where their base differs (Gemma 3).
        var ropeSliding = c.RopeThetaSliding > 0 ? new Rope(c with { RopeTheta = c.RopeThetaSliding }, maxContext) : rope;
        // Norm weights as the math uses them: Gemma's Hugging Face files store w for (1 + w).
        float[] Norm(string name)
        {
            var w = weights.Vector(name);
            if (c.NormWeightOffset == 0) return w;
            var shifted = (float[])w.Clone();
            TensorPrimitives.Add(shifted, c.NormWeightOffset, shifted);
            return shifted;
        }
        Layers = new TransformerLayer[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"blk.{l}.";
            Layers[l] = new TransformerLayer
            {
                AttnNorm = Norm(p + "attn_norm.weight"),
                FfnNorm = Norm(p + "ffn_norm.weight"),
                Wq = c.FusedQkv ? null : weights.Matrix(p + "attn_q.weight"),
                Wk = c.FusedQkv ? null : weights.Matrix(p + "attn_k.weight"),
                Wv = c.FusedQkv ? null : weights.Matrix(p + "attn_v.weight"),
                Wqkv = c.FusedQkv ? weights.Matrix(p + "attn_qkv.weight") : null,
                Wo = weights.Matrix(p + "attn_output.weight"),
                Ffn = weights.FeedForward(l, c),
                Rope = c.IsSliding(l) ? ropeSliding : rope,
                Bq = c.QkvBias ? weights.Vector(p + "attn_q.bias") : null,
                Bk = c.QkvBias ? weights.Vector(p + "attn_k.bias") : null,
                Bv = c.QkvBias ? weights.Vector(p + "attn_v.bias") : null,
                QNorm = c.QkNorm ? Norm(p + "attn_q_norm.weight") : null,
                KNorm = c.QkNorm ? Norm(p + "attn_k_norm.weight") : null,
                PostAttnNorm = c.PostNorms ? Norm(p + "post_attention_norm.weight") : null,
                PostFfnNorm = c.PostNorms ? Norm(p + "post_ffw_norm.weight") : null,
            };
        }
        TokenEmbedding = weights.Matrix("token_embd.weight");
        Output = weights.Has("output.weight") ? weights.Matrix("output.weight") : TokenEmbedding;
        OutputNorm = Norm("output_norm.weight");
    }
}
