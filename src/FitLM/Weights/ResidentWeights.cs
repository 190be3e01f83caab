using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;
using FitLM.Runtime;

namespace FitLM.Weights;

/// <summary>All weights read into memory once, in the type they are stored in.</summary>
public sealed class ResidentWeights : IWeightProvider
{
    private readonly IModelSource _source;
    private readonly Dictionary<string, ResidentMatrix> _matrices = new();
    private readonly Dictionary<string, float[]> _vectors = new();

    public ResidentWeights(IModelSource source) => _source = source;

    public long ResidentBytes => _matrices.Values.Sum(m => m.Bytes) + _vectors.Values.Sum(v => (long)v.Length * 4);

    public bool Has(string name) => _source.Find(name) != null;

    public IMatrix Matrix(string name)
    {
        if (_matrices.TryGetValue(name, out var m)) return m;
        var t = _source.Get(name);
        // A stack of experts [cols, rows, experts] is held as one matrix of experts × rows rows (RowSlice cuts one out).
        if (t.Shape.Length is not (2 or 3)) throw new FitLMException($"{_source.Path}: tensor '{name}' is not a matrix");
        var buf = new NativeBuffer(t.ByteSize);
        try
        {
            const int chunk = 16 << 20;
            for (long off = 0; off < t.ByteSize; off += chunk)
            {
                int n = (int)Math.Min(chunk, t.ByteSize - off);
                _source.Read(t, off, buf.Slice(off, n));
            }
        }
        catch
        {
            buf.Dispose();
            throw;
        }
        m = new ResidentMatrix(name, t.Type, t.Rows, t.RowLength, buf);
        _matrices[name] = m;
        return m;
    }

    public float[] Vector(string name)
    {
        if (_vectors.TryGetValue(name, out var v)) return v;
        v = _source.ReadFloats(_source.Get(name));
        _vectors[name] = v;
        return v;
    }

    public void Dispose()
    {
        foreach (var m in _matrices.Values) m.Dispose();
        _matrices.Clear();
    }
}

/// <summary>A matrix whose bytes are all in memory.</summary>
public sealed unsafe class ResidentMatrix : IMatrix, IDisposable
{
    private readonly NativeBuffer? _data;
    private readonly byte* _pointer;
    private readonly long _bytes;
    public string Name { get; }
    public GgmlType Type { get; }
    public int Rows { get; }
    public int Cols { get; }
    public long RowBytes { get; }
    public long Bytes => _bytes;

    public ResidentMatrix(string name, GgmlType type, int rows, int cols, NativeBuffer data)
    {
        Name = name;
        Type = type;
        Rows = rows;
        Cols = cols;
        RowBytes = GgmlTypes.RowBytes(type, cols);
        if (RowBytes * rows != data.Length) throw new FitLMException($"tensor '{name}': {data.Length} bytes do not hold {rows}×{cols} {type}");
        _data = data;
        _pointer = data.Pointer;
        _bytes = data.Length;
    }

    /// <summary>A view of rows of another resident matrix (it owns the bytes; this one never frees them).</summary>
    private ResidentMatrix(ResidentMatrix whole, int first, int count)
    {
        Name = $"{whole.Name}[{first}..{first + count})";
        Type = whole.Type;
        Rows = count;
        Cols = whole.Cols;
        RowBytes = whole.RowBytes;
        _pointer = whole._pointer + first * whole.RowBytes;
        _bytes = count * RowBytes;
    }

    public IMatrix RowSlice(int first, int count)
    {
        if (first < 0 || count <= 0 || (long)first + count > Rows) throw new ArgumentOutOfRangeException(nameof(first));
        return new ResidentMatrix(this, first, count);
    }

    public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n) =>
        MatMul.MatMulBatch(Type, _pointer, RowBytes, Rows, Cols, x, y, n);

    public void ReadRow(int row, Span<float> dst)
    {
        if ((uint)row >= (uint)Rows) throw new FitLMException($"row {row} is outside tensor '{Name}' ({Rows} rows)");
        Dequantize.Row(Type, new ReadOnlySpan<byte>(_pointer + row * RowBytes, (int)RowBytes), dst[..Cols]);
    }

    /// <summary>
    /// Bytes [<paramref name="offset"/>, offset + <paramref name="length"/>) of the matrix, writable: full-weight MeZO
    /// perturbs F32/F16/BF16 weights in place here (a window, since one matrix may hold more than 2 GiB).
    /// </summary>
    internal Span<byte> WritableBytes(long offset, int length) =>
        (_data ?? throw new InvalidOperationException("a row view has no bytes of its own")).Slice(offset, length);

    public void Dispose() => _data?.Dispose();
}
