namespace FitLM.Model;

/// <summary>Checks that a model's tensors are all there with the shapes its configuration implies.</summary>
public static class ModelValidation
{
    public static int ToInt(long value, string what, string path) =>
        value is >= 0 and <= int.MaxValue ? (int)value : throw new FitLMException($"{path}: {what} {value} is out of range");

    /// <summary>True for files written by `fitlm prepare` (FFN weights bundled per neuron).</summary>
    public static bool IsBundled(IModelSource src) => src.Find("blk.0.ffn_bundle.weight") != null;

    public static void CheckTensors(IModelSource src)
    {
        var c = src.Config;
        void Expect(string name, params long[] shape)
        {
            var t = src.Find(name) ?? throw new FitLMException($"{src.Path}: tensor '{name}' is missing");
            if (!t.Shape.SequenceEqual(shape))
                throw new FitLMException($"{src.Path}: tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{string.Join(", ", shape)}]");
        }
        void Optional(string name, params long[] shape)
        {
            if (src.Find(name) != null) Expect(name, shape);
        }
        // A layer count lower than the file's blocks would leave tensors nobody reads (and index past the layers).
        foreach (var t in src.Tensors)
            if (Memory.Planner.LayerOf(t.Name) is var l && l >= c.Layers)
                throw new FitLMException($"{src.Path}: tensor '{t.Name}' is for layer {l}, but the model has {c.Layers} layers");
        Expect("token_embd.weight", c.Dim, c.Vocab);
        Optional("output.weight", c.Dim, c.Vocab);
        Expect("output_norm.weight", c.Dim);
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"blk.{l}.";
            Expect(p + "attn_norm.weight", c.Dim);
            Expect(p + "attn_q.weight", c.Dim, c.QDim);
            Expect(p + "attn_k.weight", c.Dim, c.KvDim);
            Expect(p + "attn_v.weight", c.Dim, c.KvDim);
            Expect(p + "attn_output.weight", c.QDim, c.Dim);
            Expect(p + "ffn_norm.weight", c.Dim);
            if (IsBundled(src))
            {
                // fitlm prepare: gate row i, up row i and down column i of neuron i stored as rows 3i..3i+2.
                Expect(p + "ffn_bundle.weight", c.Dim, 3L * c.FfnDim);
            }
            else
            {
                Expect(p + "ffn_gate.weight", c.Dim, c.FfnDim);
                Expect(p + "ffn_up.weight", c.Dim, c.FfnDim);
                Expect(p + "ffn_down.weight", c.FfnDim, c.Dim);
            }
            if (c.QkvBias)
            {
                Expect(p + "attn_q.bias", c.QDim);
                Expect(p + "attn_k.bias", c.KvDim);
                Expect(p + "attn_v.bias", c.KvDim);
            }
            if (c.QkNorm)
            {
                Expect(p + "attn_q_norm.weight", c.HeadDim);
                Expect(p + "attn_k_norm.weight", c.HeadDim);
            }
        }
        Optional("rope_freqs.weight", c.RopeDims / 2);
    }
}
