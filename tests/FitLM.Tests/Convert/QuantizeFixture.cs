using System.Diagnostics;
using FitLM.Conversion;
using FitLM.Formats;
using FitLM.Tensors;

namespace FitLM.Tests.Converters;

/// <summary>
/// Inputs the quantize tests share, made once (lazily) in a temporary folder: pycoder-29m as the F32 GGUF
/// llama.cpp's converter writes, a two-layer cut of it (quick to quantize, every k-quant row 256-aligned),
/// and the tiny zoo llama (rows of 64: every k-quant falls back); plus ../shared's llama-quantize.
/// The cut keeps each weight's row length (what decides its type and blocks) but only its first 128 rows.
/// </summary>
public sealed class QuantizeFixture : IDisposable
{
    public string? Shared { get; } = TestPaths.Shared;
    public string Dir { get; } = Directory.CreateTempSubdirectory("fitlm-quantize-").FullName;
    private readonly Dictionary<string, string> _made = new();
    private readonly object _lock = new();

    /// <summary>../shared/peers/llama.cpp/llama-quantize, or null when ../shared or the peer is absent.</summary>
    public string? LlamaQuantize => Shared is { } s && File.Exists(Path.Combine(s, "peers", "llama.cpp", "llama-quantize"))
        ? Path.Combine(s, "peers", "llama.cpp", "llama-quantize") : null;

    public string PycoderFolder => Path.Combine(Shared!, "models", "pycoder-29m");
    public string TinyFolder => Path.Combine(Shared!, "models", "zoo", "tiny-llama3");

    /// <summary>pycoder-29m converted to F32 (convert_hf_to_gguf --outtype f32).</summary>
    public string PycoderF32 => Make("pycoder-f32.gguf", p => HfToGgufConverter.Convert(PycoderFolder, p, GgmlType.F32));

    /// <summary>tiny-llama3 converted to F32.</summary>
    public string TinyF32 => Make("tiny-llama3-f32.gguf", p => HfToGgufConverter.Convert(TinyFolder, p, GgmlType.F32));

    /// <summary>pycoder's first two blocks, every weight cut to its first 128 rows, block_count 2 (the metadata otherwise as is).</summary>
    public string PycoderMini => Make("pycoder-mini-f32.gguf", p => WriteCut(PycoderF32, p, layers: 2, maxRows: 128));

    /// <summary>An importance matrix for <see cref="PycoderMini"/>'s block weights in llama.cpp's GGUF format.</summary>
    public string MiniImatrixGguf => Make("mini-imatrix.gguf", p => ImatrixFiles.WriteGguf(p, ImatrixFiles.For(PycoderMini)));

    /// <summary>The same matrix in llama.cpp's legacy .dat format.</summary>
    public string MiniImatrixDat => Make("mini-imatrix.dat", p => ImatrixFiles.WriteDat(p, ImatrixFiles.For(PycoderMini)));

    private string Make(string name, Action<string> make)
    {
        lock (_lock)
        {
            if (_made.TryGetValue(name, out var path)) return path;
            path = Path.Combine(Dir, name);
            make(path);
            _made[name] = path;
            return path;
        }
    }

    /// <summary>Runs llama-quantize with <paramref name="args"/>; returns its exit code and output.</summary>
    public (int ExitCode, string Output) RunLlamaQuantize(params string[] args)
    {
        var psi = new ProcessStartInfo(LlamaQuantize!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            p.Kill(true);
            throw new TimeoutException($"llama-quantize {string.Join(' ', args)} did not finish in 3 minutes");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    /// <summary>Where two files first differ, named by the tensor of <paramref name="ours"/> that holds the byte (null: equal).</summary>
    public static string? FirstDifference(string ours, string theirs)
    {
        byte[] a = File.ReadAllBytes(ours), b = File.ReadAllBytes(theirs);
        int n = Math.Min(a.Length, b.Length), i = 0;
        while (i < n && a[i] == b[i]) i++;
        if (i == n && a.Length == b.Length) return null;
        using var g = GgufFile.Open(ours);
        var t = g.Tensors.FirstOrDefault(t => i >= g.DataOffset + t.Offset && i < g.DataOffset + t.Offset + t.ByteSize);
        return $"{a.Length} vs {b.Length} bytes; first difference at byte {i} ({(t == null ? "header" : $"tensor {t.Name}, {t.Type}")})";
    }

    private static void WriteCut(string input, string output, int layers, long maxRows)
    {
        using var g = GgufFile.Open(input);
        string arch = g.GetString("general.architecture");
        using var w = new GgufWriter(output, (int)g.Alignment);
        foreach (var key in g.MetadataKeys)
            w.Add(key, key == $"{arch}.block_count" ? new GgufValue(GgufValueType.UInt32, (uint)layers) : g.Metadata[key]);
        var keep = g.Tensors.Where(t => Layer(t.Name) < layers).ToList();
        long[] ShapeOf(GgufTensorInfo t) => t.Shape.Length == 2 ? [t.Shape[0], Math.Min(t.Shape[1], maxRows)] : t.Shape;
        foreach (var t in keep) w.AddTensor(t.Name, ShapeOf(t), t.Type);
        foreach (var t in keep)
        {
            var bytes = new byte[GgmlTypes.RowBytes(t.Type, ShapeOf(t).Aggregate(1L, (x, y) => x * y))];
            g.ReadTensorBytes(t, 0, bytes);
            w.WriteTensor(t.Name, bytes);
        }
        w.Complete();
    }

    private static int Layer(string name) =>
        name.StartsWith("blk.", StringComparison.Ordinal) ? int.Parse(name.AsSpan(4, name.IndexOf('.', 4) - 4)) : -1;

    public void Dispose()
    {
        try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
    }
}

/// <summary>Writes importance matrices in llama.cpp's two formats (as llama-imatrix would; ../shared has no llama-imatrix).</summary>
public static class ImatrixFiles
{
    /// <summary>Deterministic log-normal column importances for every quantizable block weight of <paramref name="model"/>.</summary>
    public static Dictionary<string, float[]> For(string model)
    {
        using var g = GgufFile.Open(model);
        var rng = new Random(7);
        var result = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var t in g.Tensors.Where(t => t.Name.StartsWith("blk.", StringComparison.Ordinal) && t.Shape.Length == 2))
            result[t.Name] = Enumerable.Range(0, (int)t.Shape[0]).Select(_ => (float)Math.Exp(rng.NextDouble() * 4 - 2)).ToArray();
        return result;
    }

    /// <summary>GGUF: NAME.in_sum2 (values x count) and NAME.counts per weight, imatrix.* metadata.</summary>
    public static void WriteGguf(string path, Dictionary<string, float[]> values, float count = 1000, int chunks = 10)
    {
        using var w = new GgufWriter(path);
        w.AddString("general.type", "imatrix");
        w.AddArray("imatrix.datasets", new[] { "pycode-dev.txt" });
        w.AddUInt32("imatrix.chunk_count", (uint)chunks);
        w.AddUInt32("imatrix.chunk_size", 512);
        foreach (var (name, v) in values)
        {
            w.AddTensor(name + ".in_sum2", [v.Length, 1], GgmlType.F32);
            w.AddTensor(name + ".counts", [1, 1], GgmlType.F32);
        }
        foreach (var (name, v) in values)
        {
            w.WriteTensor(name + ".in_sum2", System.Runtime.InteropServices.MemoryMarshal.AsBytes(v.Select(x => x * count).ToArray().AsSpan()));
            w.WriteTensor(name + ".counts", BitConverter.GetBytes(count));
        }
        w.Complete();
    }

    /// <summary>Legacy .dat: entries, then name, ncall, n, values x ncall per entry, then the chunk count and dataset name.</summary>
    public static void WriteDat(string path, Dictionary<string, float[]> values, int ncall = 10)
    {
        using var f = new BinaryWriter(File.Create(path));
        f.Write(values.Count);
        foreach (var (name, v) in values)
        {
            var bytes = System.Text.Encoding.UTF8.GetBytes(name);
            f.Write(bytes.Length);
            f.Write(bytes);
            f.Write(ncall);
            f.Write(v.Length);
            foreach (var x in v) f.Write(x * ncall);
        }
        f.Write(10);
        var ds = System.Text.Encoding.UTF8.GetBytes("pycode-dev.txt");
        f.Write(ds.Length);
        f.Write(ds);
    }
}
