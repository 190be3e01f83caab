using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// A weight matrix in device memory, in its GGUF block layout where a kernel reads that type (<see cref="CudaMatVec.Types"/>),
/// else dequantized to float32 as it uploads (exact, four bytes a weight: the K-quants Q2_K..Q5_K and the legacy
/// Q4_1/Q5_x have no GPU kernel yet).
/// </summary>
internal sealed class DeviceMatrix : IDisposable
{
    /// <summary>Host bytes read per upload step: whole rows, about this much.</summary>
    private const long ChunkBytes = 16 << 20;

    public required DeviceBuffer Data { get; init; }
    public required GgmlType Type { get; init; }
    public required int Rows { get; init; }
    public required int Cols { get; init; }
    public required long RowBytes { get; init; }

    /// <summary>What <paramref name="t"/> takes on the device.</summary>
    public static long DeviceBytes(TensorDesc t) =>
        CudaMatVec.Supports(t.Type) ? t.ByteSize : (long)t.Rows * t.RowLength * sizeof(float);

    /// <summary>Reads <paramref name="t"/> from <paramref name="source"/> in chunks of whole rows and uploads it.</summary>
    public static DeviceMatrix Upload(CudaDevice device, IModelSource source, TensorDesc t)
    {
        if (t.Shape.Length != 2) throw new FitLMException($"{source.Path}: tensor '{t.Name}' is not a matrix");
        bool raw = CudaMatVec.Supports(t.Type);
        long sourceRow = GgmlTypes.RowBytes(t.Type, t.RowLength);
        long rowBytes = raw ? sourceRow : (long)t.RowLength * sizeof(float);
        var data = device.Allocate(rowBytes * t.Rows);
        try
        {
            int rowsPerChunk = (int)Math.Clamp(ChunkBytes / sourceRow, 1, t.Rows);
            var bytes = new byte[rowsPerChunk * sourceRow];
            var floats = raw ? [] : new float[(long)rowsPerChunk * t.RowLength];
            for (int r0 = 0; r0 < t.Rows; r0 += rowsPerChunk)
            {
                int rows = Math.Min(rowsPerChunk, t.Rows - r0);
                var chunk = bytes.AsSpan(0, (int)(rows * sourceRow));
                source.Read(t, r0 * sourceRow, chunk);
                ulong dst = data.Pointer + (ulong)(r0 * rowBytes);
                if (raw)
                {
                    CudaDevice.UploadTo<byte>(dst, chunk);
                    continue;
                }
                for (int r = 0; r < rows; r++)
                    Dequantize.Row(t.Type, chunk.Slice((int)(r * sourceRow), (int)sourceRow), floats.AsSpan(r * t.RowLength, t.RowLength));
                CudaDevice.UploadTo<float>(dst, floats.AsSpan(0, rows * t.RowLength));
            }
        }
        catch
        {
            data.Dispose();
            throw;
        }
        return new DeviceMatrix { Data = data, Type = raw ? t.Type : GgmlType.F32, Rows = t.Rows, Cols = t.RowLength, RowBytes = rowBytes };
    }

    public void Dispose() => Data.Dispose();
}
