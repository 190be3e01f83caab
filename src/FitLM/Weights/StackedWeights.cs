using FitLM.Model;
using FitLM.Compression;
using FitLM.Formats;
using FitLM.Storage;
using FitLM.Tensors;
using FitLM.Runtime;

namespace FitLM.Weights;

/// <summary>
/// Weights of a BitStack stacked file (docs/bitstack.md): conventional tensors (embeddings, head, norms) are
/// resident as stored; each stacked linear weight is the sum of the blocks of the stack prefix that is loaded.
/// <see cref="Resize"/> moves the prefix while the model runs: shrinking frees the dropped blocks (and returns
/// the memory to the OS), growing reads only the new blocks from the file.
/// <para>
/// How a stacked matrix multiplies (<see cref="CacheType"/>): by default the sum of its blocks is
/// re-materialized, whenever its block count changes, into a Q8_0 copy that the ordinary quantized kernels
/// use; with no cache type the sign × low-rank blocks are multiplied directly (no extra memory, but each
/// block costs Rank passes over its sign bits; see docs/bitstack.md for the measurements behind the default).
/// </para>
/// </summary>
public sealed class StackedWeights : IWeightProvider
{
    /// <summary>The default cache type: the one the int8 kernels run fastest, and near-lossless.</summary>
    public const GgmlType DefaultCache = GgmlType.Q8_0;

    private readonly IWeightProvider _conventional;
    private readonly StackedMatrix[] _matrices;
    private readonly Dictionary<string, StackedMatrix> _byName;
    private readonly Func<int, int, StackBlock> _load;
    private readonly bool _ownsBlocks;
    private readonly object _resizeLock = new();
    private bool _disposed;

    /// <summary>The stack of the file (null for an in-memory stack being built by the compressor).</summary>
    public StackLayout? Layout { get; }
    /// <summary>Type the matrices are re-materialized into, or null for the direct sign × low-rank kernel.</summary>
    public GgmlType? CacheType { get; }
    /// <summary>Length of the loaded stack prefix.</summary>
    public int LoadedEntries { get; private set; }
    /// <summary>Bytes of blocks read from the file since load.</summary>
    public long BytesRead { get; private set; }

    private StackedWeights(IWeightProvider conventional, StackLayout? layout, IReadOnlyList<(string Name, int Rows, int Cols, int Rank)> matrices,
        Func<int, int, StackBlock> load, bool ownsBlocks, GgmlType? cacheType)
    {
        if (cacheType is { } ct && (!GgmlTypes.IsSupported(ct) || matrices.Any(m => m.Cols % GgmlTypes.BlockSize(ct) != 0)))
            throw new FitLMException($"stacked matrices cannot be cached as {ct}");
        _conventional = conventional;
        Layout = layout;
        CacheType = cacheType;
        _load = load;
        _ownsBlocks = ownsBlocks;
        _matrices = matrices.Select((m, i) => new StackedMatrix(this, i, m.Name, m.Rows, m.Cols, m.Rank)).ToArray();
        _byName = _matrices.ToDictionary(m => m.Name, StringComparer.Ordinal);
    }

    /// <summary>Opens the stack of <paramref name="source"/> and loads its first <paramref name="entries"/> blocks.</summary>
    public static StackedWeights Open(GgufSource source, StackLayout layout, int entries, GgmlType? cacheType = DefaultCache)
    {
        var conventional = new ResidentWeights(source);
        StackedWeights? w = null;
        try
        {
            w = new StackedWeights(conventional, layout, layout.Matrices.Select(m => (m.Name, m.Rows, m.Cols, m.Rank)).ToList(),
                (m, b) => ReadBlock(source.File, layout, m, b), ownsBlocks: true, cacheType);
            w.ResizeEntries(entries);
            return w;
        }
        catch
        {
            if (w != null) w.Dispose(); else conventional.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A stack whose blocks are already in memory (the compressor scores block orders on it): matrix i's block b
    /// is <c>blocks[i][b]</c>. The caller keeps ownership of the blocks. Every matrix starts with 0 blocks.
    /// </summary>
    public static StackedWeights InMemory(IWeightProvider conventional, IReadOnlyList<(string Name, int Rows, int Cols, int Rank)> matrices,
        IReadOnlyList<IReadOnlyList<StackBlock>> blocks, GgmlType? cacheType = DefaultCache) =>
        new(conventional, null, matrices, (m, b) => blocks[m][b], ownsBlocks: false, cacheType);

    private static unsafe StackBlock ReadBlock(GgufFile file, StackLayout layout, int matrix, int block)
    {
        int pos = layout.PositionOf(matrix, block);
        if (pos < 0) throw new FitLMException($"{layout.Path}: block {block} of '{layout.Matrices[matrix].Name}' is not in the stack");
        var e = layout.Entries[pos];
        var m = layout.Matrices[matrix];
        var buf = new NativeBuffer(e.Bytes);
        try
        {
            file.ReadTensorBytes(e.Sign, 0, new Span<byte>(buf.Pointer, (int)e.Sign.ByteSize));
            file.ReadTensorBytes(e.U, 0, new Span<byte>(buf.Pointer + e.Sign.ByteSize, (int)e.U.ByteSize));
            file.ReadTensorBytes(e.V, 0, new Span<byte>(buf.Pointer + e.Sign.ByteSize + e.U.ByteSize, (int)e.V.ByteSize));
            return new StackBlock(buf, 0, e.Sign.ByteSize, e.Sign.ByteSize + e.U.ByteSize, m.Rows, m.Cols, m.Rank);
        }
        catch
        {
            buf.Dispose();
            throw;
        }
    }

    public IReadOnlyList<StackedMatrix> Matrices => _matrices;

    /// <summary>Weight bytes of the loaded model: conventional tensors + loaded blocks (what --weights caps).</summary>
    public long WeightBytes => Layout?.BytesAt(LoadedEntries) ?? _matrices.Sum(m => m.BlockBytes);

    /// <summary>Bytes of the materialized caches (0 with the direct kernel).</summary>
    public long CacheBytes => _matrices.Sum(m => m.CacheBytes);

    public long ResidentBytes => _conventional.ResidentBytes + _matrices.Sum(m => m.BlockBufferBytes + m.CacheBytes);

    /// <summary>Bytes the cache of every stacked matrix takes in <paramref name="type"/> (what a budget must leave for it).</summary>
    public static long CacheBytesFor(StackLayout layout, GgmlType? type) =>
        type is { } t ? layout.Matrices.Sum(m => GgmlTypes.RowBytes(t, m.Cols) * m.Rows) : 0;

    public bool Has(string name) => _byName.ContainsKey(name) || _conventional.Has(name);

    public IMatrix Matrix(string name) => _byName.TryGetValue(name, out var m) ? m : _conventional.Matrix(name);

    public float[] Vector(string name) => _conventional.Vector(name);

    /// <summary>
    /// Loads the longest stack prefix whose weight bytes (conventional tensors included) fit <paramref name="weightBytes"/>,
    /// dropping or reading blocks as needed; returns the weight bytes now loaded. Safe to call while another
    /// thread runs the model: each matrix switches between two multiplications.
    /// </summary>
    public long? Parameters => Layout?.Parameters;

    /// <summary>One line about the stack after a run: blocks loaded, weight bytes, how it multiplies.</summary>
    public IEnumerable<string> Report(ModelConfig config)
    {
        if (Layout is not { } layout) yield break;
        yield return $"stack: {LoadedEntries}/{layout.Entries.Count} blocks, weights {ProcessMemory.Format(WeightBytes)} ({WeightBytes:N0} bytes, " +
            $"{layout.TotalBitsPerWeight(LoadedEntries):F2} bits/weight; stacked matrices {layout.StackBitsPerWeight(LoadedEntries):F2}), " +
            (CacheType is { } t ? $"matrices cached as {GgmlTypes.Name(t)} ({ProcessMemory.Format(CacheBytes)})" : "direct sign x low-rank kernel");
    }

    public long Resize(long weightBytes)
    {
        var layout = Layout ?? throw new InvalidOperationException("an in-memory stack has no size ladder");
        int k = layout.EntriesFor(weightBytes);
        if (k < 0)
            throw new FitLMException($"{layout.Path}: {Runtime.ProcessMemory.Format(weightBytes)} cannot hold even the embeddings, head and norms ({Runtime.ProcessMemory.Format(layout.FixedBytes)})");
        ResizeEntries(k);
        return WeightBytes;
    }

    /// <summary>Loads exactly the first <paramref name="entries"/> positions of the stack.</summary>
    public void ResizeEntries(int entries)
    {
        var layout = Layout ?? throw new InvalidOperationException("an in-memory stack has no stack order");
        if (entries < 0 || entries > layout.Entries.Count) throw new ArgumentOutOfRangeException(nameof(entries), $"the stack has {layout.Entries.Count} positions");
        lock (_resizeLock)
        {
            SetCountsLocked(layout.CountsAt(entries));
            LoadedEntries = entries;
        }
    }

    /// <summary>Sets each matrix's block count directly (the compressor's scoring; any counts, not only stack prefixes).</summary>
    public void SetCounts(IReadOnlyList<int> counts)
    {
        lock (_resizeLock) SetCountsLocked(counts);
    }

    /// <summary>Sets one matrix's block count.</summary>
    public void SetCount(int matrix, int count)
    {
        lock (_resizeLock)
        {
            var counts = _matrices.Select(m => m.Count).ToArray();
            counts[matrix] = count;
            SetCountsLocked(counts);
        }
    }

    public int[] Counts => _matrices.Select(m => m.Count).ToArray();

    private void SetCountsLocked(IReadOnlyList<int> counts)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (counts.Count != _matrices.Length) throw new ArgumentException("one count per stacked matrix");
        bool changed = false;
        for (int i = 0; i < _matrices.Length; i++)
        {
            var m = _matrices[i];
            int target = counts[i];
            if (target == m.Count) continue;
            var blocks = m.Blocks.ToList();
            List<StackBlock> dropped = [];
            if (target < blocks.Count)
            {
                dropped = blocks.GetRange(target, blocks.Count - target);
                blocks.RemoveRange(target, blocks.Count - target);
            }
            else
            {
                try
                {
                    for (int b = blocks.Count; b < target; b++)
                    {
                        var block = _load(i, b);
                        if (block.Rows != m.Rows || block.Cols != m.Cols || block.Rank != m.Rank)
                            throw new FitLMException($"block {b} of '{m.Name}' does not match the matrix shape");
                        blocks.Add(block);
                        if (_ownsBlocks) BytesRead += block.Bytes;
                    }
                }
                catch
                {
                    if (_ownsBlocks) foreach (var x in blocks.Skip(m.Count)) x.Dispose();
                    throw;
                }
            }
            m.Replace(blocks);
            if (_ownsBlocks) foreach (var x in dropped) x.Dispose();
            changed = true;
        }
        // Dropped blocks and replaced caches are free now: hand the pages back (RSS falls on shrink, stays flat on grow).
        if (changed && _ownsBlocks) HeapTrim.Native();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var m in _matrices) m.Release(_ownsBlocks);
        _conventional.Dispose();
    }

    /// <summary>A stacked weight: the sum of its loaded blocks.</summary>
    public sealed unsafe class StackedMatrix : IMatrix
    {
        private readonly StackedWeights _owner;
        private readonly object _gate = new();
        private StackBlock[] _blocks = [];
        private float[][] _vt = [];          // per block Vᵀ as floats (direct kernel only)
        private NativeBuffer? _cache;        // the materialized sum in the cache type
        public int Index { get; }
        public string Name { get; }
        public int Rows { get; }
        public int Cols { get; }
        public int Rank { get; }
        public GgmlType Type => _owner.CacheType ?? GgmlType.F16;
        public int Count => _blocks.Length;
        public IReadOnlyList<StackBlock> Blocks => _blocks;
        public long BlockBytes => _blocks.Sum(b => b.Bytes);
        public long BlockBufferBytes => _blocks.Sum(b => b.BufferBytes) + _vt.Sum(v => 4L * v.Length);
        public long CacheBytes => _cache?.Length ?? 0;

        internal StackedMatrix(StackedWeights owner, int index, string name, int rows, int cols, int rank)
        {
            _owner = owner;
            Index = index;
            Name = name;
            Rows = rows;
            Cols = cols;
            Rank = rank;
        }

        /// <summary>Swaps in a new block list (and its cache); the multiplication in progress finishes on the old one.</summary>
        internal void Replace(List<StackBlock> blocks)
        {
            var arr = blocks.ToArray();
            NativeBuffer? cache = null;
            float[][] vt = [];
            if (_owner.CacheType is { } type) cache = Materialize(arr, type);
            else vt = arr.Select(b => { var v = new float[b.Rank * b.Cols]; b.TransposedV(v); return v; }).ToArray();
            NativeBuffer? old;
            lock (_gate)
            {
                old = _cache;
                _cache = cache;
                _blocks = arr;
                _vt = vt;
            }
            old?.Dispose();
        }

        internal void Release(bool disposeBlocks)
        {
            lock (_gate)
            {
                _cache?.Dispose();
                _cache = null;
                if (disposeBlocks) foreach (var b in _blocks) b.Dispose();
                _blocks = [];
                _vt = [];
            }
        }

        /// <summary>W = Σ blocks, row chunks in parallel, quantized into <paramref name="type"/>. Deterministic for a block list.</summary>
        private NativeBuffer? Materialize(StackBlock[] blocks, GgmlType type)
        {
            if (blocks.Length == 0) return null;
            long rowBytes = GgmlTypes.RowBytes(type, Cols);
            var cache = new NativeBuffer(rowBytes * Rows);
            try
            {
                var vts = blocks.Select(b => { var v = new float[b.Rank * b.Cols]; b.TransposedV(v); return v; }).ToArray();
                const int rowsPerTask = 32;
                int tasks = (Rows + rowsPerTask - 1) / rowsPerTask;
                byte* basePtr = cache.Pointer;
                Parallel.For(0, tasks, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, MatMul.Threads) },
                    () => (new float[rowsPerTask * Cols], new float[Cols]),
                    (t, _, bufs) =>
                    {
                        int r0 = t * rowsPerTask, r1 = Math.Min(Rows, r0 + rowsPerTask);
                        var dst = bufs.Item1.AsSpan(0, (r1 - r0) * Cols);
                        dst.Clear();
                        for (int b = 0; b < blocks.Length; b++) blocks[b].AddRows(dst, r0, r1, vts[b], bufs.Item2);
                        for (int r = r0; r < r1; r++)
                            Quantize.Row(type, dst.Slice((r - r0) * Cols, Cols), new Span<byte>(basePtr + r * rowBytes, (int)rowBytes));
                        return bufs;
                    }, _ => { });
                return cache;
            }
            catch
            {
                cache.Dispose();
                throw;
            }
        }

        public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n)
        {
            if (x.Length < (long)n * Cols || y.Length < (long)n * Rows) throw new ArgumentException("matmul size mismatch");
            lock (_gate)
            {
                if (_blocks.Length == 0)
                {
                    y[..(n * Rows)].Clear();
                    return;
                }
                if (_cache is { } cache && _owner.CacheType is { } type)
                {
                    MatMul.MatMulBatch(type, cache.Pointer, GgmlTypes.RowBytes(type, Cols), Rows, Cols, x, y, n);
                    return;
                }
                MultiplyDirect(x, y, n);
            }
        }

        private void MultiplyDirect(ReadOnlySpan<float> x, Span<float> y, int n)
        {
            y[..(n * Rows)].Clear();
            var job = t_direct ??= new DirectJob();
            fixed (float* px = x, py = y)
            {
                job.Set(this, px, py, n);
                WorkerPool.Shared.Run(job, (Rows + DirectJob.RowsPerItem - 1) / DirectJob.RowsPerItem);
                job.Set(null, null, null, 0);
            }
        }

        [ThreadStatic] private static DirectJob? t_direct;

        /// <summary>The direct kernel over row chunks: every block's sign × low-rank product, token by token.</summary>
        private sealed class DirectJob : IParallelJob
        {
            public const int RowsPerItem = 32;
            private StackedMatrix? _m;
            private float* _x, _y;
            private int _n;
            [ThreadStatic] private static float[]? t_z;

            public void Set(StackedMatrix? m, float* x, float* y, int n)
            {
                _m = m;
                _x = x;
                _y = y;
                _n = n;
            }

            public void Execute(int item)
            {
                var m = _m!;
                int r0 = item * RowsPerItem, r1 = Math.Min(m.Rows, r0 + RowsPerItem);
                int need = m.Rank * m.Cols;
                var z = t_z is { } a && a.Length >= need ? a : t_z = new float[need];
                for (int t = 0; t < _n; t++)
                {
                    var x = new ReadOnlySpan<float>(_x + (long)t * m.Cols, m.Cols);
                    var y = new Span<float>(_y + (long)t * m.Rows + r0, r1 - r0);
                    for (int b = 0; b < m._blocks.Length; b++)
                        m._blocks[b].MultiplyAdd(m._vt[b], x, y, r0, r1, z);
                }
            }
        }

        public void ReadRow(int row, Span<float> dst)
        {
            if ((uint)row >= (uint)Rows) throw new FitLMException($"row {row} is outside tensor '{Name}' ({Rows} rows)");
            lock (_gate)
            {
                var d = dst[..Cols];
                d.Clear();
                var scratch = new float[Cols];
                foreach (var b in _blocks)
                {
                    var vt = new float[b.Rank * b.Cols];
                    b.TransposedV(vt);
                    b.AddRows(d, row, row + 1, vt, scratch);
                }
            }
        }
    }
}
