using FitLM.Tensors;

namespace FitLM.KvCache;

/// <summary>
/// The KV cache of one sequence, as attention sees it. The model graph hands each layer's new rows to
/// <see cref="Append"/> and asks <see cref="Attend"/> for the attention output; how keys and values are
/// held (float, quantized, rematerialized from X, evicted) is the store's business. Stores draw their memory
/// from <see cref="KvPagePool"/>s that many sequences may share (see <see cref="KvStoreFactory"/>).
/// Calls for one store come from one thread at a time; the store parallelizes inside them.
/// </summary>
public interface IKvStore : IDisposable
{
    /// <summary>Positions [0, Length) have been appended (to every layer).</summary>
    int Length { get; }

    /// <summary>Forgets positions ≥ <paramref name="pos"/>; 0 starts a new sequence and returns every page.</summary>
    void Truncate(int pos);

    /// <summary>
    /// Adds positions [pos, pos + n) of one layer (n = rows.Count). Layers of a batch are appended in order
    /// 0..L-1, each before its <see cref="Attend"/>; pos must equal the positions already held by that layer.
    /// </summary>
    void Append(int layer, int pos, in KvRows rows);

    /// <summary>
    /// Causal attention of queries q [n × QDim] (after RoPE) at positions [pos, pos + n) over this layer's
    /// cache, which already holds them: output [n × QDim], the per-head weighted sums of values.
    /// </summary>
    void Attend(int layer, int pos, int n, ReadOnlySpan<float> q, Span<float> output);

    /// <summary>Bytes this sequence holds now: its pages, plus its share of anything it keeps per token.</summary>
    long Bytes { get; }
}

/// <summary>
/// The rows of n new tokens of one layer, in every form a store may want to keep. K and V are the raw
/// projections X·Wkᵀ and X·Wvᵀ; the store finishes them (bias, k-norm, RoPE) through <see cref="IKvModel"/>.
/// </summary>
public readonly ref struct KvRows(ReadOnlySpan<int> tokens, ReadOnlySpan<float> residual, ReadOnlySpan<float> x,
    ReadOnlySpan<float> k, ReadOnlySpan<float> v)
{
    public int Count => Tokens.Length;
    /// <summary>Token ids [n].</summary>
    public ReadOnlySpan<int> Tokens { get; } = tokens;
    /// <summary>The residual stream entering the layer, before the attention norm [n × Dim].</summary>
    public ReadOnlySpan<float> Residual { get; } = residual;
    /// <summary>The layer input after the attention norm: what Wq, Wk, Wv multiply [n × Dim].</summary>
    public ReadOnlySpan<float> X { get; } = x;
    /// <summary>X·Wkᵀ before bias, k-norm and RoPE [n × KvDim].</summary>
    public ReadOnlySpan<float> K { get; } = k;
    /// <summary>X·Wvᵀ before bias [n × KvDim].</summary>
    public ReadOnlySpan<float> V { get; } = v;
}

/// <summary>
/// What a store needs from the model to turn what it cached into keys and values: the projections, biases,
/// norms and RoPE of each layer. The transformer implements it; a store never sees the rest of the graph.
/// </summary>
public interface IKvModel
{
    KvShape Config { get; }
    /// <summary>The largest position RoPE is tabulated for, plus one.</summary>
    int MaxPositions { get; }
    /// <summary>kRaw = X·Wkᵀ, vRaw = X·Wvᵀ for n rows. Runs on the worker pool: call it from the calling thread, not from a job.</summary>
    void Project(int layer, ReadOnlySpan<float> x, Span<float> kRaw, Span<float> vRaw, int n);
    /// <summary>A raw key row [KvDim] as attention uses it at position pos: bias, per-head k-norm, RoPE, in place.</summary>
    void FinishKey(int layer, Span<float> k, int pos);
    /// <summary>A raw value row [KvDim] as attention uses it: bias, in place.</summary>
    void FinishValue(int layer, Span<float> v);
    /// <summary>X = the layer's attention norm of a residual-stream row.</summary>
    void Normalize(int layer, ReadOnlySpan<float> residual, Span<float> x);
    /// <summary>The residual stream entering layer 0 for a token: its embedding row.</summary>
    void Embed(int token, Span<float> x);
    /// <summary>Wk and Wv of a layer (for the latent basis).</summary>
    IMatrix KeyWeights(int layer);
    IMatrix ValueWeights(int layer);
}
