using FitLM.Model;

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
/// Naive mode (--stream naive) is the baseline the issue names, a load-every-layer loop: one slot, each streamed layer
/// read from the model file and uploaded synchronously right before it runs, nothing overlapped.
/// </summary>
internal sealed class LayerStreamer : IDisposable
{
    private readonly CudaDevice _device;
    private readonly IModelSource _source;
    private readonly WeightBlock[] _blocks;
    private readonly PinnedBuffer?[] _pinned;
    private readonly DeviceBuffer[] _slots;
    private readonly nint[] _copied, _consumed;
    private long _next, _queued; // sequence numbers: the next streamed layer to run, and copies queued so far

    public bool Naive { get; }
    public int Count => _blocks.Length;
    public long SlotBytes { get; }
    /// <summary>Bytes copied to the device per pass (every streamed layer once).</summary>
    public long BytesPerPass { get; }
    public long PinnedBytes => _pinned.Sum(p => p?.Bytes ?? 0);

    /// <summary>Device memory the slots take for these blocks.</summary>
    public static long SlotMemory(IEnumerable<WeightBlock> blocks, bool naive) =>
        (naive ? 1 : 2) * blocks.Select(b => b.Bytes).DefaultIfEmpty(0).Max();

    public LayerStreamer(CudaDevice device, IModelSource source, IReadOnlyList<WeightBlock> blocks, bool naive)
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
            for (int j = 0; j < _blocks.Length; j++)
            {
                var pinned = _pinned[j] = new PinnedBuffer(_blocks[j].Bytes);
                _blocks[j].Write(source, (offset, bytes) => bytes.CopyTo(pinned.Slice(offset, bytes.Length)));
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
        CudaDevice.CopyAsync(_slots[slot].Pointer, _pinned[j]!, _blocks[j].Bytes, _device.CopyStream);
        CudaDevice.Record(_copied[slot], _device.CopyStream);
    }

    public void Dispose()
    {
        foreach (var e in _copied.Concat(_consumed))
            if (e != 0) CudaDevice.DestroyEvent(e);
        foreach (var s in _slots) s?.Dispose();
        foreach (var p in _pinned) p?.Dispose();
    }
}
