namespace FitLM.KvCache;

/// <summary>
/// Keys and values of every layer for positions [0, Capacity), float32, as attention reads them.
/// Rows are KvDim wide (all KV heads of one position side by side).
/// </summary>
public sealed class PlainKvCache
{
    private readonly float[][] _k, _v;
    public int Capacity { get; }
    public int KvDim { get; }
    public int Layers => _k.Length;

    public PlainKvCache(int layers, int capacity, int kvDim)
    {
        Capacity = capacity;
        KvDim = kvDim;
        _k = new float[layers][];
        _v = new float[layers][];
        for (int l = 0; l < layers; l++)
        {
            _k[l] = new float[(long)capacity * kvDim];
            _v[l] = new float[(long)capacity * kvDim];
        }
    }

    public long Bytes => 2L * Layers * Capacity * KvDim * sizeof(float);

    public Span<float> Key(int layer, int pos) => _k[layer].AsSpan(pos * KvDim, KvDim);
    public Span<float> Value(int layer, int pos) => _v[layer].AsSpan(pos * KvDim, KvDim);
    /// <summary>Keys of positions [0, count) of one layer, contiguous.</summary>
    public ReadOnlySpan<float> Keys(int layer, int count) => _k[layer].AsSpan(0, count * KvDim);
    public ReadOnlySpan<float> Values(int layer, int count) => _v[layer].AsSpan(0, count * KvDim);
}
