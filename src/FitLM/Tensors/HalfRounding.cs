using System.Numerics.Tensors;

namespace FitLM.Tensors;

/// <summary>
/// Floats rounded to fp16 precision (to nearest even, as F16C's vcvtps2ph and GGML_FP32_TO_FP16) and back, many at a
/// time: <see cref="TensorPrimitives"/>' vectorized conversions give what <c>(float)(Half)v</c> gives one value at a
/// time, without a call per value.
/// </summary>
internal static unsafe class HalfRounding
{
    private const int Chunk = 256;

    /// <summary>Rounds <paramref name="n"/> floats at <paramref name="v"/> to the nearest fp16 value, in place.</summary>
    public static void Round(float* v, int n)
    {
        Span<Half> h = stackalloc Half[Chunk];
        for (int i = 0; i < n; i += Chunk)
        {
            int m = Math.Min(Chunk, n - i);
            var span = new Span<float>(v + i, m);
            TensorPrimitives.ConvertToHalf(span, h[..m]);
            TensorPrimitives.ConvertToSingle(h[..m], span);
        }
    }
}
