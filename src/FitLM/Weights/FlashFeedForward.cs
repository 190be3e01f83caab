using FitLM.Model;
using System.Numerics.Tensors;
using FitLM.Storage;
using FitLM.Tensors;
using FitLM.Runtime;

namespace FitLM.Weights;

/// <summary>Chooses which FFN neurons a token needs (LLM in a flash: a predictor, or a fixed random fraction).</summary>
public interface INeuronSelector
{
    /// <summary>Writes the chosen neuron indices of one token, ascending, into <paramref name="selected"/>; returns how many.</summary>
    int Select(int layer, ReadOnlySpan<float> x, Span<int> selected);
    /// <summary>The most neurons one token can get (sizes buffers).</summary>
    int MaxPerToken(int ffn);
}

/// <summary>Every neuron: dense computation over bundled weights.</summary>
public sealed class AllNeurons : INeuronSelector
{
    public int Select(int layer, ReadOnlySpan<float> x, Span<int> selected)
    {
        for (int i = 0; i < selected.Length; i++) selected[i] = i;
        return selected.Length;
    }

    public int MaxPerToken(int ffn) => ffn;
}

/// <summary>A fixed fraction of neurons per token, chosen at random (for measuring the I/O path, as LLM in a flash's fixed-sparsity runs).</summary>
public sealed class RandomFraction(double fraction, int seed = 1234) : INeuronSelector
{
    private readonly Random _rng = new(seed);
    private bool[] _taken = [];
    public double Fraction { get; } = fraction is > 0 and <= 1 ? fraction : throw new FitLMException($"FFN fraction {fraction} is out of range (0, 1]");

    public int MaxPerToken(int ffn) => Math.Max(1, (int)Math.Round(Fraction * ffn));

    public int Select(int layer, ReadOnlySpan<float> x, Span<int> selected)
    {
        int ffn = selected.Length, k = MaxPerToken(ffn);
        if (_taken.Length < ffn) _taken = new bool[ffn];
        // Floyd's sampling of k distinct indices (a bitmap marks the taken ones), then sort.
        var chosen = selected[..k];
        for (int j = ffn - k, count = 0; j < ffn; j++)
        {
            int t = _rng.Next(j + 1);
            int pick = _taken[t] ? j : t;
            _taken[pick] = true;
            chosen[count++] = pick;
        }
        foreach (int i in chosen) _taken[i] = false;
        chosen.Sort();
        return k;
    }
}

/// <summary>
/// A layer's FFN computed only over chosen neurons, from weights bundled per neuron (`fitlm prepare`): row 3i
/// is gate row i, 3i+1 up row i, 3i+2 down column i. Bundles live in a window cache (LLM in a flash
/// "windowing"): the neurons used by the previous k tokens stay in a preallocated buffer (k = 0: none); a
/// neuron used by none of them is deleted by moving the last row into its hole; only the token's neurons not
/// in the window are read, with adjacent neurons merged into one read and many reads in flight.
/// </summary>
public sealed unsafe class FlashFeedForward : IFeedForward, IDisposable
{
    private readonly int _layer, _dim, _ffn, _windowTokens, _capacity;
    private readonly GgmlType _type;
    private readonly int _rowBytes, _bundleBytes;
    private readonly FfnActivation _activation;
    private readonly INeuronSelector _selector;
    private readonly DirectFile _file;
    private readonly long _fileOffset;
    private readonly IoQueue _io;
    private readonly NativeBuffer _window, _staging;
    private readonly int[] _slotOf, _neuronAt, _lastUse;
    private readonly int[] _union, _fresh;
    private readonly ReadRequest[] _requests;
    private readonly long[] _requestNeuronStart;
    private readonly ReadGroup _reads = new();
    private readonly ComputeJob _job;
    private int _count, _step;

    /// <summary>Neurons read from storage, neurons computed, and steps (tokens), since load (for reports).</summary>
    public long NeuronsRead { get; private set; }
    public long NeuronsUsed { get; private set; }
    public long Steps { get; private set; }
    public long BytesRead { get; private set; }
    /// <summary>Sum over steps of the neurons the window held once the step's neurons were in (occupancy).</summary>
    public long NeuronsHeld { get; private set; }
    /// <summary>With a <see cref="NeuronAudit"/>: the truly important neurons, and how many of them were chosen.</summary>
    public long AuditImportant { get; private set; }
    public long AuditCaught { get; private set; }
    private readonly NeuronAudit? _audit;
    public long WindowBytes => _window.Length + _staging.Length;

    public FlashFeedForward(int layer, ModelConfig c, GgmlType type, DirectFile file, long fileOffset, IoQueue io,
        INeuronSelector selector, int windowTokens, int capacity, NeuronAudit? audit = null)
    {
        _layer = layer;
        _dim = c.Dim;
        _ffn = c.FfnDim;
        _type = type;
        _rowBytes = (int)GgmlTypes.RowBytes(type, c.Dim);
        _bundleBytes = 3 * _rowBytes;
        _activation = c.Activation;
        _selector = selector;
        _file = file;
        _fileOffset = fileOffset;
        _io = io;
        _windowTokens = Math.Max(0, windowTokens);
        _audit = audit;
        _capacity = Math.Clamp(capacity, 1, _ffn);
        _window = new NativeBuffer((long)_capacity * _bundleBytes);
        _staging = new NativeBuffer(StagingBytes(c, type, selector), DirectFile.Alignment);
        _slotOf = new int[_ffn];
        Array.Fill(_slotOf, -1);
        _neuronAt = new int[_capacity];
        _lastUse = new int[_ffn];
        Array.Fill(_lastUse, int.MinValue / 2);
        _union = new int[_ffn];
        _fresh = new int[_ffn];
        _requests = new ReadRequest[_ffn];
        _requestNeuronStart = new long[_ffn];
        for (int i = 0; i < _requests.Length; i++) _requests[i] = new ReadRequest { File = file, Group = _reads };
        _job = new ComputeJob(this);
    }

    /// <summary>Bytes of the window and staging buffers a layer needs (for the planner).</summary>
    public static long MemoryBytes(ModelConfig c, GgmlType type, INeuronSelector selector, int windowTokens)
    {
        long bundle = 3 * GgmlTypes.RowBytes(type, c.Dim);
        long capacity = Capacity(c, selector, windowTokens);
        // Window, staging, index arrays, and per-chunk partial outputs of a decode step.
        return capacity * bundle + StagingBytes(c, type, selector) + 40L * c.FfnDim + 4L * 4 * Tensors.MatMul.Threads * c.Dim;
    }

    /// <summary>Window slots: the neurons of the previous k tokens plus this token's.</summary>
    public static int Capacity(ModelConfig c, INeuronSelector selector, int windowTokens) =>
        (int)Math.Min(c.FfnDim, (long)selector.MaxPerToken(c.FfnDim) * (Math.Max(0, windowTokens) + 1));

    /// <summary>Staging for one step's fresh neurons: each read may carry up to two extra pages of alignment.</summary>
    private static long StagingBytes(ModelConfig c, GgmlType type, INeuronSelector selector)
    {
        long bundle = 3 * GgmlTypes.RowBytes(type, c.Dim);
        long perStep = Math.Min(c.FfnDim, selector.MaxPerToken(c.FfnDim));
        return Math.Min(perStep * (bundle + 2 * DirectFile.Alignment), c.FfnDim * bundle + 2 * DirectFile.Alignment);
    }

    public void Forward(ReadOnlySpan<float> x, Span<float> y, int n, Span<float> hb, Span<float> hb2)
    {
        // Token by token, so that each token gets exactly its own neurons and the window slides per token
        // (a batch's union of choices could exceed the window).
        for (int t = 0; t < n; t++) Step(x.Slice(t * _dim, _dim), y.Slice(t * _dim, _dim));
    }

    private void Step(ReadOnlySpan<float> x, Span<float> y)
    {
        int u = _selector.Select(_layer, x, _union);
        _step++;
        Steps++;
        ExpireOld();
        for (int i = 0; i < u; i++) _lastUse[_union[i]] = _step;
        MakeRoom(u);
        Load(u);
        NeuronsUsed += u;
        NeuronsHeld += _count;
        if (_audit != null)
        {
            var (important, caught) = _audit.Check(_layer, x, _union.AsSpan(0, u));
            AuditImportant += important;
            AuditCaught += caught;
        }
        fixed (float* px = x, py = y)
        {
            _job.Set(px, py, 1, u);
            WorkerPool.Shared.Run(_job, _job.Chunks);
            _job.Reduce(py);
        }
    }

    /// <summary>Deletes neurons used by none of the previous k tokens.</summary>
    private void ExpireOld()
    {
        int oldest = _step - _windowTokens - 1;
        for (int s = 0; s < _count;)
        {
            if (_lastUse[_neuronAt[s]] <= oldest) RemoveSlot(s);
            else s++;
        }
    }

    /// <summary>If this token's new neurons still do not fit, drops cached neurons this token does not use.</summary>
    private void MakeRoom(int u)
    {
        int fresh = 0;
        for (int i = 0; i < u; i++) if (_slotOf[_union[i]] < 0) fresh++;
        for (int s = 0; s < _count && _count + fresh > _capacity;)
        {
            if (_lastUse[_neuronAt[s]] != _step) RemoveSlot(s);
            else s++;
        }
        if (_count + fresh > _capacity) throw new FitLMException($"layer {_layer}: {fresh} new neurons do not fit the window of {_capacity}");
    }

    private void RemoveSlot(int s)
    {
        int neuron = _neuronAt[s];
        int last = --_count;
        _slotOf[neuron] = -1;
        if (s != last)
        {
            int moved = _neuronAt[last];
            Buffer.MemoryCopy(_window.Pointer + (long)last * _bundleBytes, _window.Pointer + (long)s * _bundleBytes, _bundleBytes, _bundleBytes);
            _neuronAt[s] = moved;
            _slotOf[moved] = s;
        }
    }

    /// <summary>Reads the union's neurons that are not in the window: runs of adjacent neurons as one aligned read each.</summary>
    private void Load(int u)
    {
        int fresh = 0;
        for (int i = 0; i < u; i++)
            if (_slotOf[_union[i]] < 0) _fresh[fresh++] = _union[i];
        if (fresh == 0) return;
        int requests = 0;
        long staged = 0;
        for (int i = 0; i < fresh;)
        {
            int j = i + 1;
            while (j < fresh && _fresh[j] == _fresh[j - 1] + 1) j++;
            long start = _fileOffset + (long)_fresh[i] * _bundleBytes;
            var (alignedStart, length) = DirectFile.AlignedRange(start, (long)(j - i) * _bundleBytes);
            if (staged + length > _staging.Length) { Flush(requests); requests = 0; staged = 0; }
            var r = _requests[requests];
            r.Offset = alignedStart;
            r.Length = (int)length;
            r.Destination = _staging.Pointer + staged;
            _requestNeuronStart[requests] = ((long)i << 32) | (uint)(j - i);
            _io.Submit(r);
            BytesRead += length;
            staged += length;
            requests++;
            i = j;
        }
        Flush(requests);
        NeuronsRead += fresh;
    }

    /// <summary>Waits for the submitted reads and copies each neuron's bundle from staging into a window slot.</summary>
    private void Flush(int requests)
    {
        if (requests == 0) return;
        _reads.Wait();
        for (int q = 0; q < requests; q++)
        {
            var r = _requests[q];
            int first = (int)(_requestNeuronStart[q] >> 32), run = (int)(uint)_requestNeuronStart[q];
            long skip = _fileOffset + (long)_fresh[first] * _bundleBytes - r.Offset;
            for (int m = 0; m < run; m++)
            {
                int neuron = _fresh[first + m];
                int slot = _count++;
                Buffer.MemoryCopy(r.Destination + skip + (long)m * _bundleBytes, _window.Pointer + (long)slot * _bundleBytes, _bundleBytes, _bundleBytes);
                _neuronAt[slot] = neuron;
                _slotOf[neuron] = slot;
            }
        }
    }

    public void Dispose()
    {
        _window.Dispose();
        _staging.Dispose();
    }

    /// <summary>Neurons in chunks over the worker pool; each chunk accumulates its own partial output, summed at the end.</summary>
    private sealed class ComputeJob(FlashFeedForward f) : IParallelJob
    {
        private float* _x, _y;
        private int _n, _u, _perChunk;
        private float[] _partials = [];
        public int Chunks { get; private set; }
        [ThreadStatic] private static float[]? t_row;

        public void Set(float* x, float* y, int n, int u)
        {
            _x = x; _y = y; _n = n; _u = u;
            // One token: chunks of ~64 neurons, at most a few per thread; a batch: one chunk per thread, since
            // each chunk keeps a partial output for every token.
            int threads = MatMul.Threads;
            Chunks = Math.Max(1, n == 1 ? Math.Min((u + 63) / 64, 4 * threads) : Math.Min(threads, u));
            _perChunk = (u + Chunks - 1) / Chunks;
            long need = (long)Chunks * n * f._dim;
            if (_partials.Length < need) _partials = new float[need];
            Array.Clear(_partials, 0, (int)need);
        }

        public void Execute(int chunk)
        {
            int dim = f._dim, rb = f._rowBytes;
            var row = t_row is { } b && b.Length >= dim ? b : t_row = new float[dim];
            var down = row.AsSpan(0, dim);
            int i0 = chunk * _perChunk, i1 = Math.Min(_u, i0 + _perChunk);
            for (int i = i0; i < i1; i++)
            {
                byte* bundle = f._window.Pointer + (long)f._slotOf[f._union[i]] * f._bundleBytes;
                var gate = new ReadOnlySpan<byte>(bundle, rb);
                var up = new ReadOnlySpan<byte>(bundle + rb, rb);
                bool dequantized = false;
                for (int t = 0; t < _n; t++)
                {
                    var xt = new ReadOnlySpan<float>(_x + (long)t * dim, dim);
                    float h = Activations.Apply(QuantDot.Dot(f._type, gate, xt), f._activation) * QuantDot.Dot(f._type, up, xt);
                    if (h == 0) continue; // ReLU zeros cost no down-projection
                    if (!dequantized)
                    {
                        Dequantize.Row(f._type, new ReadOnlySpan<byte>(bundle + 2 * rb, rb), down);
                        dequantized = true;
                    }
                    var acc = _partials.AsSpan((chunk * _n + t) * dim, dim);
                    TensorPrimitives.MultiplyAdd(down, h, acc, acc);
                }
            }
        }

        public void Reduce(float* y)
        {
            int dim = f._dim;
            for (int t = 0; t < _n; t++)
            {
                var yt = new Span<float>(y + (long)t * dim, dim);
                _partials.AsSpan(t * dim, dim).CopyTo(yt);
                for (int c = 1; c < Chunks; c++) TensorPrimitives.Add(yt, _partials.AsSpan((c * _n + t) * dim, dim), yt);
            }
        }
    }
}
