using System.Numerics.Tensors;

namespace FitLM.Generation;

/// <summary>
/// Picks the next token from logits, in llama.cpp's default order: repetition penalty → top-k → top-p →
/// min-p → temperature → draw. Buffers are allocated once per vocabulary size, not per token.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _o;
    private readonly Random _rng;
    private readonly int[] _idx;
    private readonly float[] _p;

    public Sampler(SamplingOptions options, int vocab)
    {
        options.Validate();
        _o = options;
        _rng = options.Seed >= 0 ? new Random(options.Seed) : new Random();
        _idx = new int[vocab];
        _p = new float[vocab];
    }

    /// <param name="logits">Modified in place by the repetition penalty.</param>
    /// <param name="recent">Tokens seen so far (prompt and generated), newest last.</param>
    public int Sample(Span<float> logits, ReadOnlySpan<int> recent)
    {
        if (_o.RepeatPenalty != 1f && _o.RepeatLastN > 0)
        {
            var window = recent.Length > _o.RepeatLastN ? recent[^_o.RepeatLastN..] : recent;
            // Penalize each distinct token once, however often it occurred (as llama.cpp does).
            foreach (int id in window)
            {
                if ((uint)id >= (uint)logits.Length || float.IsNaN(_p[id])) continue;
                logits[id] = logits[id] > 0 ? logits[id] / _o.RepeatPenalty : logits[id] * _o.RepeatPenalty;
                _p[id] = float.NaN;
            }
            foreach (int id in window)
                if ((uint)id < (uint)_p.Length) _p[id] = 0;
        }
        if (_o.Temperature <= 0) return TensorPrimitives.IndexOfMax(logits);

        int n = logits.Length;
        for (int i = 0; i < n; i++) _idx[i] = i;
        var idx = _idx.AsSpan(0, n);
        var lg = logits;
        // Sort candidates by logit, descending; with top-k only the first k matter.
        int k = _o.TopK > 0 ? Math.Min(_o.TopK, n) : n;
        var keys = _p.AsSpan(0, n);
        for (int i = 0; i < n; i++) keys[i] = -lg[i];
        keys.Sort(idx);
        var cand = idx[..k];

        // Softmax over the candidates (at temperature 1 for top-p/min-p, as llama.cpp filters before temp).
        float max = lg[cand[0]];
        var p = _p.AsSpan(0, k);
        for (int i = 0; i < k; i++) p[i] = MathF.Exp(lg[cand[i]] - max);
        float sum = TensorPrimitives.Sum(p);
        TensorPrimitives.Divide(p, sum, p);

        int keep = k;
        if (_o.TopP < 1f)
        {
            float cum = 0;
            for (int i = 0; i < k; i++)
            {
                cum += p[i];
                if (cum >= _o.TopP) { keep = i + 1; break; }
            }
        }
        if (_o.MinP > 0f)
        {
            float threshold = p[0] * _o.MinP;
            int m = 1;
            while (m < keep && p[m] >= threshold) m++;
            keep = m;
        }

        // Temperature, then draw.
        float inv = 1f / _o.Temperature;
        for (int i = 0; i < keep; i++) p[i] = MathF.Exp((lg[cand[i]] - max) * inv);
        float total = TensorPrimitives.Sum(p[..keep]);
        double r = _rng.NextDouble() * total;
        double acc = 0;
        for (int i = 0; i < keep; i++)
        {
            acc += p[i];
            if (r < acc) return cand[i];
        }
        return cand[keep - 1];
    }
}
