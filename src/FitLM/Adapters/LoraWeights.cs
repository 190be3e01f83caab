using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Adapters;

/// <summary>One adapter to apply and the scale the user gives it (multiplying the adapter's own alpha / rank).</summary>
public sealed record ScaledAdapter(LoraAdapter Adapter, float Scale = 1f)
{
    /// <summary>The factor B·A is added with: the user's scale times alpha / rank.</summary>
    public float Factor => Scale * Adapter.Scale;
}

/// <summary>
/// A weight provider with LoRA adapters applied at inference: the matrices the adapters change come back as
/// <see cref="LoraMatrix"/> (W x + Σ factor · B (A x)), everything else passes through. The base weights stay as
/// the inner provider holds them (resident, streamed); several adapters may change one matrix.
/// </summary>
public sealed class LoraWeights : IWeightProvider
{
    private readonly IWeightProvider _inner;
    private readonly Dictionary<string, List<LoraMatrix.Term>> _terms = new(StringComparer.Ordinal);

    public IReadOnlyList<ScaledAdapter> Adapters { get; }
    /// <summary>Bytes of the adapters' matrices held (A and Bᵀ, float32).</summary>
    public long AdapterBytes { get; }

    public LoraWeights(IWeightProvider inner, IReadOnlyList<ScaledAdapter> adapters)
    {
        _inner = inner;
        Adapters = adapters;
        AdapterBytes = BytesFor(adapters);
        foreach (var a in adapters)
        {
            if (!float.IsFinite(a.Scale)) throw new FitLMException($"LoRA scale {a.Scale} is not a number");
            foreach (var p in a.Adapter.Pairs)
            {
                if (!inner.Has(p.Name)) throw new FitLMException($"the adapter changes '{p.Name}', which this model does not have as a matrix; the adapter was made for another model");
                var term = new LoraMatrix.Term(p, a.Factor);
                (_terms.TryGetValue(p.Name, out var list) ? list : _terms[p.Name] = []).Add(term);
            }
        }
    }

    /// <summary>Picks up changes made in place to the adapters' B matrices (A is used as it is).</summary>
    public void Refresh()
    {
        foreach (var list in _terms.Values)
            foreach (var t in list) t.Refresh();
    }

    /// <summary>What <paramref name="adapters"/> hold once applied: A, B and the transposed copy of B each matrix multiplies with, float32.</summary>
    public static long BytesFor(IReadOnlyList<ScaledAdapter> adapters) =>
        adapters.Sum(a => a.Adapter.Pairs.Sum(p => (p.A.Length + 2L * p.B.Length) * sizeof(float)));

    public IMatrix Matrix(string name)
    {
        var m = _inner.Matrix(name);
        return _terms.TryGetValue(name, out var terms) ? new LoraMatrix(m, terms) : m;
    }

    /// <summary>The base weights the adapters apply to (their placement may move while the model runs).</summary>
    public IWeightProvider Inner => _inner;

    public float[] Vector(string name) => _inner.Vector(name);
    public bool Has(string name) => _inner.Has(name);
    public long ResidentBytes => _inner.ResidentBytes + AdapterBytes;
    public long? Parameters => _inner.Parameters;
    public IEnumerable<string> Report(ModelConfig config) => _inner.Report(config);
    public long Resize(long weightBytes) => _inner.Resize(weightBytes);

    /// <summary>
    /// The layer's FFN: the inner provider's own when no adapter changes it; dense, from the adapted matrices, when
    /// one does. The caller refuses FFN adapters on a provider that bundles its FFN (prepared models).
    /// </summary>
    public IFeedForward FeedForward(int layer, ModelConfig config)
    {
        string gate = $"blk.{layer}.ffn_gate.weight", up = $"blk.{layer}.ffn_up.weight", down = $"blk.{layer}.ffn_down.weight";
        if (!_terms.ContainsKey(gate) && !_terms.ContainsKey(up) && !_terms.ContainsKey(down)) return _inner.FeedForward(layer, config);
        return FeedForwards.Create(this, layer, config); // this provider's matrices: the adapted ones where adapters are
    }

    public void Dispose() => _inner.Dispose();
}
