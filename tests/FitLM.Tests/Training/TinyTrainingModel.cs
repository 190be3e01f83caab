using System.Runtime.InteropServices;
using FitLM.Adapters;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Weights;
using static FitLM.Tests.Training.GradientCheck;

namespace FitLM.Tests.Training;

/// <summary>
/// A random-weight decoder of any configuration the training graph supports, held in memory as F32 tensors
/// under GGUF names (norms and biases perturbed so that a missing one changes the loss), and the same model with
/// a LoRA adapter merged into its matrices (what the inference forward pass must agree with).
/// </summary>
internal sealed class TinyTrainingModel : IDisposable
{
    public ModelConfig Config { get; }
    public MemoryWeights Weights { get; } = new();
    private readonly Dictionary<string, (float[] W, int Rows, int Cols)> _matrices = new(StringComparer.Ordinal);
    private readonly Dictionary<string, float[]> _vectors = new(StringComparer.Ordinal);

    private TinyTrainingModel(ModelConfig config) => Config = config;

    public static TinyTrainingModel Create(ModelConfig c, int seed, bool tiedEmbeddings = false)
    {
        var m = new TinyTrainingModel(c);
        var rng = new Random(seed);
        void Mat(string name, int rows, int cols, double scale) => m.Add(name, Uniform(rng, rows * cols, scale), rows, cols);
        void Vec(string name, float[] v) { m._vectors[name] = v; m.Weights.AddVector(name, v); }
        Mat("token_embd.weight", c.Vocab, c.Dim, 1);
        if (!tiedEmbeddings) Mat("output.weight", c.Vocab, c.Dim, 2 / Math.Sqrt(c.Dim));
        Vec("output_norm.weight", Between(rng, c.Dim, 0.7, 1.3));
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"blk.{l}.";
            Vec(p + "attn_norm.weight", Between(rng, c.Dim, 0.7, 1.3));
            Vec(p + "ffn_norm.weight", Between(rng, c.Dim, 0.7, 1.3));
            // Attention weights large enough that the softmax is far from uniform.
            Mat(p + "attn_q.weight", c.QDim, c.Dim, 2 / Math.Sqrt(c.Dim));
            Mat(p + "attn_k.weight", c.KvDim, c.Dim, 2 / Math.Sqrt(c.Dim));
            Mat(p + "attn_v.weight", c.KvDim, c.Dim, 1 / Math.Sqrt(c.Dim));
            Mat(p + "attn_output.weight", c.Dim, c.QDim, 1 / Math.Sqrt(c.QDim));
            Mat(p + "ffn_gate.weight", c.FfnDim, c.Dim, 2 / Math.Sqrt(c.Dim));
            Mat(p + "ffn_up.weight", c.FfnDim, c.Dim, 2 / Math.Sqrt(c.Dim));
            Mat(p + "ffn_down.weight", c.Dim, c.FfnDim, 1 / Math.Sqrt(c.FfnDim));
            if (c.QkvBias)
            {
                Vec(p + "attn_q.bias", Uniform(rng, c.QDim, 0.5));
                Vec(p + "attn_k.bias", Uniform(rng, c.KvDim, 0.5));
                Vec(p + "attn_v.bias", Uniform(rng, c.KvDim, 0.5));
            }
            if (c.QkNorm)
            {
                Vec(p + "attn_q_norm.weight", Between(rng, c.HeadDim, 0.5, 2.0));
                Vec(p + "attn_k_norm.weight", Between(rng, c.HeadDim, 0.5, 2.0));
            }
        }
        return m;
    }

    private void Add(string name, float[] w, int rows, int cols)
    {
        _matrices[name] = (w, rows, cols);
        Weights.AddMatrix(name, GgmlType.F32, rows, cols, MemoryMarshal.AsBytes(w.AsSpan()));
    }

    /// <summary>An adapter on <paramref name="targets"/> with A as PEFT initializes it and B random (so every gradient is non-zero).</summary>
    public LoraAdapter Adapter(IReadOnlyList<string> targets, int rank, float alpha, int seed)
    {
        var adapter = LoraAdapter.Create(Config, targets, rank, alpha, seed);
        var rng = new Random(seed + 1);
        foreach (var p in adapter.Pairs) Uniform(rng, p.B.Length, 0.3).CopyTo(p.B, 0);
        return adapter;
    }

    /// <summary>The same model with W + scale · B A in every adapted matrix.</summary>
    public MemoryWeights Merged(LoraAdapter adapter)
    {
        var merged = new MemoryWeights();
        foreach (var (name, v) in _vectors) merged.AddVector(name, v);
        foreach (var (name, (w, rows, cols)) in _matrices)
        {
            var m = (float[])w.Clone();
            if (adapter.Find(name) is { } p)
                for (int o = 0; o < rows; o++)
                    for (int i = 0; i < cols; i++)
                    {
                        double d = 0;
                        for (int r = 0; r < p.Rank; r++) d += (double)p.B[o * p.Rank + r] * p.A[r * cols + i];
                        m[o * cols + i] += (float)(adapter.Scale * d);
                    }
            merged.AddMatrix(name, GgmlType.F32, rows, cols, MemoryMarshal.AsBytes(m.AsSpan()));
        }
        return merged;
    }

    public void Dispose() => Weights.Dispose();
}
