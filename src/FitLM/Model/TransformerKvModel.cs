using FitLM.KvCache;
using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>
/// Keys and values from the raw projections: what a KV store asks of the model (see <see cref="IKvModel"/>), over host
/// rows with the CPU backend's row operations. A transformer on a device has no weights here: its empty CPU store
/// reads only the shape.
/// </summary>
internal sealed class TransformerKvModel(ModelConfig config, int maxPositions, TransformerWeights? weights, CpuForwardBackend? cpu, ForwardContext? context,
    int maxBatch) : IKvModel
{
    public KvShape Config => config;
    public int MaxPositions => maxPositions;

    private TransformerLayer Layer(int layer) => weights!.Layers[layer];

    /// <summary>Fused: the whole product, in rows the pass's scratch holds (n ≤ MaxBatch per call from the stores).</summary>
    public void Project(int layer, ReadOnlySpan<float> x, Span<float> kRaw, Span<float> vRaw, int n) =>
        cpu!.ProjectKv(Layer(layer), x, kRaw, vRaw, n, context!.Qkv, maxBatch);

    public void FinishKey(int layer, Span<float> k, int pos) => cpu!.FinishKey(Layer(layer), k, pos);

    public void FinishValue(int layer, Span<float> v)
    {
        if (Layer(layer).Bv is { } b) System.Numerics.Tensors.TensorPrimitives.Add(v, b, v);
    }

    public void Normalize(int layer, ReadOnlySpan<float> residual, Span<float> x) =>
        CpuForwardBackend.RmsNorm(residual, Layer(layer).AttnNorm, x, config.RmsEps);

    public void Embed(int token, Span<float> x) => cpu!.EmbedRow(weights!.TokenEmbedding, token, x);
    public IMatrix KeyWeights(int layer) => Layer(layer).Wk ?? throw Fused();
    public IMatrix ValueWeights(int layer) => Layer(layer).Wv ?? throw Fused();
    private FitLMException Fused() => new($"{config.Architecture} fuses Q, K and V into one matrix; --kv xquant needs K and V apart (use f16, q8_0, kivi4 or h2o)");
}
