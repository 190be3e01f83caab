using System.Numerics.Tensors;

namespace FitLM.Generation;

/// <summary>
/// Picks the next token from logits, in llama.cpp's default order: logit bias → repetition penalty → frequency
/// and presence penalties → top-k → top-p → min-p → temperature → draw. <see cref="Penalize"/> and
/// <see cref="Pick"/> are the two halves, so a caller can read the penalized logits (logprobs) between them.
/// Buffers are allocated once per vocabulary size, not per token.
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
        if (options.LogitBias != null)
            foreach (int id in options.LogitBias.Keys)
                if (id >= vocab) throw new FitLMException($"logit bias for token {id}: outside the vocabulary (0..{vocab - 1})");
        _o = options;
        _rng = options.Seed >= 0 ? new Random(options.Seed) : new Random();
        _idx = new int[vocab];
        _p = new float[vocab];
    }

    /// <summary>Penalizes, then picks.</summary>
    /// <param name="logits">Modified in place by the bias and penalties.</param>
    /// <param name="history">Tokens seen so far (prompt and generated), newest last.</param>
    /// <param name="generated">How many of the last tokens of <paramref name="history"/> were generated (the frequency and presence penalties look at those).</param>
    public int Sample(Span<float> logits, ReadOnlySpan<int> history, int generated = 0)
    {
        Penalize(logits, history, generated);
        return Pick(logits);
    }

    /// <summary>Applies the logit bias, the repetition penalty (last RepeatLastN of history) and the frequency and presence penalties (generated tokens) in place.</summary>
    public void Penalize(Span<float> logits, ReadOnlySpan<int> history, int generated = 0)
    {
        if (_o.LogitBias != null)
            foreach (var (id, bias) in _o.LogitBias) logits[id] += bias;
        if (_o.RepeatPenalty != 1f && _o.RepeatLastN > 0)
        {
            var window = history.Length > _o.RepeatLastN ? history[^_o.RepeatLastN..] : history;
            // Penalize each distinct token once, however often it occurred (as llama.cpp does).
            foreach (int id in window)
            {
                if (!FirstSight(id, logits.Length)) continue;
                logits[id] = logits[id] > 0 ? logits[id] / _o.RepeatPenalty : logits[id] * _o.RepeatPenalty;
            }
            ClearMarks(window);
        }
        if ((_o.FrequencyPenalty != 0 || _o.PresencePenalty != 0) && generated > 0)
        {
            // OpenAI's definition: logit -= count * frequency + (count > 0) * presence, over the tokens generated so far.
            var mine = history[^Math.Min(generated, history.Length)..];
            foreach (int id in mine)
            {
                if ((uint)id >= (uint)logits.Length) continue;
                logits[id] -= _o.FrequencyPenalty;
                if (FirstSight(id, logits.Length)) logits[id] -= _o.PresencePenalty;
            }
            ClearMarks(mine);
        }
    }

    /// <summary>Marks a token in the scratch buffer; true the first time (distinct tokens of a window). <see cref="ClearMarks"/> resets.</summary>
    private bool FirstSight(int id, int vocab)
    {
        if ((uint)id >= (uint)vocab || float.IsNaN(_p[id])) return false;
        _p[id] = float.NaN;
        return true;
    }

    private void ClearMarks(ReadOnlySpan<int> ids)
    {
        foreach (int id in ids)
            if ((uint)id < (uint)_p.Length) _p[id] = 0;
    }

    /// <summary>
    /// log Σ exp(logits): a token's log-probability under the softmax of <paramref name="logits"/> is its logit
    /// minus this. Uses the pick buffer, so call it between <see cref="Penalize"/> and <see cref="Pick"/>.
    /// </summary>
    public float LogSumExp(ReadOnlySpan<float> logits)
    {
        float max = TensorPrimitives.Max(logits);
        var e = _p.AsSpan(0, logits.Length);
        TensorPrimitives.Subtract(logits, max, e);
        TensorPrimitives.Exp(e, e);
        return max + (float)Math.Log(TensorPrimitives.Sum(e));
    }

    /// <summary>Top-k, top-p, min-p, temperature, draw (greedy at temperature 0). Does not change <paramref name="logits"/>.</summary>
    public int Pick(ReadOnlySpan<float> logits)
    {
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
