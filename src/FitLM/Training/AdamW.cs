namespace FitLM.Training;

/// <summary>
/// AdamW (Loshchilov and Hutter): Adam's bias-corrected moments with weight decay applied to the parameters
/// directly, not through the gradient. The update is written as PyTorch's torch.optim.AdamW computes it, so a run
/// can be compared step by step with the reference.
/// </summary>
public sealed class AdamW
{
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.999f;
    public float Epsilon { get; init; } = 1e-8f;
    public float WeightDecay { get; init; }
    /// <summary>Updates done so far (the t of the bias correction).</summary>
    public long Step { get; set; }

    /// <summary>First and second moments, one pair of arrays per parameter tensor, in the order parameters are given.</summary>
    public IReadOnlyList<(float[] M, float[] V)> Moments => _moments;
    private readonly List<(float[] M, float[] V)> _moments = [];

    public AdamW(IEnumerable<int> parameterLengths)
    {
        foreach (int n in parameterLengths) _moments.Add((new float[n], new float[n]));
    }

    /// <summary>One update of every parameter tensor with its gradient at learning rate <paramref name="lr"/>.</summary>
    public void Update(IReadOnlyList<(float[] Param, float[] Grad)> tensors, float lr)
    {
        if (tensors.Count != _moments.Count) throw new ArgumentException("parameter count changed");
        Step++;
        double bc1 = 1 - Math.Pow(Beta1, Step);
        double bc2Sqrt = Math.Sqrt(1 - Math.Pow(Beta2, Step));
        float stepSize = (float)(lr / bc1);
        float decay = 1f - lr * WeightDecay;
        for (int i = 0; i < tensors.Count; i++)
        {
            var (p, g) = tensors[i];
            var (m, v) = _moments[i];
            for (int j = 0; j < p.Length; j++)
            {
                if (WeightDecay != 0) p[j] *= decay;
                m[j] += (g[j] - m[j]) * (1 - Beta1);
                v[j] = v[j] * Beta2 + (1 - Beta2) * g[j] * g[j];
                float denom = (float)(MathF.Sqrt(v[j]) / bc2Sqrt) + Epsilon;
                p[j] -= stepSize * m[j] / denom;
            }
        }
    }
}

/// <summary>The learning rate at each step: linear warm-up, then constant or a cosine decay to zero at the last step.</summary>
public sealed record LearningRateSchedule(float PeakRate, int WarmupSteps, int TotalSteps, bool Cosine)
{
    public float At(long step)
    {
        if (WarmupSteps > 0 && step < WarmupSteps) return PeakRate * (step + 1) / WarmupSteps;
        if (!Cosine || TotalSteps <= WarmupSteps) return PeakRate;
        double progress = Math.Clamp((double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps), 0, 1);
        return (float)(PeakRate * 0.5 * (1 + Math.Cos(Math.PI * progress)));
    }
}
