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
