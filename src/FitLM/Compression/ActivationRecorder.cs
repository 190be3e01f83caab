using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Compression;

/// <summary>
/// A weight-provider decorator that records, for chosen matrices, the inputs x the model multiplies them with:
/// per input channel j the sum of x_j² over the tokens of the current sample. <see cref="EndSample"/> closes a
/// sample; <see cref="Scale"/> is then BitStack's activation statistic s_j = mean over samples of ‖x_{·,j}‖₂
/// (the norm over the sample's tokens). The model graph is not touched: it just multiplies as usual.
/// </summary>
public sealed class ActivationRecorder : IWeightProvider
{
    private readonly IWeightProvider _inner;
    private readonly Dictionary<string, Recorder> _recorders = new(StringComparer.Ordinal);

    public ActivationRecorder(IWeightProvider inner, IEnumerable<string> record)
    {
        _inner = inner;
        foreach (var name in record) _recorders[name] = new Recorder(name);
    }

    public int Samples { get; private set; }

    public IMatrix Matrix(string name)
    {
        var m = _inner.Matrix(name);
        if (!_recorders.TryGetValue(name, out var r)) return m;
        r.Attach(m);
        return r;
    }

    public float[] Vector(string name) => _inner.Vector(name);
    public bool Has(string name) => _inner.Has(name);
    public long ResidentBytes => _inner.ResidentBytes;
    public void Dispose() => _inner.Dispose();

    /// <summary>Ends a calibration sample: each channel's root sum of squares joins the running mean.</summary>
    public void EndSample()
    {
        foreach (var r in _recorders.Values) r.EndSample();
        Samples++;
    }

    /// <summary>s_j for a recorded matrix (length = its columns), or null when it was never multiplied.</summary>
    public double[]? Scale(string name)
    {
        var r = _recorders[name];
        return r.SampleCount == 0 ? null : r.Mean.Select(v => v / r.SampleCount).ToArray();
    }

    private sealed class Recorder(string name) : IMatrix
    {
        private IMatrix? _m;
        private double[] _sumSq = [];
        public double[] Mean = [];
        public int SampleCount;
        private bool _dirty;

        public void Attach(IMatrix m)
        {
            _m = m;
            if (_sumSq.Length != m.Cols)
            {
                _sumSq = new double[m.Cols];
                Mean = new double[m.Cols];
            }
        }

        private IMatrix M => _m ?? throw new InvalidOperationException("recorder not attached");
        public string Name => name;
        public int Rows => M.Rows;
        public int Cols => M.Cols;
        public GgmlType Type => M.Type;

        public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n)
        {
            int cols = Cols;
            for (int t = 0; t < n; t++)
            {
                var row = x.Slice(t * cols, cols);
                for (int j = 0; j < cols; j++) _sumSq[j] += (double)row[j] * row[j];
            }
            _dirty = true;
            M.Multiply(x, y, n);
        }

        public void ReadRow(int row, Span<float> dst) => M.ReadRow(row, dst);

        public void EndSample()
        {
            if (!_dirty) return;
            for (int j = 0; j < _sumSq.Length; j++)
            {
                Mean[j] += Math.Sqrt(_sumSq[j]);
                _sumSq[j] = 0;
            }
            SampleCount++;
            _dirty = false;
        }
    }
}
