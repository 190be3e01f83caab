using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>
/// A layer's gated feed-forward block, y = down(act(gate(x)) ⊙ up(x)), as the model graph uses it. The dense
/// form multiplies whole matrices; sparse forms (LLM in a flash) compute only the neurons they choose, from
/// weights bundled per neuron. The weight provider decides which form a layer gets.
/// </summary>
public interface IFeedForward
{
    /// <summary>y[t] = FFN(x[t]) for n tokens; x and y are [n × Dim]; hb and hb2 are [n × FfnDim] scratch.</summary>
    void Forward(ReadOnlySpan<float> x, Span<float> y, int n, Span<float> hb, Span<float> hb2);

    /// <summary>
    /// The matrix whose product reads the block's input first, where a backend can use knowing it (the norm before
    /// the block writes its output in that product's form on a GPU); null by default.
    /// </summary>
    IMatrix? Input => null;
}

/// <summary>The feed-forward block a layer of a model has, from a weight provider's matrices: dense, fused (Phi-3) or a mixture of experts.</summary>
public static class FeedForwards
{
    public static IFeedForward Create(IWeightProvider weights, int layer, ModelConfig c)
    {
        string p = $"blk.{layer}.";
        if (c.IsMoe)
        {
            DenseFeedForward? shared = null;
            float[]? sharedGate = null;
            if (c.SharedExpertFfnDim > 0)
            {
                shared = new DenseFeedForward(weights.Matrix(p + "ffn_gate_shexp.weight"), weights.Matrix(p + "ffn_up_shexp.weight"),
                    weights.Matrix(p + "ffn_down_shexp.weight"), c.Activation);
                sharedGate = weights.Vector(p + "ffn_gate_inp_shexp.weight");
            }
            return new MoeFeedForward(layer, c, weights.Matrix(p + "ffn_gate_inp.weight"), weights.Experts(layer, c), shared, sharedGate);
        }
        if (c.FusedGateUp) return new FusedGateUpFeedForward(weights.Matrix(p + "ffn_up.weight"), weights.Matrix(p + "ffn_down.weight"), c.Activation);
        return new DenseFeedForward(weights.Matrix(p + "ffn_gate.weight"), weights.Matrix(p + "ffn_up.weight"), weights.Matrix(p + "ffn_down.weight"), c.Activation);
    }
}

/// <summary>The dense feed-forward block: three matrix products.</summary>
public sealed class DenseFeedForward(IMatrix gate, IMatrix up, IMatrix down, FfnActivation activation) : IFeedForward
{
    public void Forward(ReadOnlySpan<float> x, Span<float> y, int n, Span<float> hb, Span<float> hb2)
    {
        int ffn = gate.Rows;
        gate.Multiply(x, hb, n);
        up.Multiply(x, hb2, n);
        var h = hb[..(n * ffn)];
        Activations.Apply(h, activation);
        TensorPrimitives.Multiply(h, hb2[..(n * ffn)], h);
        down.Multiply(h, y, n);
    }
}

/// <summary>
/// Phi-3's feed-forward block: gate and up are one matrix [2·FFN rows, the gate's first]; one product, then
/// act(gate) ⊙ up packed in place into the first FFN columns of each row. hb must hold n × 2·FFN floats.
/// </summary>
public sealed class FusedGateUpFeedForward(IMatrix gateUp, IMatrix down, FfnActivation activation) : IFeedForward
{
    public void Forward(ReadOnlySpan<float> x, Span<float> y, int n, Span<float> hb, Span<float> hb2)
    {
        int ffn = gateUp.Rows / 2;
        gateUp.Multiply(x, hb, n);
        // Row t's output [t·ffn, (t+1)·ffn) never overlaps an unread input: row 0 reads ahead of its writes, and
        // for t ≥ 1 (t+1)·ffn ≤ 2t·ffn.
        for (int t = 0; t < n; t++)
        {
            var g = hb.Slice(2 * t * ffn, ffn);
            Activations.Apply(g, activation);
            TensorPrimitives.Multiply(g, hb.Slice((2 * t + 1) * ffn, ffn), hb.Slice(t * ffn, ffn));
        }
        down.Multiply(hb[..(n * ffn)], y, n);
    }
}

public static class Activations
{
    /// <summary>The FFN's gate activation, in place.</summary>
    public static void Apply(Span<float> h, FfnActivation act)
    {
        switch (act)
        {
            case FfnActivation.Silu:
                // silu(x) = x * sigmoid(x)
                for (int i = 0; i < h.Length; i++) h[i] = h[i] / (1f + MathF.Exp(-h[i]));
                break;
            case FfnActivation.Relu:
                TensorPrimitives.Max(h, 0f, h);
                break;
            case FfnActivation.Gelu:
                for (int i = 0; i < h.Length; i++)
                {
                    float x = h[i];
                    h[i] = 0.5f * x * (1f + MathF.Tanh(0.7978845608f * (x + 0.044715f * x * x * x)));
                }
                break;
        }
    }

    public static float Apply(float x, FfnActivation act) => act switch
    {
        FfnActivation.Silu => x / (1f + MathF.Exp(-x)),
        FfnActivation.Relu => MathF.Max(x, 0f),
        _ => 0.5f * x * (1f + MathF.Tanh(0.7978845608f * (x + 0.044715f * x * x * x))),
    };
}
