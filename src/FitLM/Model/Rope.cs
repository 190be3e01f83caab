namespace FitLM.Model;

/// <summary>Rotary position embedding: a cos/sin table per position and frequency, applied in place.</summary>
public sealed class Rope
{
    private readonly float[] _cos, _sin;
    private readonly int _half;
    public RopeStyle Style { get; }
    public int Dims { get; }
    public int MaxPositions { get; }
    /// <summary>cos of every position's angles, [position × Dims/2] (what a GPU backend uploads).</summary>
    internal ReadOnlySpan<float> CosTable => _cos;
    /// <summary>sin of every position's angles, [position × Dims/2].</summary>
    internal ReadOnlySpan<float> SinTable => _sin;

    /// <param name="freqFactors">Optional per-frequency divisors (GGUF rope_freqs.weight, Llama 3.1 scaling).</param>
    public Rope(ModelConfig c, int maxPositions, float[]? freqFactors = null)
    {
        Style = c.RopeStyle;
        Dims = c.RopeDims;
        _half = Dims / 2;
        MaxPositions = maxPositions;
        var freq = new double[_half];
        for (int i = 0; i < _half; i++)
        {
            double f = Math.Pow(c.RopeTheta, -2.0 * i / Dims);
            if (c.RopeLlama3 is { } s) f = Llama3Scale(f, s);
            if (freqFactors != null) f /= freqFactors[i];
            freq[i] = f / c.RopeLinearFactor;
        }
        _cos = new float[(long)maxPositions * _half];
        _sin = new float[(long)maxPositions * _half];
        for (int p = 0; p < maxPositions; p++)
            for (int i = 0; i < _half; i++)
            {
                // Angles in float32 as the peers compute them (pos * inv_freq in fp32), then cos/sin.
                float angle = p * (float)freq[i];
                _cos[(long)p * _half + i] = MathF.Cos(angle);
                _sin[(long)p * _half + i] = MathF.Sin(angle);
            }
    }

    private static double Llama3Scale(double freq, Llama3RopeScaling s)
    {
        double lowWavelen = s.OriginalContext / s.LowFreqFactor;
        double highWavelen = s.OriginalContext / s.HighFreqFactor;
        double wavelen = 2 * Math.PI / freq;
        if (wavelen < highWavelen) return freq;
        if (wavelen > lowWavelen) return freq / s.Factor;
        double smooth = (s.OriginalContext / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
        return (1 - smooth) * freq / s.Factor + smooth * freq;
    }

    /// <summary>Rotates each of <paramref name="heads"/> heads (headDim apart) of <paramref name="x"/> for position <paramref name="pos"/>.</summary>
    public void Apply(Span<float> x, int heads, int headDim, int pos) => Rotate(x, heads, headDim, pos, 1f);

    /// <summary>
    /// The transpose of <see cref="Apply"/> (rotation by the opposite angles): what the backward pass applies to a
    /// gradient, since RoPE is a rotation and its Jacobian is orthogonal.
    /// </summary>
    public void ApplyTransposed(Span<float> x, int heads, int headDim, int pos) => Rotate(x, heads, headDim, pos, -1f);

    private void Rotate(Span<float> x, int heads, int headDim, int pos, float direction)
    {
        if ((uint)pos >= (uint)MaxPositions) throw new FitLMException($"position {pos} is beyond the context ({MaxPositions})");
        var cos = _cos.AsSpan(pos * _half, _half);
        var sin = _sin.AsSpan(pos * _half, _half);
        for (int h = 0; h < heads; h++)
        {
            var v = x.Slice(h * headDim, headDim);
            if (Style == RopeStyle.Interleaved)
            {
                for (int i = 0; i < _half; i++)
                {
                    float a = v[2 * i], b = v[2 * i + 1], sn = direction * sin[i];
                    v[2 * i] = a * cos[i] - b * sn;
                    v[2 * i + 1] = a * sn + b * cos[i];
                }
            }
            else
            {
                for (int i = 0; i < _half; i++)
                {
                    float a = v[i], b = v[i + _half], sn = direction * sin[i];
                    v[i] = a * cos[i] - b * sn;
                    v[i + _half] = b * cos[i] + a * sn;
                }
            }
        }
    }
}
