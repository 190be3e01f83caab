using System.Text.Json;
using FitLM.Tensors;
using Microsoft.Win32.SafeHandles;

namespace FitLM.Formats;

/// <summary>One tensor of a safetensors file. Shape is as stored (row-major, last dimension is the row).</summary>
public sealed record SafetensorsTensorInfo(string Name, string DType, long[] Shape, GgmlType Type, long Begin, long End)
{
    public long ByteSize => End - Begin;
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// A .safetensors file: 8-byte header length, JSON header, raw little-endian data. The header is
/// validated against the file size (offsets inside the data, sizes matching shape × dtype) before use.
/// </summary>
public sealed class SafetensorsFile : IDisposable
{
    public const long MaxHeaderBytes = 100L << 20;

    public string Path { get; }
    public long DataOffset { get; }
    public long FileLength { get; }
    public IReadOnlyDictionary<string, SafetensorsTensorInfo> Tensors => _tensors;
    public IReadOnlyDictionary<string, string> Metadata => _metadata;

    private readonly Dictionary<string, SafetensorsTensorInfo> _tensors = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _metadata = new(StringComparer.Ordinal);
    private readonly SafeFileHandle _handle;

    private SafetensorsFile(string path, SafeFileHandle handle)
    {
        Path = path;
        _handle = handle;
        FileLength = RandomAccess.GetLength(handle);
        if (FileLength < 8) throw Error($"file is too small to be safetensors ({FileLength} bytes)");
        Span<byte> len8 = stackalloc byte[8];
        ReadExactly(0, len8);
        ulong headerLen = BitConverter.ToUInt64(len8);
        if (headerLen < 2 || headerLen > (ulong)(FileLength - 8) || headerLen > MaxHeaderBytes)
            throw Error($"header length {headerLen} is impossible for a file of {FileLength} bytes (corrupt or truncated)");
        var json = new byte[headerLen];
        ReadExactly(8, json);
        DataOffset = 8 + (long)headerLen;
        long dataLength = FileLength - DataOffset;

        if (!System.Text.Unicode.Utf8.IsValid(json)) throw Error("header is not valid UTF-8 (corrupt file?)");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 16 }); }
        catch (JsonException e) { throw Error($"header is not valid JSON: {e.Message}"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Error("header is not a JSON object");
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind == JsonValueKind.Object)
                        foreach (var m in prop.Value.EnumerateObject())
                            _metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                var info = ParseTensor(prop.Name, prop.Value, dataLength);
                if (!_tensors.TryAdd(info.Name, info)) throw Error($"duplicate tensor '{info.Name}'");
            }
        }
    }

    private SafetensorsTensorInfo ParseTensor(string name, JsonElement e, long dataLength)
    {
        if (e.ValueKind != JsonValueKind.Object) throw Error($"tensor '{name}' entry is not an object");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw Error($"tensor '{name}' has no dtype");
        string dtype = dt.GetString()!;
        var (type, size) = dtype switch
        {
            "F32" => (GgmlType.F32, 4),
            "F16" => (GgmlType.F16, 2),
            "BF16" => (GgmlType.BF16, 2),
            _ => throw Error($"tensor '{name}' has unsupported dtype {dtype} (F32, F16 and BF16 are supported)"),
        };
        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array || sh.GetArrayLength() > 8)
            throw Error($"tensor '{name}' has no valid shape");
        var shape = new long[sh.GetArrayLength()];
        long elements = 1;
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long n) || n < 0 || n > (1L << 40))
                throw Error($"tensor '{name}' has an invalid dimension {d.GetRawText()}");
            shape[i++] = n;
            if (n != 0 && elements > (1L << 46) / n) throw Error($"tensor '{name}' shape is absurdly large");
            elements *= n;
        }
        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Error($"tensor '{name}' has no data_offsets");
        long begin = off[0].TryGetInt64(out var b) ? b : -1;
        long end = off[1].TryGetInt64(out var en) ? en : -1;
        if (begin < 0 || end < begin || end > dataLength)
            throw Error($"tensor '{name}' data_offsets [{off[0].GetRawText()}, {off[1].GetRawText()}] are outside the data ({dataLength} bytes; truncated?)");
        if (end - begin != elements * size)
            throw Error($"tensor '{name}' holds {end - begin} bytes but shape [{string.Join(", ", shape)}] of {dtype} needs {elements * size}");
        return new SafetensorsTensorInfo(name, dtype, shape, type, begin, end);
    }

    public static SafetensorsFile Open(string path)
    {
        SafeFileHandle handle;
        try
        {
            if (Directory.Exists(path)) throw new FitLMException($"{path}: is a directory, not a safetensors file");
            handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (FitLMException) { throw; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new FitLMException($"{path}: cannot open: {e.Message}", e);
        }
        try { return new SafetensorsFile(path, handle); }
        catch { handle.Dispose(); throw; }
    }

    public void ReadTensorBytes(SafetensorsTensorInfo t, long offsetInTensor, Span<byte> dst)
    {
        if (offsetInTensor < 0 || offsetInTensor + dst.Length > t.ByteSize)
            throw Error($"read of {dst.Length} bytes at {offsetInTensor} is outside tensor '{t.Name}'");
        ReadExactly(DataOffset + t.Begin + offsetInTensor, dst);
    }

    private void ReadExactly(long fileOffset, Span<byte> dst)
    {
        while (dst.Length > 0)
        {
            int n = RandomAccess.Read(_handle, dst, fileOffset);
            if (n <= 0) throw Error($"unexpected end of file at offset {fileOffset}");
            dst = dst[n..];
            fileOffset += n;
        }
    }

    public void Dispose() => _handle.Dispose();

    private FitLMException Error(string message) => new($"{Path}: {message}");
}
