using System.Runtime.InteropServices;
using System.Text.Json;
using FitLM.Tensors;

namespace FitLM.Formats;

/// <summary>One tensor to write: its name, shape as stored (row-major, last dimension is the row) and float32 data.</summary>
public sealed record SafetensorsTensor(string Name, long[] Shape, float[] Data);

/// <summary>
/// Writes a .safetensors file as the safetensors library lays it out: 8-byte little-endian header length, the JSON
/// header (tensors in name order, then <c>__metadata__</c>) padded with spaces to a multiple of 8 bytes, then each
/// tensor's raw little-endian data in header order. The file is written beside its name under a temporary name,
/// flushed and renamed, so a reader never sees half of one (the Formats layer cannot use Storage.OutputFile).
/// </summary>
public static class SafetensorsWriter
{
    /// <summary>Writes <paramref name="tensors"/> converted to <paramref name="type"/> (F32, F16 or BF16) and <paramref name="metadata"/> to <paramref name="path"/>.</summary>
    public static void Write(string path, IReadOnlyList<SafetensorsTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        GgmlType type = GgmlType.F32, CancellationToken ct = default)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new FitLMException("no output path given");
        var (dtype, size) = type switch
        {
            GgmlType.F32 => ("F32", 4),
            GgmlType.F16 => ("F16", 2),
            GgmlType.BF16 => ("BF16", 2),
            _ => throw new FitLMException($"safetensors tensors are written as F32, F16 or BF16, not {type}"),
        };
        var ordered = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        foreach (var t in ordered)
            if (t.Shape.Aggregate(1L, (a, b) => a * b) != t.Data.Length)
                throw new ArgumentException($"tensor '{t.Name}' has {t.Data.Length} values but shape [{string.Join(", ", t.Shape)}]");
        if (ordered.Select(t => t.Name).Distinct(StringComparer.Ordinal).Count() != ordered.Count)
            throw new ArgumentException("duplicate tensor names");

        byte[] header = Header(ordered, metadata, dtype, size);
        string full = Path.GetFullPath(path);
        string folder = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(folder)) throw new FitLMException($"{path}: the folder {folder} does not exist");
        string temp = Path.Combine(folder, $".{Path.GetFileName(full)}.{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}.tmp");
        try
        {
            using (var s = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> len = stackalloc byte[8];
                BitConverter.TryWriteBytes(len, (ulong)header.Length);
                s.Write(len);
                s.Write(header);
                var buffer = new byte[1 << 16];
                foreach (var t in ordered)
                {
                    ct.ThrowIfCancellationRequested();
                    WriteData(s, t.Data, type, buffer);
                }
                s.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(temp);
            throw new FitLMException($"{path}: cannot write: {e.Message}", e);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    private static byte[] Header(List<SafetensorsTensor> tensors, IReadOnlyDictionary<string, string>? metadata, string dtype, int size)
    {
        using var ms = new MemoryStream();
        using (var j = new Utf8JsonWriter(ms))
        {
            j.WriteStartObject();
            long offset = 0;
            foreach (var t in tensors)
            {
                long bytes = (long)t.Data.Length * size;
                j.WriteStartObject(t.Name);
                j.WriteString("dtype", dtype);
                j.WriteStartArray("shape");
                foreach (var d in t.Shape) j.WriteNumberValue(d);
                j.WriteEndArray();
                j.WriteStartArray("data_offsets");
                j.WriteNumberValue(offset);
                j.WriteNumberValue(offset + bytes);
                j.WriteEndArray();
                j.WriteEndObject();
                offset += bytes;
            }
            if (metadata is { Count: > 0 })
            {
                j.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) j.WriteString(k, v);
                j.WriteEndObject();
            }
            j.WriteEndObject();
        }
        // The data starts 8-byte aligned, as the safetensors library pads its header (with spaces).
        int padded = (int)((ms.Length + 7) / 8 * 8);
        var header = new byte[padded];
        ms.ToArray().CopyTo(header, 0);
        for (int i = (int)ms.Length; i < padded; i++) header[i] = (byte)' ';
        return header;
    }

    private static void WriteData(Stream s, float[] data, GgmlType type, byte[] buffer)
    {
        if (type == GgmlType.F32)
        {
            s.Write(MemoryMarshal.AsBytes(data.AsSpan()));
            return;
        }
        int perChunk = buffer.Length / 2;
        for (int i = 0; i < data.Length; i += perChunk)
        {
            int n = Math.Min(perChunk, data.Length - i);
            Quantize.Row(type, data.AsSpan(i, n), buffer.AsSpan(0, n * 2));
            s.Write(buffer, 0, n * 2);
        }
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
