using FitLM.KvCache;

namespace FitLM.Model;

/// <summary>
/// A sequence whose KV cache lives on the device (<see cref="IModelDevice"/>, slot <see cref="Slot"/>): what
/// <see cref="Transformer.CreateSequenceKv"/> hands the server for each request when the passes run on a GPU. It
/// only counts positions; the device appends and attends itself, so the CPU store's <see cref="Append"/> and
/// <see cref="Attend"/> are never called on it. Disposing gives the slot back.
/// </summary>
internal sealed class DeviceSequenceKv(int slot, long bytes, Action<int> release) : IKvStore
{
    private bool _disposed;

    public int Slot { get; } = slot;
    public int Length { get; internal set; }
    public long Bytes { get; } = bytes;

    /// <summary>The device overwrites positions from a pass's first one on: forgetting needs nothing else.</summary>
    public void Truncate(int pos) => Length = Math.Min(Length, Math.Max(0, pos));

    public void Append(int layer, int pos, in KvRows rows) => throw OnDevice();
    public void Attend(int layer, int pos, int n, ReadOnlySpan<float> q, Span<float> output) => throw OnDevice();

    private static InvalidOperationException OnDevice() => new("this sequence's KV cache is on the GPU: the device appends and attends");

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        release(Slot);
    }
}
