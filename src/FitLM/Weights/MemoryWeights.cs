using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;
using FitLM.Runtime;

namespace FitLM.Weights;

/// <summary>Weights held in memory by name (the compressor's conventional tensors while it scores block orders).</summary>
internal sealed class MemoryWeights : IWeightProvider
{
    private readonly Dictionary<string, ResidentMatrix> _matrices = new(StringComparer.Ordinal);
    private readonly Dictionary<string, float[]> _vectors = new(StringComparer.Ordinal);

    public void AddMatrix(string name, GgmlType type, int rows, int cols, ReadOnlySpan<byte> data)
    {
        var buf = new NativeBuffer(data.Length);
        data.CopyTo(buf.Span);
        _matrices[name] = new ResidentMatrix(name, type, rows, cols, buf);
    }

    public void AddVector(string name, float[] v) => _vectors[name] = v;

    public IMatrix Matrix(string name) =>
        _matrices.TryGetValue(name, out var m) ? m : throw new FitLMException($"tensor '{name}' is missing");

    public float[] Vector(string name) =>
        _vectors.TryGetValue(name, out var v) ? v : throw new FitLMException($"tensor '{name}' is missing");

    public bool Has(string name) => _matrices.ContainsKey(name) || _vectors.ContainsKey(name);

    public long ResidentBytes => _matrices.Values.Sum(m => m.Bytes) + _vectors.Values.Sum(v => 4L * v.Length);

    public void Dispose()
    {
        foreach (var m in _matrices.Values) m.Dispose();
        _matrices.Clear();
    }
}
