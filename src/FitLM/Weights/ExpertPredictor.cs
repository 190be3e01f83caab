using System.Numerics.Tensors;
using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Weights;

/// <summary>
/// Guesses the experts layer l + 1 will route to from layer l's normalized FFN input x (ExpertFlow, EdgeMoE): the
/// residual stream changes little from one layer to the next, so layer l + 1's router applied to x ranks its experts
/// nearly as it will on its own input. With the norm weights given, x is first brought to layer l + 1's scale,
/// x ⊙ w(l + 1) / w(l), undoing layer l's norm weight (the RMS factor is common to all experts and cannot change the
/// ranking). Each token's top (k + margin) experts are predicted, the union over the batch up to a cap.
/// </summary>
public sealed class ExpertPredictor
{
    private readonly IMatrix _router;
    private readonly float[]? _ratio;
    private readonly int _k;
    private float[] _logits = [], _x = [], _top = [];
    private int[] _topIds = [];

    /// <param name="nextRouter">layer l + 1's router [experts × Dim]</param>
    /// <param name="perToken">experts predicted per token: the model's k plus a margin</param>
    /// <param name="normHere">layer l's FFN norm weight (null with <paramref name="normNext"/>: no rescaling)</param>
    /// <param name="normNext">layer l + 1's FFN norm weight</param>
    public ExpertPredictor(IMatrix nextRouter, int perToken, float[]? normHere = null, float[]? normNext = null)
    {
        _router = nextRouter;
        _k = Math.Clamp(perToken, 1, nextRouter.Rows);
        if (normHere != null && normNext != null)
        {
            // A weight of 0 in layer l leaves nothing of that coordinate to rescale: it stays 0.
            _ratio = new float[normHere.Length];
            for (int i = 0; i < _ratio.Length; i++) _ratio[i] = normHere[i] == 0 ? 0 : normNext[i] / normHere[i];
        }
    }

    /// <summary>
    /// Writes the experts predicted for the n tokens of <paramref name="x"/> [n × Dim] into <paramref name="into"/>,
    /// distinct, each token's best first, at most into.Length of them; returns how many.
    /// </summary>
    public int Predict(ReadOnlySpan<float> x, int n, Span<int> into, Span<bool> seen)
    {
        int e = _router.Rows, dim = _router.Cols;
        if (_logits.Length < n * e)
        {
            _logits = new float[n * e];
            if (_ratio != null) _x = new float[n * dim];
        }
        if (_top.Length < _k)
        {
            _top = new float[_k];
            _topIds = new int[_k];
        }
        var input = x[..(n * dim)];
        if (_ratio != null)
        {
            var scaled = _x.AsSpan(0, n * dim);
            for (int t = 0; t < n; t++) TensorPrimitives.Multiply(input.Slice(t * dim, dim), _ratio, scaled.Slice(t * dim, dim));
            input = scaled;
        }
        var logits = _logits.AsSpan(0, n * e);
        _router.Multiply(input, logits, n);
        seen[..e].Clear();
        int count = 0;
        for (int t = 0; t < n && count < into.Length; t++)
        {
            int have = MoeFeedForward.TopK(logits.Slice(t * e, e), _top.AsSpan(0, _k), _topIds.AsSpan(0, _k));
            for (int i = 0; i < have && count < into.Length; i++)
            {
                int j = _topIds[i];
                if (seen[j]) continue;
                seen[j] = true;
                into[count++] = j;
            }
        }
        return count;
    }
}
