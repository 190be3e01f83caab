namespace FitLM.KvCache;

/// <summary>
/// The dimensions a KV cache is laid out by: what the stores need of a model's configuration, so the cache does
/// not depend on the model layer above it (a KvShape converts to this implicitly).
/// </summary>
public sealed record KvShape(int Layers, int Dim, int Heads, int KvHeads, int HeadDim)
{
    /// <summary>Width of one key (or value) row over all KV heads.</summary>
    public int KvDim => KvHeads * HeadDim;
    /// <summary>Width of one query row over all heads.</summary>
    public int QDim => Heads * HeadDim;
}
