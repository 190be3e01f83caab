using FitLM.Model.Architectures;

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
            // Trailing dimensions of 1 are the same shape (Qwen2-MoE's shared-expert gate is [1, Dim] in safetensors, [Dim] in GGUF).
            static IEnumerable<long> Trim(long[] s) => s.Reverse().SkipWhile(n => n == 1).Reverse();
            if (!Trim(t.Shape).SequenceEqual(Trim(shape)))
                throw new FitLMException($"{src.Path}: tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{string.Join(", ", shape)}]");
        }
        void Optional(string name, params long[] shape)
        {
            if (src.Find(name) != null) Expect(name, shape);
        }
        // A layer count lower than the file's blocks would leave tensors nobody reads (and index past the layers).
        foreach (var t in src.Tensors)
            if (TensorNames.LayerOf(t.Name) is var l && l >= c.Layers)
                throw new FitLMException($"{src.Path}: tensor '{t.Name}' is for layer {l}, but the model has {c.Layers} layers");
        // Expert stacks in a model configured without experts (expert count 0 or missing) would be read by nobody:
        // name the setting rather than the dense FFN tensor found missing next.
        if (!c.IsMoe && src.Tensors.FirstOrDefault(t => TensorNames.IsExpertStack(t.Name)) is { } stack)
            throw new FitLMException($"{src.Path}: tensor '{stack.Name}' holds routed experts, but the model's expert count is 0 or missing");
        // The family's table says which tensors a model of this configuration has and their shapes:
        // the tensors outside the blocks first, then block by block.
        var family = c.Family;
        bool bundled = IsBundled(src);
        void Check(TensorSpec t, int layer)
        {
            string name = t.GgufName(layer);
            if (t.IsRequired(c)) Expect(name, t.Shape(c));
            else if (t.MayExist(c)) Optional(name, t.Shape(c));
        }
        foreach (var t in family.Tensors)
            if (!t.PerLayer) Check(t, 0);
        for (int l = 0; l < c.Layers; l++)
        {
            foreach (var t in family.Tensors)
                if (t.PerLayer && !(bundled && t.FeedForward)) Check(t, l);
            // fitlm prepare: gate row i, up row i and down column i of neuron i stored as rows 3i..3i+2.
            if (bundled) Expect($"blk.{l}.ffn_bundle.weight", c.Dim, 3L * c.FfnDim);
        }
    }
}
