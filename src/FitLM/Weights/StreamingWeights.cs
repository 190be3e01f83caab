using FitLM.Model;
using FitLM.Memory;
using FitLM.Storage;
using FitLM.Tensors;
using FitLM.Runtime;

namespace FitLM.Weights;

/// <summary>
/// Weights as the planner places them: resident ones in memory, streamed ones read from the
/// file with direct I/O each time they are used. Streamed tensors are grouped in units (a layer, the output
/// head) that the forward pass uses in a fixed cyclic order, so while one unit computes in one buffer the
/// next is read into the other (prefetch), with several reads in flight. Adjacent tensors of a unit are read
/// as one range in chunks of up to 4 MiB: large contiguous reads are what storage serves fastest.
/// </summary>
public sealed unsafe class StreamingWeights : IWeightProvider
{
    private const int ChunkBytes = 4 << 20;

    private readonly IModelSource _source;
    private readonly IReadOnlyList<TensorPlan> _tensors;
    private readonly HashSet<string> _streamedNames;
    private readonly ResidentWeights _resident;
    private readonly IoQueue _io;
    private readonly Dictionary<string, DirectFile> _files = new();
    private readonly List<StreamUnit> _units = new();
    private readonly Dictionary<string, StreamedMatrix> _matrices = new();
    private readonly NativeBuffer[] _slots = new NativeBuffer[2];
    private readonly int[] _slotUnit = [-1, -1];
    private readonly ReadGroup[] _slotReads = [new(), new()];
    private int _currentSlot = -1;
    private readonly NativeBuffer? _rowBuffer;

    /// <summary>Bytes read from storage since load, and how long the compute thread waited for them.</summary>
    public long BytesRead { get; private set; }
    public TimeSpan WaitTime => TimeSpan.FromTicks(_waitTicks);
    private long _waitTicks;

    public StreamMode Mode { get; }

    /// <param name="tensors">every tensor with its placement, as the planner decided</param>
    public StreamingWeights(IModelSource source, IReadOnlyList<TensorPlan> tensors, StreamMode mode)
    {
        _source = source;
        _tensors = tensors;
        _streamedNames = tensors.Where(t => t.Placement == Placement.Streamed).Select(t => t.Tensor.Name).ToHashSet();
        Mode = mode;
        _resident = new ResidentWeights(source);
        _io = new IoQueue(mode == StreamMode.Naive ? 1 : 4);
        try
        {
            BuildUnits();
            long slotBytes = _units.Count == 0 ? 0 : _units.Max(u => u.SlotBytes);
            for (int i = 0; i < 2 && slotBytes > 0; i++) _slots[i] = new NativeBuffer(slotBytes, DirectFile.Alignment);
            BindDestinations();
            var embedding = source.Get("token_embd.weight");
            if (_streamedNames.Contains(embedding.Name) || source.Find("output.weight") == null)
                _rowBuffer = new NativeBuffer(DirectFile.AlignedRange(0, embedding.ByteSize / embedding.Rows).Length + 2 * DirectFile.Alignment, DirectFile.Alignment);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public long ResidentBytes => _resident.ResidentBytes + _slots.Sum(s => s?.Length ?? 0) + (_rowBuffer?.Length ?? 0);

    public bool Has(string name) => _source.Find(name) != null;

    public float[] Vector(string name) => _resident.Vector(name);

    public IMatrix Matrix(string name)
    {
        if (_matrices.TryGetValue(name, out var m)) return m;
        var t = _source.Get(name);
        if (!_streamedNames.Contains(name)) return _resident.Matrix(name);
        int unit = _units.FindIndex(u => u.Tensors.Any(x => x.Desc.Name == name));
        if (unit < 0)
        {
            // A streamed tensor outside the units (the embedding): only row reads.
            m = new StreamedMatrix(this, t, -1, 0);
        }
        else
        {
            var entry = _units[unit].Tensors.First(x => x.Desc.Name == name);
            m = new StreamedMatrix(this, t, unit, entry.OffsetInSlot);
        }
        _matrices[name] = m;
        return m;
    }

    private DirectFile FileOf(string path)
    {
        if (!_files.TryGetValue(path, out var f)) _files[path] = f = DirectFile.Open(path);
        return f;
    }

    /// <summary>Groups streamed tensors into units in the order the forward pass uses them, and lays out each unit's reads.</summary>
    private void BuildUnits()
    {
        // An untied embedding is only ever read by rows, so it belongs to no unit.
        bool tied = _source.Find("output.weight") == null;
        var streamed = _tensors.Where(t => t.Placement == Placement.Streamed && (tied || t.Tensor.Name != "token_embd.weight")
            && !t.Tensor.Name.EndsWith(".ffn_bundle.weight", StringComparison.Ordinal)).ToList();
        var byLayer = streamed.Where(t => t.Layer >= 0).GroupBy(t => t.Layer).OrderBy(g => g.Key).Select(g => g.Select(x => x.Tensor).ToList()).ToList();
        var head = streamed.Where(t => t.Layer < 0).Select(t => t.Tensor).ToList();
        if (head.Count > 0) byLayer.Add(head);
        foreach (var tensors in byLayer) _units.Add(StreamUnit.Build(tensors, _source, this));
    }

    /// <summary>Makes unit <paramref name="u"/> ready in a slot and returns its base address; starts reading the next unit.</summary>
    internal byte* Acquire(int u)
    {
        // The matrices of one unit are used one after another: the unit in use stays where it is.
        if (_currentSlot >= 0 && _slotUnit[_currentSlot] == u) return _slots[_currentSlot].Pointer;
        int slot = Mode == StreamMode.Naive ? -1 : Array.IndexOf(_slotUnit, u);
        if (slot < 0)
        {
            // Not prefetched (or naive mode): read it now into the slot not used by the unit before.
            slot = _currentSlot < 0 ? 0 : 1 - _currentSlot;
            if (!_slotReads[slot].IsComplete) WaitFor(slot); // a stray prefetch still writing there
            StartRead(slot, u);
        }
        WaitFor(slot);
        _currentSlot = slot;
        if (Mode == StreamMode.Prefetch && _units.Count > 2)
        {
            int next = (u + 1) % _units.Count, other = 1 - slot;
            if (_slotUnit[other] != next)
            {
                if (!_slotReads[other].IsComplete) WaitFor(other);
                StartRead(other, next);
            }
        }
        return _slots[slot].Pointer;
    }

    private void WaitFor(int slot)
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        _slotReads[slot].Wait();
        _waitTicks += System.Diagnostics.Stopwatch.GetElapsedTime(t0).Ticks;
    }

    private void StartRead(int slot, int u)
    {
        _slotUnit[slot] = u;
        var unit = _units[u];
        foreach (var r in unit.Requests[slot])
        {
            _io.Submit(r);
            BytesRead += r.Length;
        }
    }

    /// <summary>One row of a streamed matrix read directly from the file (embedding look-up).</summary>
    internal void ReadRow(TensorDesc t, int row, Span<float> dst)
    {
        if ((uint)row >= (uint)t.Rows) throw new FitLMException($"row {row} is outside tensor '{t.Name}' ({t.Rows} rows)");
        long rowBytes = GgmlTypes.RowBytes(t.Type, t.RowLength);
        var loc = _source.Locate(t);
        var (start, length) = DirectFile.AlignedRange(loc.Offset + row * rowBytes, rowBytes);
        var file = FileOf(loc.File);
        var buf = _rowBuffer ?? throw new InvalidOperationException("no row buffer");
        int n = file.Read(start, new Span<byte>(buf.Pointer, (int)length));
        BytesRead += n;
        long skip = loc.Offset + row * rowBytes - start;
        if (n < skip + rowBytes) throw new FitLMException($"{loc.File}: short read of tensor '{t.Name}' row {row}");
        Dequantize.Row(t.Type, new ReadOnlySpan<byte>(buf.Pointer + skip, (int)rowBytes), dst[..t.RowLength]);
    }

    public void Dispose()
    {
        _io.Dispose();
        foreach (var s in _slots) s?.Dispose();
        _rowBuffer?.Dispose();
        foreach (var f in _files.Values) f.Dispose();
        _resident.Dispose();
    }

    /// <summary>A streamed unit: its tensors' places in a slot and the reads (per slot) that fill it.</summary>
    private sealed class StreamUnit
    {
        public required List<(TensorDesc Desc, long OffsetInSlot)> Tensors { get; init; }
        public required long SlotBytes { get; init; }
        public required ReadRequest[][] Requests { get; init; }
        /// <summary>Where each request's bytes go, relative to the slot start (same for both slots).</summary>
        public required long[] RequestOffsets { get; init; }

        public static StreamUnit Build(List<TensorDesc> tensors, IModelSource source, StreamingWeights owner)
        {
            // Sort by file position and merge ranges that are adjacent or nearly so into one read span.
            var located = tensors.Select(t => (t, loc: source.Locate(t))).OrderBy(x => x.loc.File).ThenBy(x => x.loc.Offset).ToList();
            var spans = new List<(string file, long start, long end)>();
            foreach (var (t, loc) in located)
            {
                var (s, len) = DirectFile.AlignedRange(loc.Offset, t.ByteSize);
                if (spans.Count > 0 && spans[^1].file == loc.File && s <= spans[^1].end + (64 << 10))
                    spans[^1] = (loc.File, spans[^1].start, Math.Max(spans[^1].end, s + len));
                else spans.Add((loc.File, s, s + len));
            }
            var spanOffset = new long[spans.Count];
            long total = 0;
            for (int i = 0; i < spans.Count; i++) { spanOffset[i] = total; total += spans[i].end - spans[i].start; }
            var entries = new List<(TensorDesc, long)>();
            foreach (var (t, loc) in located)
            {
                int i = spans.FindIndex(s => s.file == loc.File && loc.Offset >= s.start && loc.Offset + t.ByteSize <= s.end);
                entries.Add((t, spanOffset[i] + loc.Offset - spans[i].start));
            }
            var requests = new ReadRequest[2][];
            var offsets = new List<long>();
            for (int i = 0; i < spans.Count; i++)
                for (long off = spans[i].start; off < spans[i].end; off += ChunkBytes)
                    offsets.Add(spanOffset[i] + off - spans[i].start);
            for (int slot = 0; slot < 2; slot++)
            {
                var list = new List<ReadRequest>();
                for (int i = 0; i < spans.Count; i++)
                    for (long off = spans[i].start; off < spans[i].end; off += ChunkBytes)
                        list.Add(new ReadRequest
                        {
                            File = owner.FileOf(spans[i].file),
                            Offset = off,
                            Length = (int)Math.Min(ChunkBytes, spans[i].end - off),
                            Group = owner._slotReads[slot],
                        });
                requests[slot] = list.ToArray();
            }
            return new StreamUnit { Tensors = entries, SlotBytes = total, Requests = requests, RequestOffsets = offsets.ToArray() };
        }
    }

    private void BindDestinations()
    {
        foreach (var u in _units)
            for (int slot = 0; slot < 2; slot++)
                for (int i = 0; i < u.Requests[slot].Length; i++)
                    u.Requests[slot][i].Destination = _slots[slot].Pointer + u.RequestOffsets[i];
    }

    /// <summary>A matrix whose bytes are read into a stream slot when it is multiplied.</summary>
    private sealed class StreamedMatrix(StreamingWeights owner, TensorDesc t, int unit, long offsetInSlot) : IMatrix
    {
        public string Name => t.Name;
        public int Rows => t.Rows;
        public int Cols => t.RowLength;
        public GgmlType Type => t.Type;

        public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n)
        {
            if (unit < 0) throw new InvalidOperationException($"'{t.Name}' is streamed by rows only");
            byte* p = owner.Acquire(unit) + offsetInSlot;
            MatMul.MatMulBatch(t.Type, p, GgmlTypes.RowBytes(t.Type, t.RowLength), t.Rows, t.RowLength, x, y, n);
        }

        public void ReadRow(int row, Span<float> dst) => owner.ReadRow(t, row, dst);

        public void ReadRows(int first, int count, Span<float> dst)
        {
            if (unit < 0 || (uint)first > (uint)t.Rows || count < 0 || first + count > t.Rows)
            {
                for (int i = 0; i < count; i++) owner.ReadRow(t, first + i, dst.Slice(i * Cols, Cols));
                return;
            }
            // Training reads every row of a matrix in turn: one unit read (then memory), not one read per row.
            long rowBytes = GgmlTypes.RowBytes(t.Type, t.RowLength);
            byte* p = owner.Acquire(unit) + offsetInSlot;
            for (int i = 0; i < count; i++)
                Dequantize.Row(t.Type, new ReadOnlySpan<byte>(p + (first + i) * rowBytes, (int)rowBytes), dst.Slice(i * Cols, Cols));
        }
    }
}
