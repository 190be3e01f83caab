using FitLM.Formats;
using FitLM.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Converters;

/// <summary>GgufWriter → GgufFile round trips: every metadata type, odd tensor shapes, atomic replace, cancellation.</summary>
public sealed class GgufWriterTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-gguf-writer-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static GgufValue V(GgufValueType t, object v) => new(t, v);

    /// <summary>One value of every scalar type, arrays of every element type (empty ones too), nested arrays.</summary>
    private static List<(string key, GgufValue value)> AllValues() =>
    [
        ("t.u8", V(GgufValueType.UInt8, (byte)200)),
        ("t.i8", V(GgufValueType.Int8, (sbyte)-100)),
        ("t.u16", V(GgufValueType.UInt16, (ushort)65000)),
        ("t.i16", V(GgufValueType.Int16, (short)-30000)),
        ("t.u32", V(GgufValueType.UInt32, 4_000_000_000u)),
        ("t.i32", V(GgufValueType.Int32, -2_000_000_000)),
        ("t.f32", V(GgufValueType.Float32, 1e-5f)),
        ("t.bool.true", V(GgufValueType.Bool, true)),
        ("t.bool.false", V(GgufValueType.Bool, false)),
        ("t.string", V(GgufValueType.String, "héllo, wörld ✓ 🙂")),
        ("t.string.empty", V(GgufValueType.String, "")),
        ("t.u64", V(GgufValueType.UInt64, ulong.MaxValue - 5)),
        ("t.i64", V(GgufValueType.Int64, long.MinValue + 7)),
        ("t.f64", V(GgufValueType.Float64, Math.PI)),
        ("a.u8", GgufWriter.ArrayOf(new byte[] { 0, 1, 255 })),
        ("a.i8", GgufWriter.ArrayOf(new sbyte[] { -128, 0, 127 })),
        ("a.u16", GgufWriter.ArrayOf(new ushort[] { 1, 65535 })),
        ("a.i16", GgufWriter.ArrayOf(new short[] { -32768, 5 })),
        ("a.u32", GgufWriter.ArrayOf(new uint[] { 7, uint.MaxValue })),
        ("a.i32", GgufWriter.ArrayOf(new int[] { 3, 3, 1, -1 })),
        ("a.i32.empty", GgufWriter.ArrayOf(System.Array.Empty<int>())),
        ("a.f32", GgufWriter.ArrayOf(new float[] { -10000f, 0.5f, float.Epsilon, float.NegativeInfinity })),
        ("a.bool", GgufWriter.ArrayOf(new bool[] { true, false, true })),
        ("a.string", GgufWriter.ArrayOf(new string[] { "Ġ Ġ", "", "<|bos|>", "日本語" })),
        ("a.string.empty", GgufWriter.ArrayOf(System.Array.Empty<string>())),
        ("a.u64", GgufWriter.ArrayOf(new ulong[] { 0, ulong.MaxValue })),
        ("a.i64", GgufWriter.ArrayOf(new long[] { long.MinValue, 42 })),
        ("a.f64", GgufWriter.ArrayOf(new double[] { 1e300, -0.0 })),
        ("a.nested", GgufWriter.ArrayOf(new[]
        {
            GgufWriter.ArrayOf(new int[] { 1, 2 }),
            GgufWriter.ArrayOf(new string[] { "x" }),
            GgufWriter.ArrayOf(System.Array.Empty<float>()),
        })),
    ];

    private static void AssertValueEqual(GgufValue expected, GgufValue actual, string key)
    {
        Assert.True(expected.Type == actual.Type, $"{key}: type {actual.Type}, expected {expected.Type}");
        if (expected.Type != GgufValueType.Array)
        {
            Assert.True(Equals(expected.Value, actual.Value), $"{key}: {actual.Value} != {expected.Value}");
            return;
        }
        Assert.True(expected.ElementType == actual.ElementType, $"{key}: element type {actual.ElementType}, expected {expected.ElementType}");
        var a = (System.Array)expected.Value;
        var b = (System.Array)actual.Value;
        Assert.Equal(a.GetType(), b.GetType());
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++)
        {
            if (a.GetValue(i) is GgufValue ea) AssertValueEqual(ea, (GgufValue)b.GetValue(i)!, $"{key}[{i}]");
            else Assert.True(Equals(a.GetValue(i), b.GetValue(i)), $"{key}[{i}]: {b.GetValue(i)} != {a.GetValue(i)}");
        }
    }

    private static (string name, long[] shape, GgmlType type, byte[] data)[] SomeTensors()
    {
        var rng = new Random(1234);
        byte[] Raw(GgmlType t, long[] shape)
        {
            long elements = shape.Aggregate(1L, (x, y) => x * y);
            var f = new float[elements];
            for (int i = 0; i < f.Length; i++) f[i] = (float)(rng.NextDouble() * 4 - 2);
            var bytes = new byte[GgmlTypes.RowBytes(t, elements)];
            Quantize.Row(t, f, bytes);
            return bytes;
        }
        (string, long[], GgmlType, byte[]) T(string name, GgmlType t, params long[] shape) => (name, shape, t, Raw(t, shape));
        return
        [
            T("odd.f32", GgmlType.F32, 3, 5),           // 60 bytes: padding 4
            T("odd.f16", GgmlType.F16, 7),              // 14 bytes: padding 18
            T("blk.0.q8", GgmlType.Q8_0, 64, 3),        // 204 bytes
            T("scalar", GgmlType.F32, 1),
            T("three.d.f16", GgmlType.F16, 5, 3, 2),
            T("four.d.q8", GgmlType.Q8_0, 32, 1, 1, 2),
            T("wide.q8", GgmlType.Q8_0, 4096, 5),       // written in uneven chunks
        ];
    }

    private string[] LeftoverTemps() => Directory.GetFiles(_dir, "*.tmp-*");

    [Theory]
    [InlineData(32)]
    [InlineData(64)]
    public void RoundTripThroughGgufFile(int alignment)
    {
        string path = Path.Combine(_dir, $"roundtrip-{alignment}.gguf");
        var values = AllValues();
        var tensors = SomeTensors();
        long expectedLength;
        using (var w = new GgufWriter(path, alignment))
        {
            foreach (var (k, v) in values) w.Add(k, v);
            w.AddString("general.architecture", "test");
            foreach (var t in tensors) w.AddTensor(t.name, t.shape, t.type);
            expectedLength = w.ExpectedFileLength;
            Assert.True(File.Exists(w.TempPath));
            Assert.False(File.Exists(path));
            for (int i = 0; i < tensors.Length; i++)
            {
                var (name, _, _, data) = tensors[i];
                switch (i % 3)
                {
                    case 0: w.WriteTensor(name, data); break;
                    case 1: w.WriteTensor(name, new MemoryStream(data)); break;
                    default:
                        w.BeginTensor(name);
                        for (int off = 0; off < data.Length; off += 777)
                            w.WriteTensorData(data.AsSpan(off, Math.Min(777, data.Length - off)));
                        break;
                }
            }
            Assert.False(File.Exists(path));
            w.Complete();
            Assert.True(w.Completed);
            Assert.False(File.Exists(w.TempPath));
        }
        Assert.Empty(LeftoverTemps());

        using var f = GgufFile.Open(path);
        Assert.Equal(3u, f.Version);
        Assert.Equal(alignment, f.Alignment);
        Assert.Equal(expectedLength, f.FileLength);
        var keys = values.Select(v => v.key).Append("general.architecture").ToList();
        if (alignment != 32) keys.Add("general.alignment");
        Assert.Equal(keys, f.MetadataKeys);
        foreach (var (k, v) in values) AssertValueEqual(v, f.Metadata[k], k);
        Assert.Equal(tensors.Length, f.Tensors.Count);
        long lastEnd = 0;
        for (int i = 0; i < tensors.Length; i++)
        {
            var (name, shape, type, data) = tensors[i];
            var info = f.Tensors[i];
            Assert.Equal(name, info.Name);
            Assert.Equal(shape, info.Shape);
            Assert.Equal(type, info.Type);
            Assert.Equal(data.Length, info.ByteSize);
            Assert.Equal(0, info.Offset % alignment);
            Assert.Equal(GgufFile.AlignUp(lastEnd, alignment), info.Offset); // packed exactly as ggml pads
            lastEnd = info.Offset + info.ByteSize;
            var back = new byte[info.ByteSize];
            f.ReadTensorBytes(info, 0, back);
            Assert.Equal(data, back);
        }
        Assert.Equal(f.DataOffset + GgufFile.AlignUp(lastEnd, alignment), f.FileLength); // the last tensor is padded too
        output.WriteLine($"alignment {alignment}: {f.FileLength} bytes, data at {f.DataOffset}");
    }

    [Fact]
    public void CompleteReplacesAnExistingFileAtomically()
    {
        string path = Path.Combine(_dir, "replace.gguf");
        File.WriteAllText(path, "old contents");
        using (var w = new GgufWriter(path))
        {
            w.AddUInt32("x", 1);
            w.AddTensor("t", [32], GgmlType.F32);
            w.WriteTensor("t", new byte[128]);
            Assert.Equal("old contents", File.ReadAllText(path)); // untouched until Complete
            w.Complete();
        }
        using var f = GgufFile.Open(path);
        Assert.Equal(1, f.GetInt("x"));
        Assert.Empty(LeftoverTemps());
    }

    [Fact]
    public void CancelledWriteLeavesNoOutputAndNoTempFile()
    {
        string path = Path.Combine(_dir, "cancelled.gguf");
        string existing = Path.Combine(_dir, "existing.gguf");
        File.WriteAllText(existing, "keep me");
        foreach (var target in new[] { path, existing })
        {
            using var cts = new CancellationTokenSource();
            string temp;
            using (var w = new GgufWriter(target, ct: cts.Token))
            {
                temp = w.TempPath;
                w.AddString("general.architecture", "test");
                w.AddTensor("a", [64, 4], GgmlType.F32);
                w.AddTensor("b", [64, 4], GgmlType.F32);
                w.WriteTensor("a", new byte[1024]);
                w.BeginTensor("b");
                w.WriteTensorData(new byte[100]);
                cts.Cancel();
                Assert.ThrowsAny<OperationCanceledException>(() => w.WriteTensorData(new byte[100]));
                Assert.Throws<InvalidOperationException>(() => w.Complete()); // a failed writer stays failed
                Assert.True(File.Exists(temp));
            }
            Assert.False(File.Exists(temp));
        }
        Assert.False(File.Exists(path));
        Assert.Equal("keep me", File.ReadAllText(existing));
        Assert.Empty(LeftoverTemps());

        // Cancelled before anything was written: still nothing left.
        using (var cts = new CancellationTokenSource())
        using (var w = new GgufWriter(path, ct: cts.Token))
        {
            w.AddTensor("a", [32], GgmlType.F32);
            cts.Cancel();
            Assert.ThrowsAny<OperationCanceledException>(() => w.WriteTensor("a", new byte[128]));
        }
        Assert.False(File.Exists(path));
        Assert.Empty(LeftoverTemps());
    }

    [Fact]
    public void MisuseIsRejectedAndLeavesNothingBehind()
    {
        string path = Path.Combine(_dir, "misuse.gguf");
        using (var w = new GgufWriter(path))
        {
            w.AddString("k", "v");
            Assert.Throws<ArgumentException>(() => w.AddString("k", "again"));
            Assert.Throws<ArgumentException>(() => w.Add("bad", new GgufValue(GgufValueType.UInt32, 5))); // int in a u32
            Assert.Throws<ArgumentException>(() => w.Add("bad", new GgufValue(GgufValueType.Array, new int[1], GgufValueType.Float32)));
            Assert.Throws<ArgumentException>(() => w.Add("bad", new GgufValue(GgufValueType.Array, new int[1], GgufValueType.UInt32))); // CLR covariance
            Assert.Throws<ArgumentException>(() => w.Add("bad", new GgufValue(GgufValueType.Array, new sbyte[1], GgufValueType.UInt8)));
            Assert.Throws<ArgumentException>(() => w.AddTensor("q", [33], GgmlType.Q8_0));
            Assert.Throws<ArgumentException>(() => w.AddTensor(new string('x', 64), [32], GgmlType.F32));
            Assert.Throws<ArgumentException>(() => w.AddTensor("five", [1, 1, 1, 1, 1], GgmlType.F32));
            w.AddTensor("a", [32], GgmlType.F32);
            w.AddTensor("b", [32], GgmlType.F32);
            Assert.Throws<ArgumentException>(() => w.AddTensor("a", [32], GgmlType.F32));
            Assert.Throws<InvalidOperationException>(() => w.WriteTensor("b", new byte[128])); // out of order
            Assert.Throws<InvalidOperationException>(() => w.Complete());
        }
        Assert.False(File.Exists(path));
        Assert.Empty(LeftoverTemps());

        using (var w = new GgufWriter(path))
        {
            w.AddTensor("a", [32], GgmlType.F32);
            w.BeginTensor("a");
            Assert.Throws<ArgumentException>(() => w.WriteTensorData(new byte[129])); // overrun
        }
        Assert.False(File.Exists(path));
        Assert.Empty(LeftoverTemps());

        Assert.Throws<FitLMException>(() => new GgufWriter(_dir));
        Assert.Throws<FitLMException>(() => new GgufWriter(Path.Combine(_dir, "no", "such", "dir.gguf")));
    }
}
