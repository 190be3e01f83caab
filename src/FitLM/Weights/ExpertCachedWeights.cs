using FitLM.Adapters;
using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Weights;

/// <summary>
/// A mixture of experts whose routed experts live on storage and pass through an expert cache (docs/moe.md): every
/// other weight (attention, norms, routers, shared experts) comes from the inner provider as planned; each layer's
/// experts are an <see cref="ExpertLayerCache"/> of <see cref="SlotsOf"/> slots. The stacked expert tensors are
/// never asked of the inner provider (it would read them whole), only read an expert at a time.
/// </summary>
public sealed class ExpertCachedWeights : IWeightProvider
{
    /// <summary>
    /// Experts predicted per token beyond the model's k. On pycoder-moe (top-4 of 32, the bytes of 8 a layer, 10240 tokens
    /// of pycode-dev decoded one at a time, bench/moe-cache.sh) the predict policy with margins 0, 1, 2 hit 82.6%, 85.5%,
    /// 88.0% and read 1.5, 1.8, 2.1 MiB per token, against 2.2 MiB for the naive policy (every routed expert read): 1
    /// reaches 85% for a fifth fewer bytes than reading everything.
    /// </summary>
    public const int DefaultPredictMargin = 1;

    private readonly IWeightProvider _inner;
    private readonly IModelSource _source;
    private readonly ExpertReader _reader;
    private readonly SortedDictionary<int, ExpertLayerCache> _layers = new();
    private readonly int _margin;
    private readonly bool _rescale;

    public int SlotsPerLayer { get; }
    public ExpertPolicy Policy { get; }
    public ExpertStatistics Statistics { get; }
    /// <summary>Whether experts are read with direct I/O (a GGUF file on storage that takes O_DIRECT).</summary>
    public bool ReadsDirect => _reader.Direct;

    /// <param name="slotsPerLayer">experts of a layer held at a time (at least the model's k, at most its expert count)</param>
    /// <param name="predictMargin">predicting policies: experts read ahead per token beyond the model's k</param>
    /// <param name="rescaleNorms">predicting policies: bring layer l's FFN input to layer l + 1's norm weights before its
    /// router, approximating the residual stream after attention (<see cref="ExpertPredictor"/>). Off: on pycoder-moe it
    /// changed the misses by 0.1% (16333 against 16345 of 96000 uses).</param>
    public ExpertCachedWeights(IWeightProvider inner, IModelSource source, int slotsPerLayer, ExpertPolicy policy,
        int predictMargin = DefaultPredictMargin, bool rescaleNorms = false)
    {
        var c = source.Config;
        if (!c.IsMoe) throw new FitLMException($"{source.Path}: an expert cache needs a mixture of experts, and this model has none");
        _inner = inner;
        _source = source;
        Policy = policy;
        SlotsPerLayer = Math.Clamp(slotsPerLayer, c.ExpertsUsed, c.ExpertCount);
        _margin = Math.Max(0, predictMargin);
        _rescale = rescaleNorms;
        Statistics = new ExpertStatistics(c.Layers);
        _reader = new ExpertReader(source);
    }

    /// <summary>Bytes of one expert (gate, up and down) of layer <paramref name="layer"/>.</summary>
    public static long ExpertBytes(IModelSource source, int layer = 0)
    {
        string p = $"blk.{layer}.";
        return (source.Get(p + "ffn_gate_exps.weight").ByteSize + source.Get(p + "ffn_up_exps.weight").ByteSize
            + source.Get(p + "ffn_down_exps.weight").ByteSize) / source.Config.ExpertCount;
    }

    /// <summary>Slots per layer that <paramref name="cacheBytes"/> hold for every layer, at least k (a token's experts must fit), at most all.</summary>
    public static int SlotsFor(long cacheBytes, IModelSource source)
    {
        var c = source.Config;
        long perLayer = cacheBytes / Math.Max(1, c.Layers);
        long slots = perLayer / Math.Max(1, ExpertBytes(source));
        return (int)Math.Clamp(slots, c.ExpertsUsed, c.ExpertCount);
    }

    /// <summary>The expert cache under <paramref name="weights"/> (LoRA wraps it), or null.</summary>
    public static ExpertCachedWeights? Of(IWeightProvider weights) => weights switch
    {
        ExpertCachedWeights e => e,
        LoraWeights l => Of(l.Inner),
        _ => null,
    };

    /// <summary>The expert stacks are this provider's: reading one through the inner provider would hold it whole.</summary>

    public IMatrix Matrix(string name) => TensorNames.IsExpertStack(name)
        ? throw new InvalidOperationException($"'{name}' is held by the expert cache, an expert at a time")
        : _inner.Matrix(name);

    public float[] Vector(string name) => _inner.Vector(name);
    public bool Has(string name) => _inner.Has(name);
    public long? Parameters => _inner.Parameters;
    public long Resize(long weightBytes) => _inner.Resize(weightBytes);

    /// <summary>The inner provider's weights plus every layer's slots.</summary>
    public long ResidentBytes => _inner.ResidentBytes + CacheBytes + _reader.ScratchBytes;

    /// <summary>Bytes of all the slots of the layers built so far.</summary>
    public long CacheBytes => _layers.Values.Sum(l => l.SlotBytes);

    public IExpertWeights Experts(int layer, ModelConfig config)
    {
        if (_layers.ContainsKey(layer)) throw new InvalidOperationException($"layer {layer}'s experts were already built");
        // The transformer builds its layers in order: the first one built counts the tokens.
        var cache = new ExpertLayerCache(_source, layer, config, SlotsOf(layer, config), Policy, _reader, Statistics, countsTokens: _layers.Count == 0);
        _layers[layer] = cache;
        if (Policy is ExpertPolicy.Predict or ExpertPolicy.PredictLru)
        {
            if (_layers.TryGetValue(layer - 1, out var before)) before.Precede(cache, Predictor(layer - 1, layer, config));
        }
        return cache;
    }

    /// <summary>
    /// Slots of layer <paramref name="layer"/>. Without prediction every layer has <see cref="SlotsPerLayer"/>. With it,
    /// the same total is shared unevenly: a layer that the one before predicts keeps k + (slots - k) / 2 (its read ahead
    /// fills k + margin of them), and the first layer, which nothing predicts, takes what they give up, up to every expert.
    /// On pycoder-moe (8 a layer, k = 4: 14 for the first layer, 6 for the others; predict, margin 0, 6000 tokens of
    /// pycode-dev) the first layer's hit rate went from 60% to 88% and the others' fell 1–6 points: 82.9% in all against
    /// 77.2% with 8 everywhere.
    /// </summary>
    public int SlotsOf(int layer, ModelConfig c)
    {
        int s = SlotsPerLayer;
        if (Policy is not (ExpertPolicy.Predict or ExpertPolicy.PredictLru) || c.Layers < 2) return s;
        int predicted = c.ExpertsUsed + (s - c.ExpertsUsed) / 2;
        int first = (int)Math.Min(c.ExpertCount, s + (long)(c.Layers - 1) * (s - predicted));
        if (layer == 0) return first;
        // Where the first layer's share is capped at every expert, the others give up only what it took (rounded up: never more than the total).
        return s - (first - s + c.Layers - 2) / (c.Layers - 1);
    }

    /// <summary>Layer <paramref name="next"/>'s router as seen from layer <paramref name="from"/> (its norm weights undone when the model has them).</summary>
    private ExpertPredictor Predictor(int from, int next, ModelConfig c)
    {
        var router = _inner.Matrix($"blk.{next}.ffn_gate_inp.weight");
        string here = $"blk.{from}.ffn_norm.weight", there = $"blk.{next}.ffn_norm.weight";
        if (!_rescale || !_inner.Has(here) || !_inner.Has(there)) return new ExpertPredictor(router, c.ExpertsUsed + _margin);
        return new ExpertPredictor(router, c.ExpertsUsed + _margin, Norm(_inner.Vector(here), c), Norm(_inner.Vector(there), c));
    }

    /// <summary>A norm weight as the model multiplies by it (Gemma-style files store w for 1 + w).</summary>
    private static float[] Norm(float[] w, ModelConfig c)
    {
        if (c.NormWeightOffset == 0) return w;
        var shifted = (float[])w.Clone();
        System.Numerics.Tensors.TensorPrimitives.Add(shifted, c.NormWeightOffset, shifted);
        return shifted;
    }

    public IEnumerable<string> Report(ModelConfig config)
    {
        int first = SlotsOf(0, config), others = SlotsOf(1, config);
        string slots = first == others ? $"{first} of {config.ExpertCount} per layer" : $"{first} of {config.ExpertCount} in layer 0, {others} in the others";
        yield return Statistics.Line(Policy, slots, CacheBytes);
        foreach (var line in _inner.Report(config)) yield return line;
    }

    public void Dispose()
    {
        foreach (var l in _layers.Values) l.Drain();
        _reader.Dispose();
        foreach (var l in _layers.Values) l.Dispose();
        _layers.Clear();
        _inner.Dispose();
    }
}
