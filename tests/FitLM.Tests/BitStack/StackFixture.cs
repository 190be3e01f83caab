using FitLM.Compression;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Conversion;

namespace FitLM.Tests.BitStack;

/// <summary>
/// A tiny random-weight llama (2 layers, dim 256, the demo model's 8192-token vocabulary) and its BitStack
/// stack (3 blocks per matrix), built once per test run in a temporary folder.
/// </summary>
public sealed class StackFixture
{
    private static readonly Lazy<StackFixture> s_shared = new(() => new StackFixture(), LazyThreadSafetyMode.ExecutionAndPublication);
    public static StackFixture Shared => s_shared.Value;

    public string Dir { get; }
    public string Original { get; }
    public string Stacked { get; }
    public string CalibText { get; }
    public BitStackResult Result { get; }

    public static readonly BitStackOptions Options = new()
    {
        Blocks = 3,
        Rank = 2,
        CalibContext = 32,
        CalibWindows = 3,
        ScoreContext = 32,
        ScoreWindows = 1,
        ScoreLevels = 1,
        CalibrationNote = "README.md",
    };

    private StackFixture()
    {
        Dir = Path.Combine(Path.GetTempPath(), "fitlm-bitstack-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(Dir);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(Dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        };
        Original = Path.Combine(Dir, "tiny-f16.gguf");
        SyntheticModel.Write(Original, SyntheticShape.Parse("tiny"), "f16", TestPaths.DemoModel);
        CalibText = File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "README.md"));
        Stacked = Path.Combine(Dir, "tiny.bitstack.gguf");
        Result = BitStackCompressor.Compress(Original, CalibText, Stacked, Options);
    }

    public static GgufSource Open(string path) => GgufSource.Open(path);

    /// <summary>Logits of a short prompt at every position, and a few greedy decode steps after it.</summary>
    public static float[] Logits(Transformer t, int vocab)
    {
        int[] prompt = [1, 400, 1234, 77, 5000, 31, 8000, 2];
        var all = new float[prompt.Length * vocab];
        t.Forward(prompt, 0, all, 0);
        var result = all.ToList();
        var last = all.AsSpan((prompt.Length - 1) * vocab, vocab).ToArray();
        for (int i = 0; i < 3; i++)
        {
            int next = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(last);
            t.Forward([next], prompt.Length + i, last, 0);
            result.AddRange(last);
        }
        return result.ToArray();
    }

    /// <summary>
    /// Copies a GGUF, letting <paramref name="meta"/> change metadata (return null to drop a key) and
    /// <paramref name="tensor"/> change or drop tensor entries (data is copied, or zero-filled when the size changes).
    /// </summary>
    public static string Rewrite(string src, string dst, Func<string, GgufValue, GgufValue?>? meta = null,
        Func<GgufTensorInfo, (string Name, long[] Shape, GgmlType Type)?>? tensor = null)
    {
        using var f = GgufFile.Open(src);
        using var w = new GgufWriter(dst);
        foreach (var k in f.MetadataKeys)
        {
            if (k == "general.alignment") continue;
            var v = meta == null ? f.Metadata[k] : meta(k, f.Metadata[k]);
            if (v != null) w.Add(k, v);
        }
        var kept = new List<(GgufTensorInfo Info, string Name, long[] Shape, GgmlType Type)>();
        foreach (var t in f.Tensors)
        {
            var d = tensor == null ? (t.Name, t.Shape, t.Type) : tensor(t);
            if (d is not { } x) continue;
            w.AddTensor(x.Name, x.Shape, x.Type);
            kept.Add((t, x.Name, x.Shape, x.Type));
        }
        foreach (var (info, name, shape, type) in kept)
        {
            long bytes = GgmlTypes.RowBytes(type, shape[0]) * shape.Skip(1).Aggregate(1L, (a, b) => a * b);
            var data = new byte[bytes];
            if (bytes == info.ByteSize) f.ReadTensorBytes(info, 0, data);
            w.WriteTensor(name, data);
        }
        w.Complete();
        return dst;
    }
}
