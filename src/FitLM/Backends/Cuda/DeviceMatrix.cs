using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// A weight matrix as the GPU kernels read it: in its GGUF block layout where a kernel reads that type
/// (<see cref="CudaMatVec.Types"/>; Q4_0, Q8_0 and Q6_K rearranged, <see cref="SplitLayout"/>), else dequantized to float32 (exact, four bytes a weight: the K-quants Q2_K..Q5_K
/// and the legacy Q4_1/Q5_x have no GPU kernel yet), at <see cref="Offset"/> bytes into its <see cref="WeightBlock"/>.
/// </summary>
internal sealed record DeviceMatrix(TensorDesc Tensor, GgmlType Type, int Rows, int Cols, long RowBytes, long Offset)
{
    public long Bytes => RowBytes * Rows;
}

/// <summary>
/// The matrices of one layer (or of the output head) laid out back to back in one block of device-format bytes,
/// each 256-byte aligned: a resident block is one device allocation; a streamed block is the same bytes in pinned
/// host memory, copied whole into a device slot before the layer runs (one copy per layer, not one per matrix).
/// </summary>
internal sealed class WeightBlock
{
    /// <summary>Host bytes read per step while writing a block: whole rows, about this much.</summary>
    private const long ChunkBytes = 16 << 20;
    private const long Alignment = 256;

    private readonly Dictionary<string, DeviceMatrix> _matrices = [];

    public long Bytes { get; }
    public IEnumerable<DeviceMatrix> Matrices => _matrices.Values;

    /// <summary>
    /// Host bytes one <see cref="WriteTo"/> worker reads a chunk into: whole rows as the file stores them, about
    /// <see cref="ChunkBytes"/> (0 where every matrix is read straight into place).
    /// </summary>
    public long ReadScratchBytes => _matrices.Values.Where(m => !ReadInPlace(m)).Select(m =>
    {
        var (sourceRow, rows) = Chunk(m.Tensor);
        return rows * sourceRow;
    }).DefaultIfEmpty(0).Max();

    /// <summary>Whether the GPU reads <paramref name="m"/> as the file stores it (neither split nor dequantized): <see cref="WriteTo"/> reads it straight into place.</summary>
    private static bool ReadInPlace(DeviceMatrix m) => m.Type == m.Tensor.Type && !SplitLayout.Applies(m.Type);

    /// <summary>A row's bytes as the file stores <paramref name="t"/>, and the whole rows read at a time (about <see cref="ChunkBytes"/>).</summary>
    private static (long RowBytes, int Rows) Chunk(TensorDesc t)
    {
        long sourceRow = GgmlTypes.RowBytes(t.Type, t.RowLength);
        return (sourceRow, (int)Math.Clamp(ChunkBytes / sourceRow, 1, t.Rows));
    }

    /// <summary>The arrays <see cref="Write"/> reads and converts chunks in, kept by a caller that writes blocks again and again.</summary>
    public sealed class WriteScratch
    {
        internal byte[] Bytes = [], Split = [];
        internal float[] Floats = [];
        /// <summary><see cref="WriteTo"/>'s read array of each worker.</summary>
        internal byte[]?[] Reads = [];
    }

    public WeightBlock(IEnumerable<TensorDesc> tensors)
    {
        long offset = 0;
        foreach (var t in tensors)
        {
            if (t.Shape.Length != 2) throw new FitLMException($"tensor '{t.Name}' is not a matrix");
            bool raw = CudaMatVec.Supports(t.Type);
            long rowBytes = raw ? GgmlTypes.RowBytes(t.Type, t.RowLength) : (long)t.RowLength * sizeof(float);
            var m = new DeviceMatrix(t, raw ? t.Type : GgmlType.F32, t.Rows, t.RowLength, rowBytes, offset);
            _matrices[t.Name] = m;
            offset += (m.Bytes + Alignment - 1) / Alignment * Alignment;
        }
        Bytes = offset;
    }

    public DeviceMatrix this[string name] => _matrices[name];

    /// <summary>The matrix named <paramref name="name"/>, or null when the block does not hold it.</summary>
    public DeviceMatrix? Find(string name) => _matrices.GetValueOrDefault(name);

    /// <summary>
    /// The block's bytes from <paramref name="source"/> straight into <paramref name="destination"/> (a pinned copy or a
    /// staging buffer): types stored as the GPU reads them in one read each, split types read a chunk at a time and
    /// rearranged into place, the others dequantized into place; no copy of each chunk after it. A llama-7b Q4_0 layer on
    /// this project's build machine, layers 8-19 alternating: 1.84-2.85 GB/s against 0.71-2.30 for <see cref="Write"/>
    /// through a sink (its read, rearrangement and copy of each chunk measured 4.3-6, 3.3-8 and 5-10 GB/s alone).
    /// </summary>
    /// <remarks><paramref name="threads"/> workers take the chunks in turn, each with its own read array
    /// (<see cref="WriteScratch"/> keeps them): a step that reads layers from the file (LayerStreamer) waits for them. On
    /// the device machine (16 cores, H100; run 35) llama-7b Q4_0 with --gpu-memory 2GiB --memory 1024MiB decoded at 3.09
    /// tok/s with four workers against 1.08 with one and 0.84 through <see cref="Write"/>; `bench` put the file's rate at
    /// 8.46 GB/s.</remarks>
    public void WriteTo(IModelSource source, Memory<byte> destination, WriteScratch scratch, int threads = 1)
    {
        if (destination.Length < Bytes) throw new ArgumentException($"{destination.Length} bytes do not hold the block's {Bytes}", nameof(destination));
        var chunks = _chunks ??= Chunks();
        if (chunks.Length == 0) return;
        threads = Math.Clamp(threads, 1, chunks.Length);
        if (scratch.Reads.Length < threads) Array.Resize(ref scratch.Reads, threads);
        if (threads == 1)
        {
            foreach (var c in chunks) WriteChunk(source, c.M, c.Row, c.Rows, destination.Span, ref scratch.Reads[0]);
            return;
        }
        int next = -1;
        try
        {
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, w =>
            {
                for (int i = Interlocked.Increment(ref next); i < chunks.Length; i = Interlocked.Increment(ref next))
                    WriteChunk(source, chunks[i].M, chunks[i].Row, chunks[i].Rows, destination.Span, ref scratch.Reads[w]);
            });
        }
        catch (AggregateException e) when (e.InnerExceptions.Count > 0)
        {
            // A read that fails (a truncated file) reaches the caller as the one-line error it is, as with one thread.
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
        }
    }

    private (DeviceMatrix M, int Row, int Rows)[]? _chunks;

    /// <summary><see cref="WriteTo"/>'s units of work: a matrix stored as the GPU reads it in one read, the others a chunk of whole rows at a time.</summary>
    private (DeviceMatrix M, int Row, int Rows)[] Chunks()
    {
        var chunks = new List<(DeviceMatrix M, int Row, int Rows)>();
        foreach (var m in _matrices.Values)
        {
            var t = m.Tensor;
            if (ReadInPlace(m)) { chunks.Add((m, 0, t.Rows)); continue; }
            int rowsPerChunk = Chunk(t).Rows;
            for (int r0 = 0; r0 < t.Rows; r0 += rowsPerChunk) chunks.Add((m, r0, Math.Min(rowsPerChunk, t.Rows - r0)));
        }
        return [.. chunks];
    }

    /// <summary>Rows [r0, r0 + rows) of <paramref name="m"/> into their place in the block: read straight there, or read into <paramref name="read"/> and rearranged or dequantized there.</summary>
    private static void WriteChunk(IModelSource source, DeviceMatrix m, int r0, int rows, Span<byte> block, ref byte[]? read)
    {
        var t = m.Tensor;
        var matrix = block.Slice((int)m.Offset, (int)m.Bytes);
        var (sourceRow, rowsPerChunk) = Chunk(t);
        if (ReadInPlace(m))
        {
            source.Read(t, r0 * sourceRow, matrix.Slice((int)(r0 * sourceRow), (int)(rows * sourceRow)));
            return;
        }
        long bytes = rows * sourceRow;
        if (read == null || read.Length < bytes) read = new byte[rowsPerChunk * sourceRow];
        var chunk = read.AsSpan(0, (int)bytes);
        source.Read(t, r0 * sourceRow, chunk);
        if (m.Type == t.Type)
        {
            SplitLayout.WriteInto(t.Type, t.Rows, t.RowLength, r0, rows, chunk, matrix);
            return;
        }
        var floats = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(matrix.Slice((int)(r0 * m.RowBytes), (int)(rows * m.RowBytes)));
        for (int r = 0; r < rows; r++)
            Dequantize.Row(t.Type, chunk.Slice((int)(r * sourceRow), (int)sourceRow), floats.Slice(r * t.RowLength, t.RowLength));
    }

    /// <summary>
    /// Produces the block's bytes from <paramref name="source"/> in chunks of whole rows: <paramref name="sink"/> gets each
    /// chunk with its offset in the block (an upload to the device, or a copy into pinned memory).
    /// </summary>
    public void Write(IModelSource source, Action<long, ReadOnlySpan<byte>> sink, WriteScratch? scratch = null)
    {
        scratch ??= new WriteScratch();
        ref byte[] bytes = ref scratch.Bytes, split = ref scratch.Split;
        ref float[] floats = ref scratch.Floats;
        foreach (var m in _matrices.Values)
        {
            var t = m.Tensor;
            var (sourceRow, rowsPerChunk) = Chunk(t);
            if (bytes.Length < rowsPerChunk * sourceRow) bytes = new byte[rowsPerChunk * sourceRow];
            bool raw = m.Type == t.Type;
            if (!raw && floats.Length < (long)rowsPerChunk * t.RowLength) floats = new float[(long)rowsPerChunk * t.RowLength];
            for (int r0 = 0; r0 < t.Rows; r0 += rowsPerChunk)
            {
                int rows = Math.Min(rowsPerChunk, t.Rows - r0);
                var chunk = bytes.AsSpan(0, (int)(rows * sourceRow));
                source.Read(t, r0 * sourceRow, chunk);
                long at = m.Offset + r0 * m.RowBytes;
                if (raw && SplitLayout.Applies(t.Type))
                {
                    if (split.Length < chunk.Length) split = new byte[chunk.Length];
                    SplitLayout.Write(t.Type, t.Rows, t.RowLength, r0, rows, chunk, split, (offset, part) => sink(m.Offset + offset, part));
                    continue;
                }
                if (raw)
                {
                    sink(at, chunk);
                    continue;
                }
                for (int r = 0; r < rows; r++)
                    Dequantize.Row(t.Type, chunk.Slice((int)(r * sourceRow), (int)sourceRow), floats.AsSpan(r * t.RowLength, t.RowLength));
                sink(at, System.Runtime.InteropServices.MemoryMarshal.AsBytes(floats.AsSpan(0, rows * t.RowLength)));
            }
        }
    }
}
