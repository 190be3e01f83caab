using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Kernels;

/// <summary>
/// The bulk fp16 rounding of activation scales (<see cref="HalfRounding"/>) gives what <c>(float)(Half)v</c> gives, the
/// scalar reference's rounding, for every kind of float: ties, subnormal halves, overflow to infinity, NaN; and the
/// vector q8_0 quantizer that uses it still equals the scalar one.
/// </summary>
public unsafe class HalfRoundingTests
{
    [Fact]
    public void EqualsOneValueAtATimeConversion_OverASweepOfAllFloats()
    {
        // Every 4099th bit pattern (about a million floats, every exponent) plus the edges of fp16's range.
        var values = new List<float>();
        for (long bits = 0; bits <= uint.MaxValue; bits += 4099) values.Add(BitConverter.Int32BitsToSingle((int)(uint)bits));
        foreach (float f in new[] { 0f, -0f, 65504f, 65519.99f, 65520f, -65520f, 6.1035156e-5f, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f,
            1.0004883f, 1.0009766f, 1.0014648f, float.Epsilon, float.MaxValue, float.PositiveInfinity, float.NegativeInfinity, float.NaN })
            values.Add(f);
        var expected = values.Select(v => (float)(Half)v).ToArray();
        var actual = values.ToArray();
        fixed (float* p = actual) HalfRounding.Round(p, actual.Length);
        for (int i = 0; i < actual.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]) || float.IsNaN(expected[i]) && float.IsNaN(actual[i]),
                $"{values[i]:R} (0x{BitConverter.SingleToInt32Bits(values[i]):X8}): (Half) gives {expected[i]:R}, the bulk rounding {actual[i]:R}");
    }

    [Fact]
    public void VectorQ8_0EqualsScalarQ8_0_WithTinyAndHugeScales()
    {
        if (!ActivationQuant.VectorSupported) return;   // no AVX2: the scalar quantizer is the only path
        var rng = new Random(7);
        foreach (float scale in new[] { 1e-9f, 3e-6f, 1f, 1000f, 9e6f })
        {
            const int cols = 32 * 300, n = 3;   // more blocks than one rounding chunk
            var x = new float[cols * n];
            for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
            using var vec = new QuantizedActivations();
            using var sca = new QuantizedActivations();
            fixed (float* px = x)
            {
                ActivationQuant.Quantize(ActFormat.Q8_0, px, cols, n, vec, vector: true);
                ActivationQuant.Quantize(ActFormat.Q8_0, px, cols, n, sca, vector: false);
            }
            for (int t = 0; t < n; t++)
            {
                ActRow a = vec.Row(t), b = sca.Row(t);
                for (int k = 0; k < cols; k++) Assert.Equal(b.Q[k], a.Q[k]);
                for (int blk = 0; blk < cols / 32; blk++)
                {
                    Assert.Equal(b.D[blk], a.D[blk]);
                    Assert.Equal(b.S[blk], a.S[blk]);
                    Assert.Equal(b.Sum[blk], a.Sum[blk]);
                }
            }
        }
    }
}
