using System.Runtime.InteropServices;

namespace FitLM.Backends.Cuda;

/// <summary>
/// A pass's uploads and its logits through pinned memory (FITLM_CUDA_PINNED_IO=1, a probe, off by default): the positions
/// and the embedding rows are staged in pinned memory and copied on the compute stream while the host goes on (a
/// decode step then queues its copies and launches its graph without waiting on either), and the logits are copied into
/// pinned memory. Without it each is a synchronous copy from pageable memory, which the driver stages itself. The staging
/// area is reused, at the next pass's start, only after the copies out of it have run (an event recorded after them).
/// </summary>
internal sealed partial class CudaBackend
{
    private sealed class PinnedIo : IDisposable
    {
        public readonly PinnedBuffer Stage, Logits;
        public readonly long RowsOffset;
        public readonly nint Copied = CudaDevice.CreateEvent();
        public bool Recorded;

        public PinnedIo(int batch, int dim, int vocab)
        {
            RowsOffset = (batch * sizeof(int) + 15) / 16 * 16;
            Stage = new PinnedBuffer(RowsOffset + (long)batch * dim * sizeof(float));
            Logits = new PinnedBuffer((long)Math.Min(batch, CudaMatVec.BatchTokens) * vocab * sizeof(float)); // a decode step's rows
        }

        public void Dispose()
        {
            CudaDevice.DestroyEvent(Copied);
            Stage.Dispose();
            Logits.Dispose();
        }
    }

    private PinnedIo? _io;

    /// <summary>The staging area, once the copies out of it queued last (the previous pass's) have run.</summary>
    private PinnedIo Staging()
    {
        var io = _io!;
        if (io.Recorded) CudaDevice.WaitOnHost(io.Copied);
        io.Recorded = false;
        return io;
    }

    private void UploadPositions(ReadOnlySpan<int> positions)
    {
        if (_io == null)
        {
            CudaDevice.UploadTo<int>(_pos.Pointer, positions);
            return;
        }
        var io = Staging();
        positions.CopyTo(MemoryMarshal.Cast<byte, int>(io.Stage.Slice(0, positions.Length * sizeof(int))));
        CudaDevice.CopyAsync(_pos.Pointer, io.Stage, positions.Length * sizeof(int), _device.Stream);
        CudaDevice.Record(io.Copied, _device.Stream);
        io.Recorded = true;
    }

    /// <summary>
    /// Where Embed writes n rows of embeddings before <see cref="UploadEmbeddings"/>: the staging area (free since
    /// <see cref="UploadPositions"/> waited at the pass's start), or a managed array.
    /// </summary>
    private Span<float> EmbeddingRows(int n) => _io == null ? _embedRows.AsSpan(0, n * _c.Dim)
        : MemoryMarshal.Cast<byte, float>(_io.Stage.Slice(_io.RowsOffset, n * _c.Dim * sizeof(float)));

    private void UploadEmbeddings(ulong x, int n)
    {
        long bytes = (long)n * _c.Dim * sizeof(float);
        if (_io == null)
        {
            CudaDevice.UploadTo<float>(x, _embedRows.AsSpan(0, n * _c.Dim));
            return;
        }
        CudaDevice.CopyAsync(x, _io.Stage, bytes, _device.Stream, _io.RowsOffset);
        CudaDevice.Record(_io.Copied, _device.Stream);
        _io.Recorded = true;
    }

    private void DownloadLogits(Span<float> logits)
    {
        long bytes = (long)logits.Length * sizeof(float);
        if (_io == null || bytes > _io.Logits.Bytes)
        {
            CudaDevice.DownloadFrom(_logits.Pointer, logits);
            return;
        }
        _device.Download(_io.Logits, _logits.Pointer, bytes);
        MemoryMarshal.Cast<byte, float>(_io.Logits.Slice(0, (int)bytes)).CopyTo(logits);
    }
}
