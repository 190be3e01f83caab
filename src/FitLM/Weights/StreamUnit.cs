using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;

namespace FitLM.Weights;

/// <summary>
/// One unit of placement (a layer's matrices, the output head, or an untied embedding) that is either resident
/// in memory or streamed through the stream slots, and can move between the two between forward passes. Its slot
/// layout and its reads are computed once at load, so a move costs only the memory and the reads themselves.
/// </summary>
internal sealed unsafe class StreamUnit
{
    private const int ChunkBytes = 4 << 20;

    private readonly List<MovableMatrix> _matrices = new();
    private readonly ReadRequest[][] _requests;
    /// <summary>Where each request's bytes go, relative to the slot start (the same for both slots).</summary>
    private readonly long[] _requestOffsets;
    private ResidentWeights? _memory;

    /// <summary>Position in the forward pass's cyclic order (layers, then the head); -1 for an untied embedding.</summary>
    public int Index { get; }
    public string Name { get; }
    /// <summary>An untied embedding: only ever read by rows, so it never goes through a slot.</summary>
    public bool RowsOnly => Index < 0;
    public IReadOnlyList<MovableMatrix> Matrices => _matrices;
    /// <summary>Bytes the unit holds while resident (its tensors as stored).</summary>
    public long Bytes { get; }
    /// <summary>Bytes a stream slot needs to hold the unit (its tensors' page-aligned ranges, merged).</summary>
    public long SlotBytes { get; }
    public bool Resident => _memory != null;

    private StreamUnit(int index, string name, long bytes, long slotBytes, ReadRequest[][] requests, long[] requestOffsets)
    {
        Index = index;
        Name = name;
        Bytes = bytes;
        SlotBytes = slotBytes;
        _requests = requests;
        _requestOffsets = requestOffsets;
    }

    /// <summary>The reads that fill slot <paramref name="slot"/> with this unit.</summary>
    public ReadRequest[] Requests(int slot) => _requests[slot];

    /// <summary>Points this unit's reads for <paramref name="slot"/> at the slot's (new) buffer.</summary>
    public void Bind(int slot, byte* slotStart)
    {
        for (int i = 0; i < _requests[slot].Length; i++) _requests[slot][i].Destination = slotStart + _requestOffsets[i];
    }

    /// <summary>
    /// Reads the unit into memory with the source's reads (as <see cref="ResidentWeights"/> does); from then on its
    /// matrices multiply from memory. A failed read leaves the unit streamed and throws a FitLMException.
    /// </summary>
    public void MoveIn(IModelSource source)
    {
        if (_memory != null) return;
        var memory = new ResidentWeights(source);
        try
        {
            foreach (var m in _matrices) memory.Matrix(m.Name);
        }
        catch (Exception e) when (e is FitLMException or IOException or UnauthorizedAccessException or OutOfMemoryException)
        {
            memory.Dispose();
            throw new FitLMException($"{Name} stays streamed: reading it into memory failed: {e.Message}", e);
        }
        foreach (var m in _matrices) m.MoveTo((ResidentMatrix)memory.Matrix(m.Name));
        _memory = memory;
    }

    /// <summary>Frees the unit's memory at once; its matrices stream from now on.</summary>
    public void MoveOut()
    {
        if (_memory == null) return;
        foreach (var m in _matrices) m.MoveTo(null);
        _memory.Dispose();
        _memory = null;
    }

    /// <summary>
    /// A unit of <paramref name="tensors"/>: sorted by file position, adjacent (or nearly adjacent) ranges merged
    /// into one read span, read in chunks of up to 4 MiB: large contiguous reads are what storage serves fastest.
    /// </summary>
    public static StreamUnit Build(int index, string name, List<TensorDesc> tensors, IModelSource source, StreamingWeights owner,
        Func<string, DirectFile> fileOf, ReadGroup[] slotReads)
    {
        long bytes = tensors.Sum(t => t.ByteSize);
        if (index < 0)
        {
            var rowsOnly = new StreamUnit(index, name, bytes, 0, [[], []], []);
            foreach (var t in tensors) rowsOnly._matrices.Add(new MovableMatrix(owner, t, rowsOnly, 0));
            return rowsOnly;
        }
        var located = tensors.Select(t => (t, loc: source.Locate(t))).OrderBy(x => x.loc.File, StringComparer.Ordinal).ThenBy(x => x.loc.Offset).ToList();
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
        var offsets = new List<long>();
        for (int i = 0; i < spans.Count; i++)
            for (long off = spans[i].start; off < spans[i].end; off += ChunkBytes)
                offsets.Add(spanOffset[i] + off - spans[i].start);
        var requests = new ReadRequest[2][];
        for (int slot = 0; slot < 2; slot++)
        {
            var list = new List<ReadRequest>();
            for (int i = 0; i < spans.Count; i++)
                for (long off = spans[i].start; off < spans[i].end; off += ChunkBytes)
                    list.Add(new ReadRequest
                    {
                        File = fileOf(spans[i].file),
                        Offset = off,
                        Length = (int)Math.Min(ChunkBytes, spans[i].end - off),
                        Group = slotReads[slot],
                    });
            requests[slot] = list.ToArray();
        }
        var unit = new StreamUnit(index, name, bytes, total, requests, offsets.ToArray());
        foreach (var (t, loc) in located)
        {
            int i = spans.FindIndex(s => s.file == loc.File && loc.Offset >= s.start && loc.Offset + t.ByteSize <= s.end);
            unit._matrices.Add(new MovableMatrix(owner, t, unit, spanOffset[i] + loc.Offset - spans[i].start));
        }
        return unit;
    }
}
