using System.Numerics.Tensors;

namespace FitLM.Training;

/// <summary>RMSNorm, y = x · r · w with r = 1/√(mean(x²) + ε), forward and backward over rows.</summary>
internal static class RmsNormGradient
{
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y, int n, float eps)
    {
        int d = w.Length;
        for (int t = 0; t < n; t++) Model.Transformer.RmsNorm(x.Slice(t * d, d), w, y.Slice(t * d, d), eps);
    }

    /// <summary>
    /// dX += ∂y/∂x · dY per row: r·(w ⊙ dy) − x · r³/d · Σ(x ⊙ w ⊙ dy). The weights are frozen (no dW).
    /// <paramref name="wdy"/> is a row of scratch.
    /// </summary>
    public static void Backward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> dy, Span<float> dx, int n, float eps, Span<float> wdy)
    {
        int d = w.Length;
        for (int t = 0; t < n; t++)
        {
            var xr = x.Slice(t * d, d);
            var dxr = dx.Slice(t * d, d);
            float r = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xr) / d + eps);
            TensorPrimitives.Multiply(w, dy.Slice(t * d, d), wdy[..d]);
            float dot = TensorPrimitives.Dot(xr, wdy[..d]);
            TensorPrimitives.MultiplyAdd(wdy[..d], r, dxr, dxr);
            TensorPrimitives.MultiplyAdd(xr, -dot * r * r * r / d, dxr, dxr);
        }
    }
}
