using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>One routed expert's three matrices.</summary>
public readonly record struct Expert(IMatrix Gate, IMatrix Up, IMatrix Down);

/// <summary>
/// One layer's routed experts as the mixture-of-experts block reads them. Where they live (rows of stacked
/// tensors in memory, an expert cache over storage) is the provider's business; the block says which experts a
/// batch runs before it asks for any, so a cache can load the missing ones (and predict the next layer's).
/// </summary>
public interface IExpertWeights
{
    int Count { get; }
    /// <summary>
    /// The experts the current batch runs, ascending and distinct, before any <see cref="Get"/>; <paramref name="x"/>
    /// is the layer's normalized FFN input [n × Dim] (a predictor may read it). Valid until the next call.
    /// </summary>
    void Prepare(ReadOnlySpan<int> experts, ReadOnlySpan<float> x, int n);
    /// <summary>Expert <paramref name="expert"/>'s matrices; it must be one of those the last <see cref="Prepare"/> named.</summary>
    Expert Get(int expert);
}

/// <summary>Experts as row ranges of the stacked tensors [experts × rows] a provider holds in memory.</summary>
public sealed class StackedExperts : IExpertWeights
{
    private readonly Expert[] _experts;

    public StackedExperts(IMatrix gate, IMatrix up, IMatrix down, ModelConfig c)
    {
        int e = c.ExpertCount, f = c.ExpertFfnDim;
        if (gate.Rows != e * f || up.Rows != e * f || down.Rows != e * c.Dim)
            throw new FitLMException($"tensor '{gate.Name}': {gate.Rows} rows do not hold {e} experts of {f}");
        _experts = new Expert[e];
        for (int i = 0; i < e; i++)
            _experts[i] = new Expert(gate.RowSlice(i * f, f), up.RowSlice(i * f, f), down.RowSlice(i * c.Dim, c.Dim));
    }

    public int Count => _experts.Length;
    public void Prepare(ReadOnlySpan<int> experts, ReadOnlySpan<float> x, int n) { }
    public Expert Get(int expert) => _experts[expert];
}

/// <summary>
/// A mixture-of-experts feed-forward block (Mixtral, Qwen2/3-MoE, OLMoE): the router's logits → softmax over
/// all experts → the top k per token (ties to the lower number) → their weights, renormalized to sum to 1 where
/// the model says so; each chosen expert runs its gated FFN on the rows of the tokens that chose it (one
/// matrix product per expert per batch), and the weighted outputs add up in expert order. A shared expert
/// (Qwen2-MoE) adds sigmoid(g · x) times its own FFN. Routing is exact: whatever a cache predicts, the
/// experts that run are the router's.
/// </summary>
public sealed class MoeFeedForward : IFeedForward
{
    private readonly int _layer;
    private readonly ModelConfig _c;
    private readonly IMatrix _router;
    private readonly IExpertWeights _experts;
    private readonly DenseFeedForward? _shared;
    private readonly float[]? _sharedGate;

    // Scratch, grown to the largest batch once: router logits, each token's chosen experts and weights, the rows
    // of each expert (CSR by expert), gathered inputs and outputs.
    private float[] _logits = [], _weights = [], _xe = [], _ye = [];
    private int[] _chosen = [], _rows = [], _rowSlot = [];
    private readonly int[] _rowStart, _used, _count;

    public MoeFeedForward(int layer, ModelConfig c, IMatrix router, IExpertWeights experts, DenseFeedForward? shared, float[]? sharedGate)
    {
        _layer = layer;
        _c = c;
        _router = router;
        _experts = experts;
        _shared = shared;
        _sharedGate = sharedGate;
        if (router.Rows != c.ExpertCount || experts.Count != c.ExpertCount)
            throw new FitLMException($"layer {layer}: the router has {router.Rows} outputs and the layer {experts.Count} experts, but the model has {c.ExpertCount}");
        _rowStart = new int[c.ExpertCount + 1];
        _used = new int[c.ExpertCount];
        _count = new int[c.ExpertCount];
    }

    /// <summary>The experts of this layer, for reports and caches.</summary>
    public IExpertWeights Experts => _experts;
    public int Layer => _layer;

    private void Grow(int n)
    {
        int e = _c.ExpertCount, k = _c.ExpertsUsed, dim = _c.Dim;
        if (_logits.Length >= n * e) return;
        _logits = new float[n * e];
        _weights = new float[n * k];
        _chosen = new int[n * k];
        _rows = new int[n * k];
        _rowSlot = new int[n * k];
        _xe = new float[n * dim];
        _ye = new float[n * dim];
    }

    public void Forward(ReadOnlySpan<float> x, Span<float> y, int n, Span<float> hb, Span<float> hb2)
    {
        int e = _c.ExpertCount, k = _c.ExpertsUsed, dim = _c.Dim;
        Grow(n);
        var logits = _logits.AsSpan(0, n * e);
        _router.Multiply(x[..(n * dim)], logits, n);
        Route(logits, n);

        // Rows of each expert, in token order: counting sort of the (token, slot) choices by expert.
        var start = _rowStart.AsSpan();
        start.Clear();
        for (int i = 0; i < n * k; i++) start[_chosen[i] + 1]++;
        int usedCount = 0;
        for (int j = 0; j < e; j++)
        {
            if (start[j + 1] > 0) _used[usedCount++] = j;
            start[j + 1] += start[j];
        }
        var counts = _count.AsSpan();
        counts.Clear();
        for (int t = 0; t < n; t++)
            for (int s = 0; s < k; s++)
            {
                int i = t * k + s, j = _chosen[i];
                int at = start[j] + counts[j]++;
                _rows[at] = t;
                _rowSlot[at] = i;
            }

        _experts.Prepare(_used.AsSpan(0, usedCount), x[..(n * dim)], n);
        y[..(n * dim)].Clear();
        for (int u = 0; u < usedCount; u++)
        {
            int j = _used[u], r0 = start[j], m = start[j + 1] - r0;
            var xe = _xe.AsSpan(0, m * dim);
            for (int r = 0; r < m; r++) x.Slice(_rows[r0 + r] * dim, dim).CopyTo(xe.Slice(r * dim, dim));
            var ex = _experts.Get(j);
            int f = ex.Gate.Rows;
            ex.Gate.Multiply(xe, hb, m);
            ex.Up.Multiply(xe, hb2, m);
            var h = hb[..(m * f)];
            Activations.Apply(h, _c.Activation);
            TensorPrimitives.Multiply(h, hb2[..(m * f)], h);
            var ye = _ye.AsSpan(0, m * dim);
            ex.Down.Multiply(h, ye, m);
            for (int r = 0; r < m; r++)
            {
                var yt = y.Slice(_rows[r0 + r] * dim, dim);
                TensorPrimitives.MultiplyAdd(ye.Slice(r * dim, dim), _weights[_rowSlot[r0 + r]], yt, yt);
            }
        }

        if (_shared != null)
        {
            var ys = _ye.AsSpan(0, n * dim);
            _shared.Forward(x[..(n * dim)], ys, n, hb, hb2);
            for (int t = 0; t < n; t++)
            {
                float g = 1f / (1f + MathF.Exp(-TensorPrimitives.Dot(_sharedGate, x.Slice(t * dim, dim))));
                var yt = y.Slice(t * dim, dim);
                TensorPrimitives.MultiplyAdd(ys.Slice(t * dim, dim), g, yt, yt);
            }
        }
    }

    /// <summary>Each token's top-k experts and their weights from its router logits (softmax over all experts first).</summary>
    private void Route(Span<float> logits, int n)
    {
        int e = _c.ExpertCount, k = _c.ExpertsUsed;
        for (int t = 0; t < n; t++)
        {
            var p = logits.Slice(t * e, e);
            TensorPrimitives.SoftMax(p, p);
            var chosen = _chosen.AsSpan(t * k, k);
            var w = _weights.AsSpan(t * k, k);
            TopK(p, w, chosen);
            if (_c.ExpertWeightsNorm)
            {
                float sum = TensorPrimitives.Sum(w);
                if (sum > 0) TensorPrimitives.Divide(w, sum, w);
            }
        }
    }

    /// <summary>
    /// The k = <paramref name="values"/>.Length largest of <paramref name="scores"/> (best first) and their indices, by
    /// insertion: k is small (2–8); strict &gt; keeps the lower index first among equals. Returns how many were found
    /// (fewer than k only when there are fewer scores).
    /// </summary>
    public static int TopK(ReadOnlySpan<float> scores, Span<float> values, Span<int> indices)
    {
        int k = values.Length, have = 0;
        for (int j = 0; j < scores.Length; j++)
        {
            float v = scores[j];
            if (have == k && v <= values[k - 1]) continue;
            int at = have < k ? have++ : k - 1;
            while (at > 0 && v > values[at - 1])
            {
                values[at] = values[at - 1];
                indices[at] = indices[at - 1];
                at--;
            }
            values[at] = v;
            indices[at] = j;
        }
        return have;
    }
}
