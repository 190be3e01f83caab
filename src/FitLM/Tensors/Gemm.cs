using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FitLM.Tensors;

/// <summary>
/// The float micro-kernel of batched products: Y[t, r] = dot(W[r], X[t]) for a tile of rows already in
/// float32 and a batch of tokens. A 4×4 block of (row, token) pairs keeps 16 accumulators in registers, so
/// each step loads 4 weight and 4 activation vectors for 16 multiply-adds. Vector512 where the CPU has it,
/// else Vector256, else the scalar reference.
/// </summary>
internal static unsafe class Gemm
{
    /// <summary>Which code path runs; tests force each one.</summary>
    public enum Isa { Scalar, Vector256, Vector512 }

    public static Isa Best => Vector512.IsHardwareAccelerated ? Isa.Vector512 : Vector256.IsHardwareAccelerated ? Isa.Vector256 : Isa.Scalar;

    /// <summary>
    /// w: rows × cols (row-major), x: n × cols, y[t * yStride + r] receives the dot products.
    /// </summary>
    public static void Tile(float* w, int rows, float* x, int n, int cols, float* y, long yStride, Isa isa)
    {
        int r = 0;
        for (; r + 4 <= rows; r += 4)
        {
            int t = 0;
            for (; t + 4 <= n; t += 4)
            {
                switch (isa)
                {
                    case Isa.Vector512: Block4x4V512(w + (long)r * cols, x + (long)t * cols, cols, y + t * yStride + r, yStride); break;
                    case Isa.Vector256: Block4x4V256(w + (long)r * cols, x + (long)t * cols, cols, y + t * yStride + r, yStride); break;
                    default: BlockScalar(w + (long)r * cols, 4, x + (long)t * cols, 4, cols, y + t * yStride + r, yStride); break;
                }
            }
            if (t < n) Rest(w + (long)r * cols, 4, x + (long)t * cols, n - t, cols, y + t * yStride + r, yStride, isa);
        }
        if (r < rows) Rest(w + (long)r * cols, rows - r, x, n, cols, y + r, yStride, isa);
    }

    /// <summary>Edges of the tile: one row at a time against each token.</summary>
    private static void Rest(float* w, int rows, float* x, int n, int cols, float* y, long yStride, Isa isa)
    {
        for (int r = 0; r < rows; r++)
            for (int t = 0; t < n; t++)
                y[t * yStride + r] = isa == Isa.Scalar ? DotScalar(w + (long)r * cols, x + (long)t * cols, cols) : Dot(w + (long)r * cols, x + (long)t * cols, cols);
    }

    /// <summary>Scalar reference: the definition every vector path is tested against.</summary>
    public static void BlockScalar(float* w, int rows, float* x, int n, int cols, float* y, long yStride)
    {
        for (int r = 0; r < rows; r++)
            for (int t = 0; t < n; t++)
                y[t * yStride + r] = DotScalar(w + (long)r * cols, x + (long)t * cols, cols);
    }

    public static float DotScalar(float* a, float* b, int n)
    {
        float s = 0;
        for (int i = 0; i < n; i++) s += a[i] * b[i];
        return s;
    }

    private static float Dot(float* a, float* b, int n) =>
        System.Numerics.Tensors.TensorPrimitives.Dot(new ReadOnlySpan<float>(a, n), new ReadOnlySpan<float>(b, n));

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block4x4V512(float* w, float* x, int cols, float* y, long ys)
    {
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        float* w0 = w, w1 = w + cols, w2 = w + 2 * cols, w3 = w + 3 * cols;
        float* x0 = x, x1 = x + cols, x2 = x + 2 * cols, x3 = x + 3 * cols;
        int k = 0;
        for (; k + 16 <= cols; k += 16)
        {
            var v0 = Vector512.Load(x0 + k); var v1 = Vector512.Load(x1 + k);
            var v2 = Vector512.Load(x2 + k); var v3 = Vector512.Load(x3 + k);
            var r0 = Vector512.Load(w0 + k);
            a00 = Vector512.FusedMultiplyAdd(r0, v0, a00); a01 = Vector512.FusedMultiplyAdd(r0, v1, a01);
            a02 = Vector512.FusedMultiplyAdd(r0, v2, a02); a03 = Vector512.FusedMultiplyAdd(r0, v3, a03);
            var r1 = Vector512.Load(w1 + k);
            a10 = Vector512.FusedMultiplyAdd(r1, v0, a10); a11 = Vector512.FusedMultiplyAdd(r1, v1, a11);
            a12 = Vector512.FusedMultiplyAdd(r1, v2, a12); a13 = Vector512.FusedMultiplyAdd(r1, v3, a13);
            var r2 = Vector512.Load(w2 + k);
            a20 = Vector512.FusedMultiplyAdd(r2, v0, a20); a21 = Vector512.FusedMultiplyAdd(r2, v1, a21);
            a22 = Vector512.FusedMultiplyAdd(r2, v2, a22); a23 = Vector512.FusedMultiplyAdd(r2, v3, a23);
            var r3 = Vector512.Load(w3 + k);
            a30 = Vector512.FusedMultiplyAdd(r3, v0, a30); a31 = Vector512.FusedMultiplyAdd(r3, v1, a31);
            a32 = Vector512.FusedMultiplyAdd(r3, v2, a32); a33 = Vector512.FusedMultiplyAdd(r3, v3, a33);
        }
        y[0] = Vector512.Sum(a00); y[ys] = Vector512.Sum(a01); y[2 * ys] = Vector512.Sum(a02); y[3 * ys] = Vector512.Sum(a03);
        y[1] = Vector512.Sum(a10); y[ys + 1] = Vector512.Sum(a11); y[2 * ys + 1] = Vector512.Sum(a12); y[3 * ys + 1] = Vector512.Sum(a13);
        y[2] = Vector512.Sum(a20); y[ys + 2] = Vector512.Sum(a21); y[2 * ys + 2] = Vector512.Sum(a22); y[3 * ys + 2] = Vector512.Sum(a23);
        y[3] = Vector512.Sum(a30); y[ys + 3] = Vector512.Sum(a31); y[2 * ys + 3] = Vector512.Sum(a32); y[3 * ys + 3] = Vector512.Sum(a33);
        if (k < cols) AddTail(w, x, cols, k, y, ys);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block4x4V256(float* w, float* x, int cols, float* y, long ys)
    {
        Vector256<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector256<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector256<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector256<float> a30 = default, a31 = default, a32 = default, a33 = default;
        float* w0 = w, w1 = w + cols, w2 = w + 2 * cols, w3 = w + 3 * cols;
        float* x0 = x, x1 = x + cols, x2 = x + 2 * cols, x3 = x + 3 * cols;
        int k = 0;
        for (; k + 8 <= cols; k += 8)
        {
            var v0 = Vector256.Load(x0 + k); var v1 = Vector256.Load(x1 + k);
            var v2 = Vector256.Load(x2 + k); var v3 = Vector256.Load(x3 + k);
            var r0 = Vector256.Load(w0 + k);
            a00 = Vector256.FusedMultiplyAdd(r0, v0, a00); a01 = Vector256.FusedMultiplyAdd(r0, v1, a01);
            a02 = Vector256.FusedMultiplyAdd(r0, v2, a02); a03 = Vector256.FusedMultiplyAdd(r0, v3, a03);
            var r1 = Vector256.Load(w1 + k);
            a10 = Vector256.FusedMultiplyAdd(r1, v0, a10); a11 = Vector256.FusedMultiplyAdd(r1, v1, a11);
            a12 = Vector256.FusedMultiplyAdd(r1, v2, a12); a13 = Vector256.FusedMultiplyAdd(r1, v3, a13);
            var r2 = Vector256.Load(w2 + k);
            a20 = Vector256.FusedMultiplyAdd(r2, v0, a20); a21 = Vector256.FusedMultiplyAdd(r2, v1, a21);
            a22 = Vector256.FusedMultiplyAdd(r2, v2, a22); a23 = Vector256.FusedMultiplyAdd(r2, v3, a23);
            var r3 = Vector256.Load(w3 + k);
            a30 = Vector256.FusedMultiplyAdd(r3, v0, a30); a31 = Vector256.FusedMultiplyAdd(r3, v1, a31);
            a32 = Vector256.FusedMultiplyAdd(r3, v2, a32); a33 = Vector256.FusedMultiplyAdd(r3, v3, a33);
        }
        y[0] = Vector256.Sum(a00); y[ys] = Vector256.Sum(a01); y[2 * ys] = Vector256.Sum(a02); y[3 * ys] = Vector256.Sum(a03);
        y[1] = Vector256.Sum(a10); y[ys + 1] = Vector256.Sum(a11); y[2 * ys + 1] = Vector256.Sum(a12); y[3 * ys + 1] = Vector256.Sum(a13);
        y[2] = Vector256.Sum(a20); y[ys + 2] = Vector256.Sum(a21); y[2 * ys + 2] = Vector256.Sum(a22); y[3 * ys + 2] = Vector256.Sum(a23);
        y[3] = Vector256.Sum(a30); y[ys + 3] = Vector256.Sum(a31); y[2 * ys + 3] = Vector256.Sum(a32); y[3 * ys + 3] = Vector256.Sum(a33);
        if (k < cols) AddTail(w, x, cols, k, y, ys);
    }

    /// <summary>Columns past the last full vector, added to the 4×4 block.</summary>
    private static void AddTail(float* w, float* x, int cols, int k0, float* y, long ys)
    {
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < 4; t++)
            {
                float s = 0;
                for (int k = k0; k < cols; k++) s += w[(long)r * cols + k] * x[(long)t * cols + k];
                y[t * ys + r] += s;
            }
    }
}
