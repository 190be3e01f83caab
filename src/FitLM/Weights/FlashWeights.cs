using FitLM.Runtime;
using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;

namespace FitLM.Weights;

/// <summary>
/// Weights of a prepared (FFN-bundled) model: attention and everything else come from the inner provider
/// (resident or streamed as planned); each layer's FFN is a <see cref="FlashFeedForward"/> that reads only the
/// neurons its selector chooses, through a window cache.
/// </summary>
public sealed class FlashWeights : IWeightProvider
{
    private readonly IWeightProvider _inner;
    private readonly IModelSource _source;
    private readonly INeuronSelector _selector;
    private readonly int _windowTokens;
    private readonly IoQueue _io = new(32);
    private readonly Dictionary<string, DirectFile> _files = new();
    private readonly List<FlashFeedForward> _layers = new();
    private readonly NeuronAudit? _audit;

    /// <param name="windowTokens">neurons used by this many previous tokens stay cached (0: none)</param>
    /// <param name="audit">measure the selector's recall against the true activations (slow; see <see cref="NeuronAudit"/>)</param>
    public FlashWeights(IWeightProvider inner, IModelSource source, INeuronSelector selector, int windowTokens, bool audit = false)
    {
        _inner = inner;
        _source = source;
        _selector = selector;
        _windowTokens = windowTokens;
        _audit = audit ? new NeuronAudit(source) : null;
    }

    public IReadOnlyList<FlashFeedForward> Layers => _layers;
    public bool Audited => _audit != null;
    public INeuronSelector Selector => _selector;

    public IMatrix Matrix(string name) => _inner.Matrix(name);
    public float[] Vector(string name) => _inner.Vector(name);
    public bool Has(string name) => _inner.Has(name);
    public long ResidentBytes => _inner.ResidentBytes + _layers.Sum(l => l.WindowBytes);

    /// <summary>
    /// The FFN statistics over every token and layer: neurons chosen, held in the window cache and read fresh,
    /// each as a share of the layer's neurons per token, and the recall when measured.
    /// </summary>
    public IEnumerable<string> Report(ModelConfig config)
    {
        if (_layers.Count == 0) yield break;
        double slots = Math.Max(1, _layers.Sum(l => l.Steps) * (double)config.FfnDim);
        string recall = Audited ? $", recall {_layers.Sum(l => l.AuditCaught) / (double)Math.Max(1, _layers.Sum(l => l.AuditImportant)):F3}" : "";
        string what = _selector is PredictedNeurons ? "predicted" : "chosen";
        yield return $"ffn: {what} {100 * _layers.Sum(l => l.NeuronsUsed) / slots:F1}% of neurons, window holds {100 * _layers.Sum(l => l.NeuronsHeld) / slots:F1}%, " +
            $"fresh {100 * _layers.Sum(l => l.NeuronsRead) / slots:F2}%/token{recall} ({ProcessMemory.Format(_layers.Sum(l => l.BytesRead))} read, " +
            $"window buffers {ProcessMemory.Format(_layers.Sum(l => l.WindowBytes))})";
    }

    public IFeedForward FeedForward(int layer, ModelConfig config)
    {
        var t = _source.Get($"blk.{layer}.ffn_bundle.weight");
        var loc = _source.Locate(t);
        if (!_files.TryGetValue(loc.File, out var file)) _files[loc.File] = file = DirectFile.Open(loc.File);
        var ffn = new FlashFeedForward(layer, config, t.Type, file, loc.Offset, _io, _selector, _windowTokens,
            FlashFeedForward.Capacity(config, _selector, _windowTokens), _audit);
        _layers.Add(ffn);
        return ffn;
    }

    public void Dispose()
    {
        _io.Dispose();
        foreach (var l in _layers) l.Dispose();
        foreach (var f in _files.Values) f.Dispose();
        _inner.Dispose();
    }
}
