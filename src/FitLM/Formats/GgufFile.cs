using System.Text;
using FitLM.Tensors;
using Microsoft.Win32.SafeHandles;

namespace FitLM.Formats;

/// <summary>One tensor's entry in a GGUF header. Shape is in ggml order: Shape[0] is the row length.</summary>
public sealed record GgufTensorInfo(string Name, long[] Shape, GgmlType Type, long Offset, long ByteSize)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
    public long RowLength => Shape[0];
    public long Rows => Elements / Math.Max(1, Shape[0]);
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>
/// A GGUF file (versions 2 and 3) as llama.cpp writes it: header, metadata, tensor directory, aligned data.
/// Only the header is read at open; tensor bytes are read on request. Every count, length, shape and
/// offset in the header is checked against the file size before anything is allocated from it, so a
/// corrupt or hostile file ends in a <see cref="FitLMException"/> naming the file and the problem.
/// </summary>
public sealed class GgufFile : IDisposable
{
    public const uint Magic = 0x46554747; // "GGUF" little-endian
    public const int MaxDims = 4;

    public string Path { get; }
    public uint Version { get; }
    public long Alignment { get; }
    /// <summary>Absolute file offset of the tensor data section.</summary>
    public long DataOffset { get; }
    public long FileLength { get; }
    public IReadOnlyDictionary<string, GgufValue> Metadata => _metadata;
    public IReadOnlyList<string> MetadataKeys => _keys;
    public IReadOnlyList<GgufTensorInfo> Tensors => _tensors;

    private readonly Dictionary<string, GgufValue> _metadata = new(StringComparer.Ordinal);
    private readonly List<string> _keys = new();
    private readonly List<GgufTensorInfo> _tensors = new();
    private readonly Dictionary<string, GgufTensorInfo> _byName = new(StringComparer.Ordinal);
    private readonly SafeFileHandle _handle;

    private GgufFile(string path, SafeFileHandle handle)
    {
        Path = path;
        _handle = handle;
        FileLength = RandomAccess.GetLength(handle);
        var r = new HeaderReader(handle, FileLength, path);
        if (FileLength < 24) throw Error($"file is too small to be GGUF ({FileLength} bytes)");
        uint magic = r.U32();
        if (magic != Magic) throw Error("not a GGUF file (bad magic)");
        Version = r.U32();
        if (Version is not (2 or 3)) throw Error($"unsupported GGUF version {Version} (2 and 3 are supported)");
        long tensorCount = r.Count("tensor count", minBytesEach: 8 + 4 + 8 + 4 + 8);
        long kvCount = r.Count("metadata count", minBytesEach: 8 + 4 + 1);

        for (long i = 0; i < kvCount; i++)
        {
            string key = r.String("metadata key");
            var type = (GgufValueType)r.U32();
            var value = r.Value(type, key, depth: 0);
            if (!_metadata.TryAdd(key, value)) throw Error($"duplicate metadata key {ErrorText.Quote(key)}");
            _keys.Add(key);
        }

        Alignment = 32;
        if (_metadata.TryGetValue("general.alignment", out var al))
        {
            long a = al.IsInteger ? al.AsInt64() : 0;
            if (a <= 0 || a > 1 << 20 || (a & (a - 1)) != 0)
                throw Error($"general.alignment {al} is not a power of two");
            Alignment = a;
        }

        var infos = new List<(string name, long[] shape, GgmlType type, long offset)>();
        for (long i = 0; i < tensorCount; i++)
        {
            string name = r.String("tensor name");
            uint nDims = r.U32();
            if (nDims is 0 or > MaxDims) throw Error($"tensor {ErrorText.Quote(name)} has {nDims} dimensions (1..{MaxDims} allowed)");
            var shape = new long[nDims];
            for (int d = 0; d < nDims; d++)
            {
                ulong n = r.U64();
                if (n == 0 || n > (1UL << 40)) throw Error($"tensor {ErrorText.Quote(name)} has an absurd dimension {n}");
                shape[d] = (long)n;
            }
            var type = (GgmlType)r.U32();
            ulong off = r.U64();
            if (off > (ulong)FileLength) throw Error($"tensor {ErrorText.Quote(name)} data offset {off} is past the end of the file");
            infos.Add((name, shape, type, (long)off));
        }

        DataOffset = AlignUp(r.Position, Alignment);
        long dataLength = FileLength - DataOffset;
        foreach (var (name, shape, type, offset) in infos)
        {
            if (!GgmlTypes.IsSupported(type)) throw Error($"tensor {ErrorText.Quote(name)} has unsupported type {(uint)type}");
            long elements = 1;
            foreach (var n in shape)
            {
                if (elements > (1L << 46) / n) throw Error($"tensor {ErrorText.Quote(name)} shape [{string.Join(", ", shape)}] is absurdly large");
                elements *= n;
            }
            int block = GgmlTypes.BlockSize(type);
            if (shape[0] % block != 0)
                throw Error($"tensor {ErrorText.Quote(name)} row length {shape[0]} is not a multiple of the {type} block size {block}");
            long bytes = elements / block * GgmlTypes.BlockBytes(type);
            if (offset % Alignment != 0) throw Error($"tensor {ErrorText.Quote(name)} data offset {offset} is not aligned to {Alignment}");
            if (offset > dataLength || bytes > dataLength - offset)
                throw Error($"tensor {ErrorText.Quote(name)} data ({bytes} bytes at offset {offset}) runs past the end of the file (truncated?)");
            var info = new GgufTensorInfo(name, shape, type, offset, bytes);
            if (!_byName.TryAdd(name, info)) throw Error($"duplicate tensor name {ErrorText.Quote(name)}");
            _tensors.Add(info);
        }
    }

    /// <summary>Opens a GGUF file and reads its header. Throws <see cref="FitLMException"/> on any problem.</summary>
    public static GgufFile Open(string path)
    {
        SafeFileHandle handle;
        try
        {
            if (Directory.Exists(path)) throw new FitLMException($"{path}: is a directory, not a GGUF file");
            handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (FitLMException) { throw; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new FitLMException($"{path}: cannot open: {e.Message}", e);
        }
        try
        {
            return new GgufFile(path, handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    public GgufTensorInfo? FindTensor(string name) => _byName.GetValueOrDefault(name);

    public GgufTensorInfo GetTensor(string name) =>
        FindTensor(name) ?? throw Error($"tensor {ErrorText.Quote(name)} is missing");

    public GgufValue? Find(string key) => _metadata.GetValueOrDefault(key);

    public string GetString(string key) => (Find(key) ?? throw Error($"metadata {ErrorText.Quote(key)} is missing")).AsString();

    public long GetInt(string key) => (Find(key) ?? throw Error($"metadata {ErrorText.Quote(key)} is missing")).AsInt64();

    public long GetInt(string key, long fallback) => Find(key) is { } v ? Convert(v, key, x => x.AsInt64()) : fallback;

    public double GetDouble(string key, double fallback) => Find(key) is { } v ? Convert(v, key, x => x.AsDouble()) : fallback;

    public bool GetBool(string key, bool fallback) => Find(key) is { } v ? Convert(v, key, x => x.AsBool()) : fallback;

    private T Convert<T>(GgufValue v, string key, Func<GgufValue, T> f)
    {
        try { return f(v); }
        catch (FitLMException e) { throw Error($"metadata {ErrorText.Quote(key)}: {e.Message}"); }
    }

    /// <summary>Reads a byte range of a tensor's data (offset relative to the tensor's start).</summary>
    public void ReadTensorBytes(GgufTensorInfo t, long offsetInTensor, Span<byte> dst)
    {
        if (offsetInTensor < 0 || offsetInTensor + dst.Length > t.ByteSize)
            throw Error($"read of {dst.Length} bytes at {offsetInTensor} is outside tensor {ErrorText.Quote(t.Name)}");
        ReadExactly(DataOffset + t.Offset + offsetInTensor, dst);
    }

    /// <summary>Reads file bytes at an absolute offset; throws if the file is shorter than expected.</summary>
    public void ReadExactly(long fileOffset, Span<byte> dst)
    {
        while (dst.Length > 0)
        {
            int n = RandomAccess.Read(_handle, dst, fileOffset);
            if (n <= 0) throw Error($"unexpected end of file at offset {fileOffset}");
            dst = dst[n..];
            fileOffset += n;
        }
    }

    public SafeFileHandle Handle => _handle;

    public void Dispose() => _handle.Dispose();

    private FitLMException Error(string message) => new($"{Path}: {message}");

    public static long AlignUp(long x, long alignment) => (x + alignment - 1) / alignment * alignment;

    /// <summary>Sequential little-endian reader over the header that never trusts a length it reads.</summary>
    private sealed class HeaderReader
    {
        private readonly SafeFileHandle _handle;
        private readonly long _length;
        private readonly string _path;
        private readonly byte[] _buf = new byte[1 << 16];
        private long _bufStart;
        private int _bufLen;
        public long Position { get; private set; }

        public HeaderReader(SafeFileHandle handle, long length, string path)
        {
            _handle = handle;
            _length = length;
            _path = path;
        }

        private long Remaining => _length - Position;

        private FitLMException Truncated(string what) =>
            new($"{_path}: truncated GGUF header while reading {what} at offset {Position}");

        private ReadOnlySpan<byte> Take(int n, string what)
        {
            if (n > Remaining) throw Truncated(what);
            long rel = Position - _bufStart;
            if (rel < 0 || rel + n > _bufLen)
            {
                if (n > _buf.Length) throw Truncated(what);
                _bufStart = Position;
                _bufLen = 0;
                while (_bufLen < Math.Min(_buf.Length, Remaining))
                {
                    int got = RandomAccess.Read(_handle, _buf.AsSpan(_bufLen), _bufStart + _bufLen);
                    if (got <= 0) break;
                    _bufLen += got;
                }
                rel = 0;
                if (n > _bufLen) throw Truncated(what);
            }
            Position += n;
            return _buf.AsSpan((int)rel, n);
        }

        public byte U8() => Take(1, "u8")[0];
        public ushort U16() => BitConverter.ToUInt16(Take(2, "u16"));
        public uint U32() => BitConverter.ToUInt32(Take(4, "u32"));
        public ulong U64() => BitConverter.ToUInt64(Take(8, "u64"));

        /// <summary>A count whose elements each need at least <paramref name="minBytesEach"/> bytes of the file.</summary>
        public long Count(string what, int minBytesEach)
        {
            ulong n = U64();
            if (n > (ulong)(Remaining / minBytesEach))
                throw new FitLMException($"{_path}: {what} {n} is impossible for a file of {_length} bytes (corrupt or truncated)");
            return (long)n;
        }

        public string String(string what)
        {
            ulong n = U64();
            if (n > (ulong)Remaining) throw new FitLMException($"{_path}: {what} length {n} runs past the end of the file");
            if (n > 1 << 24) throw new FitLMException($"{_path}: {what} length {n} is absurd");
            int len = (int)n;
            if (len <= _buf.Length) return Encoding.UTF8.GetString(Take(len, what));
            var bytes = new byte[len];
            int done = 0;
            while (done < len)
            {
                int chunk = Math.Min(_buf.Length, len - done);
                Take(chunk, what).CopyTo(bytes.AsSpan(done));
                done += chunk;
            }
            return Encoding.UTF8.GetString(bytes);
        }

        public GgufValue Value(GgufValueType type, string key, int depth)
        {
            switch (type)
            {
                case GgufValueType.UInt8: return new(type, U8());
                case GgufValueType.Int8: return new(type, (sbyte)U8());
                case GgufValueType.UInt16: return new(type, U16());
                case GgufValueType.Int16: return new(type, (short)U16());
                case GgufValueType.UInt32: return new(type, U32());
                case GgufValueType.Int32: return new(type, (int)U32());
                case GgufValueType.Float32: return new(type, BitConverter.UInt32BitsToSingle(U32()));
                case GgufValueType.Bool:
                    {
                        byte b = U8();
                        if (b > 1) throw new FitLMException($"{_path}: metadata {ErrorText.Quote(key)} has an invalid bool byte {b}");
                        return new(type, b == 1);
                    }
                case GgufValueType.String: return new(type, String($"metadata {ErrorText.Quote(key)} string"));
                case GgufValueType.UInt64: return new(type, U64());
                case GgufValueType.Int64: return new(type, (long)U64());
                case GgufValueType.Float64: return new(type, BitConverter.UInt64BitsToDouble(U64()));
                case GgufValueType.Array:
                    {
                        if (depth > 2) throw new FitLMException($"{_path}: metadata {ErrorText.Quote(key)} nests arrays too deeply");
                        var et = (GgufValueType)U32();
                        long n = Count($"metadata {ErrorText.Quote(key)} array length", MinBytes(et, key));
                        return new(type, ReadArray(et, (int)Math.Min(n, int.MaxValue), key, depth), et);
                    }
                default:
                    throw new FitLMException($"{_path}: metadata {ErrorText.Quote(key)} has unknown value type {(uint)type}");
            }
        }

        private int MinBytes(GgufValueType t, string key) => t switch
        {
            GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
            GgufValueType.UInt16 or GgufValueType.Int16 => 2,
            GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
            GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 or GgufValueType.String => 8,
            GgufValueType.Array => 12,
            _ => throw new FitLMException($"{_path}: metadata {ErrorText.Quote(key)} array has unknown element type {(uint)t}"),
        };

        private Array ReadArray(GgufValueType et, int n, string key, int depth)
        {
            switch (et)
            {
                case GgufValueType.UInt8: return Fill(new byte[n], () => U8());
                case GgufValueType.Int8: return Fill(new sbyte[n], () => (sbyte)U8());
                case GgufValueType.UInt16: return Fill(new ushort[n], U16);
                case GgufValueType.Int16: return Fill(new short[n], () => (short)U16());
                case GgufValueType.UInt32: return Fill(new uint[n], U32);
                case GgufValueType.Int32: return Fill(new int[n], () => (int)U32());
                case GgufValueType.Float32: return Fill(new float[n], () => BitConverter.UInt32BitsToSingle(U32()));
                case GgufValueType.UInt64: return Fill(new ulong[n], U64);
                case GgufValueType.Int64: return Fill(new long[n], () => (long)U64());
                case GgufValueType.Float64: return Fill(new double[n], () => BitConverter.UInt64BitsToDouble(U64()));
                case GgufValueType.Bool: return Fill(new bool[n], () => U8() != 0);
                case GgufValueType.String: return Fill(new string[n], () => String($"metadata {ErrorText.Quote(key)} array string"));
                case GgufValueType.Array: return Fill(new GgufValue[n], () => Value(GgufValueType.Array, key, depth + 1));
                default: throw new FitLMException($"{_path}: metadata {ErrorText.Quote(key)} array has unknown element type {(uint)et}");
            }
        }

        private static T[] Fill<T>(T[] a, Func<T> read)
        {
            for (int i = 0; i < a.Length; i++) a[i] = read();
            return a;
        }
    }
}
