using FitLM.Model;

namespace FitLM.Training;

/// <summary>The gated FFN's middle, h = act(g) ⊙ u, and its gradients with respect to g and u.</summary>
internal static class GateGradient
{
    public static void Forward(ReadOnlySpan<float> g, ReadOnlySpan<float> u, Span<float> h, FfnActivation act)
    {
        for (int i = 0; i < h.Length; i++) h[i] = Activations.Apply(g[i], act) * u[i];
    }

    /// <summary>dg = dh ⊙ u ⊙ act'(g), du = dh ⊙ act(g) (overwritten, not summed).</summary>
    public static void Backward(ReadOnlySpan<float> g, ReadOnlySpan<float> u, ReadOnlySpan<float> dh, Span<float> dg, Span<float> du, FfnActivation act)
    {
        for (int i = 0; i < dh.Length; i++)
        {
            float x = g[i];
            float a, da;
            switch (act)
            {
                case FfnActivation.Silu:
                    float sig = 1f / (1f + MathF.Exp(-x));
                    a = x * sig;
                    da = sig * (1f + x * (1f - sig));
                    break;
                case FfnActivation.Relu:
                    a = MathF.Max(x, 0f);
                    da = x > 0 ? 1f : 0f;
                    break;
                default:
                    // GELU, tanh approximation: 0.5 x (1 + tanh(c (x + 0.044715 x³)))
                    const float C = 0.7978845608f;
                    float inner = C * (x + 0.044715f * x * x * x);
                    float th = MathF.Tanh(inner);
                    a = 0.5f * x * (1f + th);
                    da = 0.5f * (1f + th) + 0.5f * x * (1f - th * th) * C * (1f + 3 * 0.044715f * x * x);
                    break;
            }
            dg[i] = dh[i] * u[i] * da;
            du[i] = dh[i] * a;
        }
    }
}
