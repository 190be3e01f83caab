namespace FitLM.Model;

/// <summary>
/// The forward pass of one sequence on an accelerator that holds the weights and the KV cache itself (Backends/Cuda):
/// a <see cref="Transformer"/> made with one hands it each batch of a pass (its own loop splits the input). Tokens and positions arrive checked; the
/// device keeps positions [0, pos) from earlier calls and overwrites from <c>pos</c> on (a rewind needs nothing else).
/// </summary>
public interface IDeviceForward : IDisposable
{
    /// <summary>One line for the user: the device, and what of the model it holds.</summary>
    string Description { get; }

    /// <summary>Positions the device's KV cache holds: those of the last pass's end (a rewind keeps the ones before it).</summary>
    int Length { get; }

    /// <summary>Bytes of device memory the weights, KV cache and activations take.</summary>
    long DeviceBytes { get; }

    /// <summary>Weight bytes copied to the device per forward pass (layers streamed from the host); 0 when every layer is resident.</summary>
    long StreamedBytesPerToken { get; }

    /// <summary>Bytes per second the host can copy to the device (what bounds streamed layers), measured now; 0 where it cannot be measured.</summary>
    double HostToDeviceBandwidth();

    /// <summary>Bytes per second the device's memory moves, measured now (read + write of a copy); 0 where it cannot be measured.</summary>
    double MemoryBandwidth();

    /// <summary>
    /// One batch of the sequence (at most the transformer's MaxBatch tokens; <see cref="Transformer"/> splits longer
    /// inputs): runs tokens at [pos, pos + n) and writes the logits of rows [logitsFrom, n) to <paramref name="logits"/>.
    /// </summary>
    void Forward(ReadOnlySpan<int> tokens, int pos, Span<float> logits, int logitsFrom);

    /// <summary>
    /// Sequences the device keeps a KV cache for at once: slots [0, Sequences), each of the full context (`fitlm serve
    /// --parallel`). The single-sequence <see cref="Forward(ReadOnlySpan{int}, int, Span{float}, int)"/> uses slot 0.
    /// </summary>
    int Sequences { get; }

    /// <summary>Device bytes of one sequence's KV cache (every layer, the full context).</summary>
    long SequenceKvBytes { get; }

    /// <summary>
    /// One pass over the next tokens of several sequences (continuous batching; at most MaxBatch rows in all, slots
    /// distinct): the rows of every slice go through the matrix products together, attention runs per slice over its
    /// slot's cache. Writes the logits of the last row of each slice that wants them, in slice order.
    /// </summary>
    void Forward(ReadOnlySpan<DeviceSlice> slices, Span<float> logits);

    /// <summary>One batch of sequence <paramref name="slot"/>: runs tokens at [pos, pos + n) and writes each row's final hidden state, after the output norm, to <paramref name="hidden"/> [n × Dim].</summary>
    void ForwardHidden(int slot, ReadOnlySpan<int> tokens, int pos, Span<float> hidden);
}

/// <summary>The next tokens of the sequence in KV slot <paramref name="Slot"/>, from position <paramref name="Pos"/>, in a device's batched pass.</summary>
public readonly record struct DeviceSlice(int Slot, ReadOnlyMemory<int> Tokens, int Pos, bool WantLogits);
