using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;
using FitLM.Runtime;

namespace FitLM.Weights;

/// <summary>
/// Weights as the planner places them: resident ones in memory, streamed ones read from the file with direct I/O
/// each time they are used. Weights are grouped in units (a layer, the output head, an untied embedding) that the
/// forward pass uses in a fixed cyclic order, so while one streamed unit computes in one buffer the next streamed
/// one is read into the other (prefetch), with several reads in flight.
///
/// Placement can change while the model runs, between forward passes (<see cref="ApplyPlacement"/>): a unit moved
/// out frees its memory at once, a unit moved in is read into memory. The matrices handed out stay valid across
/// moves. The two stream slots exist only while some unit is streamed and are sized to the largest streamed unit.
/// </summary>
public sealed unsafe class StreamingWeights : IWeightProvider
{
    private readonly IModelSource _source;
    /// <summary>What never moves: norms, biases and any matrix outside the units.</summary>
    private readonly ResidentWeights _resident;
    private readonly IoQueue _io;
    private readonly Dictionary<string, DirectFile> _files = new();
    /// <summary>Units that stream through the slots, in the forward pass's order (layers, then the head).</summary>
    private readonly List<StreamUnit> _units = new();
    /// <summary>An untied embedding (read by rows only), or null.</summary>
    private readonly StreamUnit? _embedding;
    private readonly Dictionary<string, MovableMatrix> _matrices = new(StringComparer.Ordinal);
    private readonly NativeBuffer?[] _slots = new NativeBuffer?[2];
    private readonly int[] _slotUnit = [-1, -1];
    private readonly ReadGroup[] _slotReads = [new(), new()];
    private int _currentSlot = -1;
    /// <summary>For each streamed unit, the next streamed unit in cyclic order (what prefetch reads next).</summary>
    private int[] _nextStreamed;
    private int _streamedCount;
    /// <summary>Whether a placement was carried out (the constructor's first one sets up slots and order even when nothing moves).</summary>
    private bool _placed;
    private NativeBuffer? _rowBuffer;
    private readonly long _rowBufferBytes;

    /// <summary>Bytes read from storage since load, and how long the compute thread waited for them.</summary>
    public long BytesRead { get; private set; }
    public TimeSpan WaitTime => TimeSpan.FromTicks(_waitTicks);
    private long _waitTicks;

    public StreamMode Mode { get; }

    /// <param name="tensors">every tensor with its placement, as the planner decided; all resident is allowed (no
    /// slots are allocated then), so a model loaded at a generous budget can shrink later</param>
    public StreamingWeights(IModelSource source, IReadOnlyList<TensorPlan> tensors, StreamMode mode)
    {
        _source = source;
        Mode = mode;
        _resident = new ResidentWeights(source);
        _io = new IoQueue(mode == StreamMode.Naive ? 1 : 4);
        _nextStreamed = [];
        try
        {
            var embedding = source.Get("token_embd.weight");
            _rowBufferBytes = DirectFile.AlignedRange(0, embedding.ByteSize / embedding.Rows).Length + 2 * DirectFile.Alignment;
            _embedding = BuildUnits(tensors);
            try
            {
                ApplyPlacement(tensors);
            }
            catch (FitLMException e) when (e.InnerException is FitLMException read)
            {
                throw read; // at load the read's own message says it best
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Weights in memory (fixed and resident units) plus the stream slots and the embedding's row buffer.</summary>
    public long ResidentBytes => _resident.ResidentBytes + AllUnits().Where(u => u.Resident).Sum(u => u.Bytes)
        + _slots.Sum(s => s?.Length ?? 0) + (_rowBuffer?.Length ?? 0);

    /// <summary>Bytes of one stream slot (there are two), 0 while nothing is streamed.</summary>
    public long SlotBytes => _slots[0]?.Length ?? 0;

    /// <summary>Units streamed now (layers, head, untied embedding).</summary>
    public int StreamedUnits => AllUnits().Count(u => !u.Resident);

    /// <summary>Whether layer <paramref name="layer"/>'s matrices are in memory now.</summary>
    public bool IsLayerResident(int layer) => _units.Any(u => u.Name == LayerName(layer) && u.Resident);

    /// <summary>Whether the output head (the tied embedding, when it is the head) is in memory.</summary>
    public bool IsHeadResident => _units.Any(u => u.Name == HeadName && u.Resident);

    private const string HeadName = "the output head";

    public bool Has(string name) => _source.Find(name) != null;

    public float[] Vector(string name) => _resident.Vector(name);

    public IMatrix Matrix(string name) => _matrices.TryGetValue(name, out var m) ? m : _resident.Matrix(name);

    /// <summary>
    /// Moves units to the placement of <paramref name="plan"/> (a plan from <see cref="Memory.Planner"/>, e.g.
    /// Planner.Replace for a new budget). Call it between forward passes, never during one. Units moved out free their
    /// memory first (RSS drops), then the slots take the size of the largest unit left streamed, then units moved in
    /// are read. A read error stops there: that unit and the ones not yet read stay streamed, everything stays usable,
    /// and a FitLMException says which unit failed. Tensors the plan does not name keep their placement.
    /// </summary>
    public void ApplyPlacement(IReadOnlyList<TensorPlan> plan)
    {
        var placement = new Dictionary<string, Placement>(StringComparer.Ordinal);
        foreach (var t in plan) placement[t.Tensor.Name] = t.Placement;
        bool WantsResident(StreamUnit u)
        {
            bool known = false;
            foreach (var m in u.Matrices)
                if (placement.TryGetValue(m.Name, out var p))
                {
                    if (p == Placement.Streamed) return false;
                    known = true;
                }
            return known || u.Resident;
        }
        var all = AllUnits().ToList();
        var wanted = all.ToDictionary(u => u, WantsResident);
        if (_placed && all.All(u => u.Resident == wanted[u])) return; // nothing moves: keep what the slots hold
        DiscardSlots();

        // Out first: what a shrink frees is back with the OS before anything new is allocated.
        bool freed = false;
        foreach (var u in all.Where(u => u.Resident && !wanted[u]))
        {
            u.MoveOut();
            freed = true;
        }
        ResizeSlots(_units.Where(u => !u.Resident && !wanted[u]).Select(u => u.SlotBytes).DefaultIfEmpty(0).Max());
        if (freed) HeapTrim.Native();

        FitLMException? failure = null;
        foreach (var u in all.Where(u => !u.Resident && wanted[u]))
        {
            try
            {
                u.MoveIn(_source);
            }
            catch (FitLMException e)
            {
                failure = e;
                break;
            }
        }
        // The slots must hold every unit still streamed (one that failed to move in included).
        ResizeSlots(_units.Where(u => !u.Resident).Select(u => u.SlotBytes).DefaultIfEmpty(0).Max());
        UpdateStreamOrder();
        bool embeddingStreamed = AllUnits().Any(u => !u.Resident && u.Matrices.Any(m => m.Name == "token_embd.weight"));
        if (embeddingStreamed && _rowBuffer == null) _rowBuffer = new NativeBuffer(_rowBufferBytes, DirectFile.Alignment);
        else if (!embeddingStreamed && _rowBuffer != null)
        {
            _rowBuffer.Dispose();
            _rowBuffer = null;
        }
        _placed = true;
        if (failure != null) throw failure;
    }

    /// <summary>
    /// <paramref name="plan"/>'s tensors with the placement each has now: after an <see cref="ApplyPlacement"/> that
    /// failed part way, what the model's plan should say (the units that could not be read stay streamed).
    /// </summary>
    public IReadOnlyList<TensorPlan> PlacementNow(IReadOnlyList<TensorPlan> plan) =>
        plan.Select(t => _matrices.TryGetValue(t.Tensor.Name, out var m)
            ? t with { Placement = m.IsResident ? Placement.Resident : Placement.Streamed }
            : t).ToList();

    private IEnumerable<StreamUnit> AllUnits() => _embedding == null ? _units : _units.Append(_embedding);

    private static string LayerName(int layer) => $"layer {layer}";

    private DirectFile FileOf(string path)
    {
        if (!_files.TryGetValue(path, out var f)) _files[path] = f = DirectFile.Open(path);
        return f;
    }

    /// <summary>
    /// Groups every movable matrix into units in the order the forward pass uses them: each layer's matrices, then
    /// the output head (a tied embedding is the head). An untied embedding is only ever read by rows: its own unit,
    /// outside the cycle (returned). Vectors and any other tensor stay with the fixed resident weights.
    /// </summary>
    private StreamUnit? BuildUnits(IReadOnlyList<TensorPlan> tensors)
    {
        bool tied = _source.Find("output.weight") == null;
        var movable = tensors.Where(t => t.Tensor.Shape.Length == 2 && !t.Tensor.Name.EndsWith(".ffn_bundle.weight", StringComparison.Ordinal)).ToList();
        var layers = movable.Where(t => t.Layer >= 0).GroupBy(t => t.Layer).OrderBy(g => g.Key);
        foreach (var g in layers)
            _units.Add(StreamUnit.Build(_units.Count, LayerName(g.Key), g.Select(x => x.Tensor).ToList(), _source, this, FileOf, _slotReads));
        var head = movable.Where(t => t.Layer < 0 && (t.Tensor.Name == "output.weight" || (tied && t.Tensor.Name == "token_embd.weight")))
            .Select(t => t.Tensor).ToList();
        if (head.Count > 0) _units.Add(StreamUnit.Build(_units.Count, HeadName, head, _source, this, FileOf, _slotReads));
        StreamUnit? embedding = null;
        if (!tied && movable.FirstOrDefault(t => t.Tensor.Name == "token_embd.weight") is { } e)
            embedding = StreamUnit.Build(-1, "the token embedding", [e.Tensor], _source, this, FileOf, _slotReads);
        foreach (var u in _units.Append(embedding))
            if (u != null)
                foreach (var m in u.Matrices) _matrices[m.Name] = m;
        return embedding;
    }

    /// <summary>Waits for reads still landing in the slots and forgets what the slots hold (placement is about to change).</summary>
    private void DiscardSlots()
    {
        for (int slot = 0; slot < 2; slot++)
        {
            try { _slotReads[slot].Wait(); }
            catch (Exception) { } // a prefetch that failed is thrown away with its data; a later read reports the fault
            _slotUnit[slot] = -1;
        }
        _currentSlot = -1;
    }

    /// <summary>Gives both slots <paramref name="bytes"/> (none for 0), freeing the old ones first, and points every unit's reads at them.</summary>
    private void ResizeSlots(long bytes)
    {
        if ((_slots[0]?.Length ?? 0) == bytes) return;
        for (int slot = 0; slot < 2; slot++)
        {
            _slots[slot]?.Dispose();
            _slots[slot] = null;
            _slotUnit[slot] = -1;
        }
        _currentSlot = -1;
        if (bytes == 0) return;
        for (int slot = 0; slot < 2; slot++)
        {
            var buffer = new NativeBuffer(bytes, DirectFile.Alignment);
            _slots[slot] = buffer;
            foreach (var u in _units) u.Bind(slot, buffer.Pointer);
        }
    }

    /// <summary>The prefetch order: each streamed unit's successor is the next streamed unit in the cycle; resident ones are skipped.</summary>
    private void UpdateStreamOrder()
    {
        var next = new int[_units.Count];
        Array.Fill(next, -1);
        var streamed = _units.Where(u => !u.Resident).Select(u => u.Index).ToList();
        for (int i = 0; i < streamed.Count; i++) next[streamed[i]] = streamed[(i + 1) % streamed.Count];
        _nextStreamed = next;
        _streamedCount = streamed.Count;
    }

    /// <summary>Makes unit <paramref name="u"/> ready in a slot and returns its base address; starts reading the next streamed unit.</summary>
    internal byte* Acquire(int u)
    {
        // The matrices of one unit are used one after another: the unit in use stays where it is.
        if (_currentSlot >= 0 && _slotUnit[_currentSlot] == u) return _slots[_currentSlot]!.Pointer;
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
        if (Mode == StreamMode.Prefetch && _streamedCount > 2)
        {
            int next = _nextStreamed[u], other = 1 - slot;
            if (_slotUnit[other] != next)
            {
                if (!_slotReads[other].IsComplete) WaitFor(other);
                StartRead(other, next);
            }
        }
        return _slots[slot]!.Pointer;
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
        foreach (var r in _units[u].Requests(slot))
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
        DiscardSlots(); // no read may still be writing into a slot that is freed below
        _io.Dispose();
        foreach (var s in _slots) s?.Dispose();
        _rowBuffer?.Dispose();
        foreach (var f in _files.Values) f.Dispose();
        foreach (var u in AllUnits()) u.MoveOut();
        _resident.Dispose();
    }
}
