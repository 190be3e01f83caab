using System.Runtime.InteropServices;
using System.Text;
using FitLM.Tensors;

namespace FitLM.Formats;

/// <summary>
/// Writes a GGUF v3 file as llama.cpp (gguf-py, ggml's gguf_write) lays it out: header, metadata, tensor
/// directory, padding to the alignment, then each tensor's data padded to the alignment.
/// <para>
/// Use: <see cref="Add"/> metadata and <see cref="AddTensor"/> tensor infos, then write every tensor's
/// data in the declared order (<see cref="WriteTensor(string, ReadOnlySpan{byte})"/>, or
/// <see cref="BeginTensor"/> + <see cref="WriteTensorData"/> in chunks), then <see cref="Complete"/>.
/// Only the header and the caller's current chunk are ever in memory.
/// </para>
/// <para>
/// The file is written to <c>&lt;path&gt;.tmp-&lt;random&gt;</c> beside the destination and moved onto
/// <see cref="Path"/> (replacing it) only by <see cref="Complete"/>, after a flush to disk. Disposing a
/// writer that was not completed (failure, cancellation) deletes the temporary file, so a reader never
/// sees a partial GGUF under the final name.
/// </para>
/// </summary>
public sealed class GgufWriter : IDisposable
{
    public const int DefaultAlignment = 32;
    /// <summary>ggml's GGML_MAX_NAME is 64 bytes including the terminating NUL.</summary>
    public const int MaxTensorNameBytes = 63;

    /// <summary>The final path (written only by <see cref="Complete"/>).</summary>
    public string Path { get; }
    /// <summary>The temporary file being written.</summary>
    public string TempPath { get; }
    public int Alignment { get; }
    public IReadOnlyList<string> MetadataKeys => _keys;
    public IReadOnlyDictionary<string, GgufValue> Metadata => _metadata;
    /// <summary>Declared tensors; offsets are relative to the data section, as in <see cref="GgufFile"/>.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors => _tensors;
    /// <summary>Bytes of tensor data declared (without padding).</summary>
    public long TensorBytes { get; private set; }
    /// <summary>Bytes written to the file so far (header, data and padding).</summary>
    public long BytesWritten { get; private set; }
    public bool Completed => _state == State.Completed;

    private enum State { Declaring, Writing, Completed, Failed, Disposed }

    private readonly Dictionary<string, GgufValue> _metadata = new(StringComparer.Ordinal);
    private readonly List<string> _keys = new();
    private readonly List<GgufTensorInfo> _tensors = new();
    private readonly HashSet<string> _tensorNames = new(StringComparer.Ordinal);
    private readonly CancellationToken _ct;
    private FileStream? _stream;
    private State _state = State.Declaring;
    private long _nextOffset;      // data-section offset of the next declared tensor
    private int _current = -1;     // tensor being written, or -1 between tensors
    private int _nextToWrite;      // index of the next tensor to begin
    private long _currentDone;     // bytes of the current tensor written
    private long _dataStart;       // absolute offset of the data section
    private static readonly byte[] s_zeros = new byte[256];

    /// <summary>Creates the temporary file beside <paramref name="path"/>. The token is checked at every write.</summary>
    public GgufWriter(string path, int alignment = DefaultAlignment, CancellationToken ct = default)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new FitLMException("no output path given");
        if (alignment <= 0 || alignment > 1 << 20 || (alignment & (alignment - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "alignment must be a power of two");
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("GGUF writing needs a little-endian machine");
        Path = System.IO.Path.GetFullPath(path);
        Alignment = alignment;
        _ct = ct;
        if (Directory.Exists(Path)) throw new FitLMException($"{path}: is a directory; give a file name for the GGUF output");
        string dir = System.IO.Path.GetDirectoryName(Path) ?? ".";
        if (!Directory.Exists(dir)) throw new FitLMException($"{path}: the folder {dir} does not exist");
        TempPath = $"{Path}.tmp-{Guid.NewGuid().ToString("N")[..12]}";
        try
        {
            _stream = new FileStream(TempPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            throw new FitLMException($"{path}: cannot create {TempPath}: {e.Message}", e);
        }
    }

    // ---------------------------------------------------------------- metadata

    /// <summary>Adds a metadata entry (any GGUF value type, arrays and nested arrays included).</summary>
    public void Add(string key, GgufValue value)
    {
        ArgumentNullException.ThrowIfNull(value);
        RequireState(State.Declaring, "metadata can only be added before tensor data is written");
        if (string.IsNullOrEmpty(key)) throw new ArgumentException("metadata key is empty", nameof(key));
        Validate(value, key, 0);
        if (key == "general.alignment" && (!value.IsInteger || value.AsInt64() != Alignment))
            throw new ArgumentException($"general.alignment {value} does not match the writer's alignment {Alignment}");
        if (!_metadata.TryAdd(key, value)) throw new ArgumentException($"duplicate metadata key '{key}'", nameof(key));
        _keys.Add(key);
    }

    public void AddString(string key, string value) => Add(key, new(GgufValueType.String, value));
    public void AddBool(string key, bool value) => Add(key, new(GgufValueType.Bool, value));
    public void AddUInt8(string key, byte value) => Add(key, new(GgufValueType.UInt8, value));
    public void AddInt8(string key, sbyte value) => Add(key, new(GgufValueType.Int8, value));
    public void AddUInt16(string key, ushort value) => Add(key, new(GgufValueType.UInt16, value));
    public void AddInt16(string key, short value) => Add(key, new(GgufValueType.Int16, value));
    public void AddUInt32(string key, uint value) => Add(key, new(GgufValueType.UInt32, value));
    public void AddInt32(string key, int value) => Add(key, new(GgufValueType.Int32, value));
    public void AddUInt64(string key, ulong value) => Add(key, new(GgufValueType.UInt64, value));
    public void AddInt64(string key, long value) => Add(key, new(GgufValueType.Int64, value));
    public void AddFloat32(string key, float value) => Add(key, new(GgufValueType.Float32, value));
    public void AddFloat64(string key, double value) => Add(key, new(GgufValueType.Float64, value));

    /// <summary>Adds an array; the element type follows the .NET element type (string, bool, byte ... double, GgufValue for nested arrays).</summary>
    public void AddArray<T>(string key, T[] values) => Add(key, ArrayOf(values));

    /// <summary>A GGUF array value of <paramref name="values"/> with the element type that matches T.</summary>
    public static GgufValue ArrayOf<T>(T[] values)
    {
        ArgumentNullException.ThrowIfNull(values);
        // By the static type: the CLR lets an int[] pass as a uint[] (and sbyte[] as byte[]) in type tests.
        var t = typeof(T);
        var et =
            t == typeof(byte) ? GgufValueType.UInt8 :
            t == typeof(sbyte) ? GgufValueType.Int8 :
            t == typeof(ushort) ? GgufValueType.UInt16 :
            t == typeof(short) ? GgufValueType.Int16 :
            t == typeof(uint) ? GgufValueType.UInt32 :
            t == typeof(int) ? GgufValueType.Int32 :
            t == typeof(float) ? GgufValueType.Float32 :
            t == typeof(bool) ? GgufValueType.Bool :
            t == typeof(string) ? GgufValueType.String :
            t == typeof(ulong) ? GgufValueType.UInt64 :
            t == typeof(long) ? GgufValueType.Int64 :
            t == typeof(double) ? GgufValueType.Float64 :
            t == typeof(GgufValue) ? GgufValueType.Array :
            throw new ArgumentException($"GGUF has no array of {t.Name}");
        if (values.GetType() != typeof(T[])) throw new ArgumentException($"a {values.GetType().Name} passed as {t.Name}[]");
        return new GgufValue(GgufValueType.Array, values, et);
    }

    private static void Validate(GgufValue v, string key, int depth)
    {
        bool ok = v.Type switch
        {
            GgufValueType.UInt8 => v.Value is byte,
            GgufValueType.Int8 => v.Value is sbyte,
            GgufValueType.UInt16 => v.Value is ushort,
            GgufValueType.Int16 => v.Value is short,
            GgufValueType.UInt32 => v.Value is uint,
            GgufValueType.Int32 => v.Value is int,
            GgufValueType.Float32 => v.Value is float,
            GgufValueType.Bool => v.Value is bool,
            GgufValueType.String => v.Value is string,
            GgufValueType.UInt64 => v.Value is ulong,
            GgufValueType.Int64 => v.Value is long,
            GgufValueType.Float64 => v.Value is double,
            GgufValueType.Array => ValidateArray(v, key, depth),
            _ => false,
        };
        if (!ok) throw new ArgumentException($"metadata '{key}': a {v.Type} value cannot hold a {v.Value?.GetType().Name ?? "null"}");
    }

    private static bool ValidateArray(GgufValue v, string key, int depth)
    {
        if (depth > 2) throw new ArgumentException($"metadata '{key}' nests arrays too deeply");
        var at = v.Value?.GetType(); // exact: the CLR would let an int[] pass as a uint[]
        bool ok = v.ElementType switch
        {
            GgufValueType.UInt8 => at == typeof(byte[]),
            GgufValueType.Int8 => at == typeof(sbyte[]),
            GgufValueType.UInt16 => at == typeof(ushort[]),
            GgufValueType.Int16 => at == typeof(short[]),
            GgufValueType.UInt32 => at == typeof(uint[]),
            GgufValueType.Int32 => at == typeof(int[]),
            GgufValueType.Float32 => at == typeof(float[]),
            GgufValueType.Bool => at == typeof(bool[]),
            GgufValueType.String => at == typeof(string[]) && ((string[])v.Value!).All(x => x != null),
            GgufValueType.UInt64 => at == typeof(ulong[]),
            GgufValueType.Int64 => at == typeof(long[]),
            GgufValueType.Float64 => at == typeof(double[]),
            GgufValueType.Array => at == typeof(GgufValue[]),
            _ => false,
        };
        if (ok && v.Value is GgufValue[] nested)
            foreach (var n in nested)
            {
                if (n is null || n.Type != GgufValueType.Array)
                    throw new ArgumentException($"metadata '{key}': elements of an array of arrays must be arrays");
                Validate(n, key, depth + 1);
            }
        return ok;
    }

    // ---------------------------------------------------------------- tensor directory

    /// <summary>Declares a tensor (ggml shape order: shape[0] is the row length). Data must follow in declaration order.</summary>
    public GgufTensorInfo AddTensor(string name, ReadOnlySpan<long> shape, GgmlType type)
    {
        RequireState(State.Declaring, "tensors can only be declared before tensor data is written");
        if (string.IsNullOrEmpty(name)) throw new ArgumentException("tensor name is empty", nameof(name));
        if (Encoding.UTF8.GetByteCount(name) > MaxTensorNameBytes)
            throw new ArgumentException($"tensor name '{name}' is longer than {MaxTensorNameBytes} bytes (ggml's limit)");
        if (shape.Length is 0 or > GgufFile.MaxDims)
            throw new ArgumentException($"tensor '{name}' has {shape.Length} dimensions (1..{GgufFile.MaxDims} allowed)");
        if (!GgmlTypes.IsSupported(type)) throw new ArgumentException($"tensor '{name}': unsupported type {type}");
        long elements = 1;
        foreach (var n in shape)
        {
            if (n <= 0 || n > 1L << 40) throw new ArgumentException($"tensor '{name}' has an invalid dimension {n}");
            if (elements > (1L << 46) / n) throw new ArgumentException($"tensor '{name}' is absurdly large");
            elements *= n;
        }
        int block = GgmlTypes.BlockSize(type);
        if (shape[0] % block != 0)
            throw new ArgumentException($"tensor '{name}' row length {shape[0]} is not a multiple of the {type} block size {block}");
        if (!_tensorNames.Add(name)) throw new ArgumentException($"duplicate tensor name '{name}'", nameof(name));
        long bytes = elements / block * GgmlTypes.BlockBytes(type);
        var info = new GgufTensorInfo(name, shape.ToArray(), type, _nextOffset, bytes);
        _tensors.Add(info);
        _nextOffset = GgufFile.AlignUp(_nextOffset + bytes, Alignment);
        TensorBytes += bytes;
        return info;
    }

    /// <summary>The size the finished file will have (header, data and padding).</summary>
    public long ExpectedFileLength => GgufFile.AlignUp(HeaderBytes().Length, Alignment) + _nextOffset;

    // ---------------------------------------------------------------- data

    /// <summary>Writes a whole tensor; it must be the next one declared.</summary>
    public void WriteTensor(string name, ReadOnlySpan<byte> data)
    {
        var t = BeginTensor(name);
        if (data.Length != t.ByteSize)
        {
            Fail();
            throw new ArgumentException($"tensor '{name}' has {t.ByteSize} bytes; {data.Length} were given");
        }
        WriteTensorData(data);
    }

    /// <summary>Writes a whole tensor by copying exactly its byte size from <paramref name="source"/>.</summary>
    public void WriteTensor(string name, Stream source)
    {
        var t = BeginTensor(name);
        var buf = new byte[(int)Math.Min(t.ByteSize, 1 << 20)];
        long left = t.ByteSize;
        while (left > 0)
        {
            int n;
            try { n = source.Read(buf, 0, (int)Math.Min(buf.Length, left)); }
            catch { Fail(); throw; }
            if (n <= 0)
            {
                Fail();
                throw new FitLMException($"tensor '{name}': the source stream ended {left} bytes short");
            }
            WriteTensorData(buf.AsSpan(0, n));
            left -= n;
        }
    }

    /// <summary>Starts the next tensor (writing the header first if needed); its data then comes through <see cref="WriteTensorData"/>.</summary>
    public GgufTensorInfo BeginTensor(string name)
    {
        if (_state == State.Declaring) WriteHeader();
        RequireState(State.Writing, "cannot write tensor data now");
        if (_current >= 0)
        {
            Fail();
            throw new InvalidOperationException($"tensor '{_tensors[_current].Name}' is not finished ({_currentDone} of {_tensors[_current].ByteSize} bytes written)");
        }
        if (_nextToWrite >= _tensors.Count)
        {
            Fail();
            throw new InvalidOperationException($"tensor '{name}': all {_tensors.Count} declared tensors are already written");
        }
        var t = _tensors[_nextToWrite];
        if (t.Name != name)
        {
            Fail();
            throw new InvalidOperationException($"tensor '{name}' written out of order: '{t.Name}' is next");
        }
        _current = _nextToWrite++;
        _currentDone = 0;
        if (t.ByteSize == 0) FinishTensor();
        return t;
    }

    /// <summary>Appends bytes to the current tensor; when its last byte arrives the padding is written and the tensor is done.</summary>
    public void WriteTensorData(ReadOnlySpan<byte> data)
    {
        RequireState(State.Writing, "cannot write tensor data now");
        if (_current < 0)
        {
            Fail();
            throw new InvalidOperationException("no tensor begun (call BeginTensor)");
        }
        var t = _tensors[_current];
        if (data.Length > t.ByteSize - _currentDone)
        {
            Fail();
            throw new ArgumentException($"tensor '{t.Name}': {data.Length} bytes would overrun its {t.ByteSize} bytes ({_currentDone} written)");
        }
        Write(data);
        _currentDone += data.Length;
        if (_currentDone == t.ByteSize) FinishTensor();
    }

    private void FinishTensor()
    {
        var t = _tensors[_current];
        WritePadding(GgufFile.AlignUp(t.ByteSize, Alignment) - t.ByteSize);
        _current = -1;
        long expected = _dataStart + GgufFile.AlignUp(t.Offset + t.ByteSize, Alignment);
        if (BytesWritten != expected)
        {
            Fail();
            throw new InvalidOperationException($"GGUF writer out of step after '{t.Name}': at {BytesWritten}, expected {expected}");
        }
    }

    /// <summary>Checks every tensor was written, flushes to disk and moves the file onto <see cref="Path"/>.</summary>
    public void Complete()
    {
        if (_state == State.Declaring) WriteHeader();
        RequireState(State.Writing, "cannot complete");
        if (_current >= 0 || _nextToWrite < _tensors.Count)
        {
            string missing = _current >= 0 ? _tensors[_current].Name : _tensors[_nextToWrite].Name;
            Fail();
            throw new InvalidOperationException($"cannot complete {Path}: tensor '{missing}' and any after it were not written");
        }
        try
        {
            _ct.ThrowIfCancellationRequested();
            _stream!.Flush(flushToDisk: true);
            _stream.Dispose();
            _stream = null;
            _ct.ThrowIfCancellationRequested();
            File.Move(TempPath, Path, overwrite: true);
            _state = State.Completed;
        }
        catch (Exception e)
        {
            Fail();
            if (e is IOException or UnauthorizedAccessException)
                throw new FitLMException($"{Path}: cannot write: {e.Message}", e);
            throw;
        }
    }

    /// <summary>Deletes the temporary file unless <see cref="Complete"/> succeeded.</summary>
    public void Dispose()
    {
        if (_state is State.Completed or State.Disposed) { _state = State.Disposed; return; }
        _state = State.Disposed;
        try { _stream?.Dispose(); } catch (IOException) { }
        _stream = null;
        try { File.Delete(TempPath); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    // ---------------------------------------------------------------- encoding

    private void RequireState(State s, string what)
    {
        if (_state == s) return;
        string why = _state switch
        {
            State.Failed => "an earlier write failed",
            State.Completed => "the file is already complete",
            State.Disposed => "the writer is disposed",
            State.Writing => "tensor data is being written",
            _ => "tensor data has not started",
        };
        throw new InvalidOperationException($"GgufWriter: {what} ({why})");
    }

    private void Fail()
    {
        if (_state is State.Declaring or State.Writing) _state = State.Failed;
    }

    private void Write(ReadOnlySpan<byte> data)
    {
        try
        {
            _ct.ThrowIfCancellationRequested();
            _stream!.Write(data);
            BytesWritten += data.Length;
        }
        catch (Exception e)
        {
            Fail();
            if (e is IOException or UnauthorizedAccessException)
                throw new FitLMException($"{Path}: cannot write: {e.Message}", e);
            throw;
        }
    }

    private void WritePadding(long n)
    {
        while (n > 0)
        {
            int k = (int)Math.Min(n, s_zeros.Length);
            Write(s_zeros.AsSpan(0, k));
            n -= k;
        }
    }

    private void WriteHeader()
    {
        RequireState(State.Declaring, "cannot write the header");
        if (Alignment != DefaultAlignment && !_metadata.ContainsKey("general.alignment"))
            Add("general.alignment", new GgufValue(GgufValueType.UInt32, (uint)Alignment));
        var header = HeaderBytes();
        _state = State.Writing;
        Write(header);
        WritePadding(GgufFile.AlignUp(header.Length, Alignment) - header.Length);
        _dataStart = BytesWritten;
    }

    private byte[] HeaderBytes()
    {
        var e = new Encoder();
        e.U32(GgufFile.Magic);
        e.U32(3);
        e.U64((ulong)_tensors.Count);
        e.U64((ulong)_keys.Count + (Alignment != DefaultAlignment && !_metadata.ContainsKey("general.alignment") ? 1UL : 0UL));
        foreach (var key in _keys)
        {
            var v = _metadata[key];
            e.String(key);
            e.U32((uint)v.Type);
            e.Value(v);
        }
        if (Alignment != DefaultAlignment && !_metadata.ContainsKey("general.alignment"))
        {
            e.String("general.alignment");
            e.U32((uint)GgufValueType.UInt32);
            e.U32((uint)Alignment);
        }
        foreach (var t in _tensors)
        {
            e.String(t.Name);
            e.U32((uint)t.Shape.Length);
            foreach (var n in t.Shape) e.U64((ulong)n);
            e.U32((uint)t.Type);
            e.U64((ulong)t.Offset);
        }
        return e.ToArray();
    }

    /// <summary>Little-endian GGUF encoding of header fields into a growable buffer.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "a MemoryStream holds no unmanaged resource")]
    private sealed class Encoder
    {
        private readonly MemoryStream _m = new();

        public byte[] ToArray() => _m.ToArray();
        public void U8(byte v) => _m.WriteByte(v);
        public void U16(ushort v) => _m.Write(BitConverter.GetBytes(v));
        public void U32(uint v) => _m.Write(BitConverter.GetBytes(v));
        public void U64(ulong v) => _m.Write(BitConverter.GetBytes(v));

        public void String(string s)
        {
            var b = Encoding.UTF8.GetBytes(s);
            U64((ulong)b.Length);
            _m.Write(b);
        }

        public void Value(GgufValue v)
        {
            switch (v.Type)
            {
                case GgufValueType.UInt8: U8((byte)v.Value); break;
                case GgufValueType.Int8: U8((byte)(sbyte)v.Value); break;
                case GgufValueType.UInt16: U16((ushort)v.Value); break;
                case GgufValueType.Int16: U16((ushort)(short)v.Value); break;
                case GgufValueType.UInt32: U32((uint)v.Value); break;
                case GgufValueType.Int32: U32((uint)(int)v.Value); break;
                case GgufValueType.Float32: U32(BitConverter.SingleToUInt32Bits((float)v.Value)); break;
                case GgufValueType.Bool: U8((bool)v.Value ? (byte)1 : (byte)0); break;
                case GgufValueType.String: String((string)v.Value); break;
                case GgufValueType.UInt64: U64((ulong)v.Value); break;
                case GgufValueType.Int64: U64((ulong)(long)v.Value); break;
                case GgufValueType.Float64: U64(BitConverter.DoubleToUInt64Bits((double)v.Value)); break;
                case GgufValueType.Array: ArrayBody(v); break;
                default: throw new ArgumentException($"unknown GGUF value type {v.Type}");
            }
        }

        /// <summary>Element type, count, elements: the body of an array value (nested arrays repeat it per element).</summary>
        private void ArrayBody(GgufValue v)
        {
            U32((uint)v.ElementType);
            var a = (Array)v.Value;
            U64((ulong)a.Length);
            switch (a)
            {
                case string[] s: foreach (var x in s) String(x); break;
                case bool[] b: foreach (var x in b) U8(x ? (byte)1 : (byte)0); break;
                case GgufValue[] n: foreach (var x in n) ArrayBody(x); break;
                case byte[] x: _m.Write(x); break;
                case sbyte[] x: _m.Write(MemoryMarshal.AsBytes(x.AsSpan())); break;
                case ushort[] x: _m.Write(MemoryMarshal.AsBytes(x.AsSpan())); break;
                case short[] x: _m.Write(MemoryMarshal.AsBytes(x.AsSpan())); break;
                case uint[] x: _m.Write(MemoryMarshal.AsBytes(x.AsSpan())); break;
                case int[] x: _m.Write(MemoryMarshal.AsBytes(x.AsSpan())); break;
                case float[] x: _m.Write(MemoryMarshal.AsBytes(x.AsSpan())); break;
                case ulong[] x: _m.Write(MemoryMarshal.AsBytes(x.AsSpan())); break;
                case long[] x: _m.Write(MemoryMarshal.AsBytes(x.AsSpan())); break;
                case double[] x: _m.Write(MemoryMarshal.AsBytes(x.AsSpan())); break;
                default: throw new ArgumentException($"unsupported GGUF array {a.GetType().Name}");
            }
        }
    }
}
