using FitLM.Model;
using FitLM.Runtime;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The layers that do not fit the GPU budget, streamed into device slots as the forward pass reaches them (issue 16,
/// after FlexGen and LLM in a flash's GPU case). Each streamed layer's block waits in pinned host memory; two slots
/// take turns: while the kernels run layer g from one slot, the copy engine fills the other with layer g + 1 on its
/// own stream, and the copy of layer g + 2 into the first slot waits (on the GPU, through an event) until layer g's
/// kernels are done with it. The order wraps from the last streamed layer to the first, so the next token's first
/// layers are already copying while this token finishes. A step then costs about max(copy, compute); the copies alone
/// bound it at streamed bytes / host-to-device bandwidth.
///
/// Where the host's budget (--memory) cannot hold a pinned copy of every streamed layer, the first layers keep theirs
/// and the rest are read from the model file for every pass into one of two pinned staging buffers, a slot's worth
/// each, while the GPU runs the layers before them (the thread that queues the kernels waits while
/// <see cref="ReaderThreads"/> workers read; a buffer is refilled once the copy out of it has finished). Those layers
/// then move at the rate the readers read and prepare them: llama-7b Q4_0 on the device machine (16 cores, four
/// readers) 8.46 GB/s from the page cache, where one thread through WeightBlock.Write managed about 1.4 and the pinned
/// layers reach the PCIe copy's 55 (docs/cuda.md, runs 32-35).
///
/// Naive mode (--stream naive) is the baseline the issue names, a load-every-layer loop: one slot, each streamed layer
/// read from the model file and uploaded synchronously right before it runs, nothing overlapped.
/// </summary>
internal sealed class LayerStreamer : IDisposable
{
    private readonly CudaDevice _device;
    private readonly IModelSource _source;
    private readonly WeightBlock[] _blocks;
    private readonly PinnedBuffer?[] _pinned;
    // Layers without a pinned copy: the staging buffer of each slot, and the arrays a block is read and converted in.
    private readonly PinnedBuffer[] _staging = [];
    private readonly WeightBlock.WriteScratch _scratch = new();
    private readonly DeviceBuffer[] _slots;
    private readonly nint[] _copied, _consumed;
    private long _next, _queued; // sequence numbers: the next streamed layer to run, and copies queued so far

    public bool Naive { get; }
    public int Count => _blocks.Length;
    public long SlotBytes { get; }
    /// <summary>Bytes copied to the device per pass (every streamed layer once).</summary>
    public long BytesPerPass { get; }
    public long PinnedBytes => _pinned.Sum(p => p?.Bytes ?? 0) + _staging.Sum(p => p.Bytes);
    /// <summary>Streamed layers with a pinned copy (the first ones); the others are read from the file every pass.</summary>
    public int PinnedLayers { get; }
    /// <summary>Bytes read from the model file per pass: the streamed layers without a pinned copy.</summary>
    public long FileBytesPerPass => _blocks[PinnedLayers..].Sum(b => b.Bytes);

    /// <summary>Device memory the slots take for these blocks.</summary>
    public static long SlotMemory(IEnumerable<WeightBlock> blocks, bool naive) =>
        (naive ? 1 : 2) * blocks.Select(b => b.Bytes).DefaultIfEmpty(0).Max();

    /// <summary>
    /// Threads that write a block from the file (<see cref="WeightBlock.WriteTo"/>'s workers): a quarter of the cores, at
    /// most four.
    /// </summary>
    public static readonly int ReaderThreads = Math.Clamp(Environment.ProcessorCount / 4, 1, 4);

    /// <summary>Host bytes the readers' arrays take while a block is written (each worker reads a chunk in).</summary>
    public static long ReadScratchBytes(IReadOnlyList<WeightBlock> blocks) => ReaderThreads * blocks.Max(b => b.ReadScratchBytes);

    /// <summary>Host bytes the layers read from the file need: a staging buffer per slot, and the arrays a block is read in.</summary>
    public static long StagingBytes(IReadOnlyList<WeightBlock> blocks) => 2 * blocks.Max(b => b.Bytes) + ReadScratchBytes(blocks);

    /// <summary>
    /// How many of the streamed <paramref name="blocks"/>, first to last, keep a pinned copy within
    /// <paramref name="hostBudget"/> bytes: every one when all fit beside the arrays a block is written in; else as many
    /// as fit beside the staging of the rest; -1 when not even that fits.
    /// </summary>
    public static int PinnedLayersFor(IReadOnlyList<WeightBlock> blocks, long hostBudget)
    {
        long scratch = ReadScratchBytes(blocks);
        if (blocks.Sum(b => b.Bytes) + scratch <= hostBudget) return blocks.Count;
        long left = hostBudget - StagingBytes(blocks);
        if (left < 0) return -1;
        int n = 0;
        while (n < blocks.Count && blocks[n].Bytes <= left) left -= blocks[n++].Bytes;
        return n;
    }

    /// <summary>The refusal when <paramref name="hostBudget"/> cannot hold even the staging of layers read from the file.</summary>
    public static FitLMException TooLittleHostMemory(IReadOnlyList<WeightBlock> blocks, long hostBudget) =>
        new($"--memory leaves {ProcessMemory.Format(Math.Max(0, hostBudget))} of host memory for streaming layers to the GPU, less than the " +
            $"{ProcessMemory.Format(StagingBytes(blocks))} of staging that reading them from the model file needs: give a larger --memory or --gpu-memory");

    /// <param name="hostBudget">Host bytes for the pinned copies (what --memory leaves them): layers past it are read from the file every pass.</param>
    public LayerStreamer(CudaDevice device, IModelSource source, IReadOnlyList<WeightBlock> blocks, bool naive, long hostBudget = long.MaxValue)
    {
        _device = device;
        _source = source;
        _blocks = [.. blocks];
        Naive = naive;
        SlotBytes = _blocks.Max(b => b.Bytes);
        BytesPerPass = _blocks.Sum(b => b.Bytes);
        _pinned = new PinnedBuffer?[_blocks.Length];
        _slots = new DeviceBuffer[naive ? 1 : 2];
        _copied = new nint[_slots.Length];
        _consumed = new nint[_slots.Length];
        try
        {
            for (int i = 0; i < _slots.Length; i++)
            {
                _slots[i] = device.Allocate(SlotBytes);
                _copied[i] = CudaDevice.CreateEvent();
                _consumed[i] = CudaDevice.CreateEvent();
            }
            if (naive) return;
            PinnedLayers = PinnedLayersFor(_blocks, hostBudget);
            if (PinnedLayers < 0) throw TooLittleHostMemory(_blocks, hostBudget);
            if (PinnedLayers < _blocks.Length) _staging = [new PinnedBuffer(SlotBytes), new PinnedBuffer(SlotBytes)];
            for (int j = 0; j < PinnedLayers; j++)
            {
                var pinned = _pinned[j] = new PinnedBuffer(_blocks[j].Bytes);
                _blocks[j].WriteTo(source, pinned.Memory, _scratch, ReaderThreads);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// The device address of streamed layer <paramref name="j"/>'s block, for the kernels queued next on the compute
    /// stream (which waits for its copy). Layers come in order, each followed by <see cref="End"/>.
    /// </summary>
    public ulong Begin(int j)
    {
        if (Naive)
        {
            ulong slot = _slots[0].Pointer;
            // A synchronous copy on the legacy stream: it waits for the kernels still reading the slot, and they for it.
            _blocks[j].Write(_source, (offset, bytes) => CudaDevice.UploadTo(slot + (ulong)offset, bytes));
            return slot;
        }
        long g = _next;
        if (g % Count != j) throw new InvalidOperationException($"streamed layer {j} asked for out of order (expected {g % Count})");
        while (_queued <= g + 1) Queue(_queued++);
        CudaDevice.Wait(_device.Stream, _copied[g % 2]);
        return _slots[g % 2].Pointer;
    }

    /// <summary>Streamed layer <paramref name="j"/>'s kernels are queued: its slot is free once they finish; the copy two ahead is queued behind them.</summary>
    public void End(int j)
    {
        if (Naive) return;
        long g = _next++;
        CudaDevice.Record(_consumed[g % 2], _device.Stream);
        while (_queued <= _next + 1) Queue(_queued++);
    }

    private void Queue(long q)
    {
        int slot = (int)(q % 2), j = (int)(q % Count);
        if (q >= 2) CudaDevice.Wait(_device.CopyStream, _consumed[slot]);
        var from = _pinned[j];
        if (from == null)
        {
            // From the file, into this slot's staging buffer once the copy that last read it (q - 2's) has finished.
            if (q >= 2) CudaDevice.WaitOnHost(_copied[slot]);
            from = _staging[slot];
            _blocks[j].WriteTo(_source, from.Memory, _scratch, ReaderThreads);
        }
        CudaDevice.CopyAsync(_slots[slot].Pointer, from, _blocks[j].Bytes, _device.CopyStream);
        CudaDevice.Record(_copied[slot], _device.CopyStream);
    }

    public void Dispose()
    {
        foreach (var e in _copied.Concat(_consumed))
            if (e != 0) CudaDevice.DestroyEvent(e);
        foreach (var s in _slots) s?.Dispose();
        foreach (var p in _pinned) p?.Dispose();
        foreach (var p in _staging) p.Dispose();
    }
}
