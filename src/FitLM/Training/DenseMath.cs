using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.Training;

/// <summary>
/// The float32 products the backward pass needs, on the inference kernels: C = A · Bᵀ is exactly the kernels'
/// Y = W · X with W = B, so every product of training runs on the same tuned (and tested) matrix code.
/// </summary>
internal static unsafe class DenseMath
{
    /// <summary>C [m × n] = A [m × k] · Bᵀ, B is [n × k]; all row-major.</summary>
    public static void MultiplyTransposed(ReadOnlySpan<float> a, int m, int k, ReadOnlySpan<float> b, int n, Span<float> c)
    {
        if (m == 0 || n == 0) return;
        if (a.Length < (long)m * k || b.Length < (long)n * k || c.Length < (long)m * n) throw new ArgumentException("product size mismatch");
        fixed (float* pb = b)
            MatMul.MatMulBatch(GgmlType.F32, (byte*)pb, 4L * k, n, k, a[..(m * k)], c[..(m * n)], m);
    }

    /// <summary>dst [cols × rows] = srcᵀ, src [rows × cols].</summary>
    public static void Transpose(ReadOnlySpan<float> src, int rows, int cols, Span<float> dst)
    {
        // 8 × 8 blocks keep both sides in cache lines for the sizes here (up to 512 × 5632).
        const int B = 8;
        for (int r0 = 0; r0 < rows; r0 += B)
            for (int c0 = 0; c0 < cols; c0 += B)
            {
                int r1 = Math.Min(rows, r0 + B), c1 = Math.Min(cols, c0 + B);
                for (int r = r0; r < r1; r++)
                    for (int c = c0; c < c1; c++)
                        dst[c * rows + r] = src[r * cols + c];
            }
    }

    /// <summary>y += s · x.</summary>
    public static void AddScaled(ReadOnlySpan<float> x, float s, Span<float> y)
    {
        if (s == 1f) TensorPrimitives.Add(y, x, y);
        else TensorPrimitives.MultiplyAdd(x, s, y, y);
    }
}
