using System.Runtime.CompilerServices;
using FitLM.Formats;
using FitLM.Tensors;
using Xunit;
using Xunit.Abstractions;
using static FitLM.Tests.Kernels.KernelTestData;

namespace FitLM.Tests.Kernels;

/// <summary>
/// Checks the kernels against files llama.cpp wrote: ../shared/models/pycoder-29m-gguf/*.gguf (the same model
/// at Q8_0, Q4_0, Q4_K_M, Q3_K_M, Q2_K) and its BF16 source (../shared/models/pycoder-29m). A k-quant layout that
/// differs from ggml's turns real weights into noise, far outside the bounds below.
/// Returns early (passes) with a message when the shared directory is absent.
/// </summary>
public class RealFileDequantTests
{
    private readonly ITestOutputHelper _out;
    public RealFileDequantTests(ITestOutputHelper output) => _out = output;

    /// <summary>
    /// Relative RMS difference allowed between a tensor of the given type and the Q8_0 file's copy. These are
    /// real weights (heavier-tailed than Gaussian), and the mixtures requantize some tensors at other types.
    /// </summary>
    private static double Bound(GgmlType t) => t switch
    {
        // Measured worst tensors: q6_K 0.019, q5_K 0.038, q4_K 0.074, q4_0 0.089, q3_K 0.153, q2_K 0.302.
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 => 0.01,
        GgmlType.Q6_K => 0.03,
        GgmlType.Q5_K or GgmlType.Q5_0 or GgmlType.Q5_1 => 0.055,
        GgmlType.Q4_K or GgmlType.Q4_0 or GgmlType.Q4_1 => 0.12,
        GgmlType.Q3_K => 0.21,
        GgmlType.Q2_K => 0.40,
        _ => throw new InvalidOperationException($"no bound for {t}"),
    };

    internal static string? FindShared([CallerFilePath] string sourceFile = "")
    {
        // The repository root holds FitLM.slnx; shared/ sits next to it. Build outputs may live outside the
        // tree (FITLM_ARTIFACTS), so fall back to this source file's location.
        foreach (var start in new[] { AppContext.BaseDirectory, Path.GetDirectoryName(sourceFile) ?? "" })
        {
            for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "FitLM.slnx")))
                    return Path.GetFullPath(Path.Combine(dir.FullName, "..", "shared"));
            }
        }
        return null;
    }

    private string? GgufDir()
    {
        var shared = FindShared();
        var dir = shared == null ? null : Path.Combine(shared, "models", "pycoder-29m-gguf");
        if (dir == null || !Directory.Exists(dir))
        {
            _out.WriteLine($"SKIPPED: {dir ?? "../shared"} is absent; real-file checks not run.");
            return null;
        }
        return dir;
    }

    private static float[] ReadTensor(GgufFile f, GgufTensorInfo t)
    {
        var bytes = new byte[t.ByteSize];
        f.ReadTensorBytes(t, 0, bytes);
        var result = new float[t.Elements];
        long rowBytes = GgmlTypes.RowBytes(t.Type, t.RowLength);
        for (long r = 0; r < t.Rows; r++)
        {
            Dequantize.Row(t.Type, bytes.AsSpan((int)(r * rowBytes), (int)rowBytes),
                result.AsSpan((int)(r * t.RowLength), (int)t.RowLength));
        }
        return result;
    }

    [Fact]
    public void EveryTensor_DequantizesCloseToQ8_0()
    {
        var dir = GgufDir();
        if (dir == null) return;
        var q8Path = Directory.GetFiles(dir, "*q8_0.gguf").Single();
        using var q8 = GgufFile.Open(q8Path);
        var seenTypes = new HashSet<GgmlType>();
        int compared = 0;

        foreach (var path in Directory.GetFiles(dir, "*.gguf").OrderBy(p => p, StringComparer.Ordinal))
        {
            using var f = GgufFile.Open(path);
            var worstByType = new Dictionary<GgmlType, double>();
            foreach (var t in f.Tensors)
            {
                var values = ReadTensor(f, t);
                Assert.True(values.All(float.IsFinite), $"{Path.GetFileName(path)} {t.Name}: non-finite value");
                seenTypes.Add(t.Type);

                // QuantDot on real blocks: a few rows against the dequantized rows.
                var bytes = new byte[t.ByteSize];
                f.ReadTensorBytes(t, 0, bytes);
                long rowBytes = GgmlTypes.RowBytes(t.Type, t.RowLength);
                var x = Gaussian((int)t.RowLength, 3);
                for (long r = 0; r < Math.Min(3, t.Rows); r++)
                {
                    var row = bytes.AsSpan((int)(r * rowBytes), (int)rowBytes);
                    var (exact, absSum) = ExactDot(values.AsSpan((int)(r * t.RowLength), (int)t.RowLength), x);
                    float got = QuantDot.Dot(t.Type, row, x);
                    Assert.True(Math.Abs(got - exact) <= 1e-4 * absSum + 1e-30, $"{t.Name} row {r}: Dot {got} vs {exact}");
                }
                if (path == q8Path) continue;
                var r8 = q8.GetTensor(t.Name);
                Assert.Equal(t.Shape, r8.Shape);
                var reference = ReadTensor(q8, r8);
                double rel = RmsDiff(values, reference) / Math.Max(Rms(reference), 1e-30);
                worstByType[t.Type] = Math.Max(worstByType.GetValueOrDefault(t.Type), rel);
                Assert.True(rel < Bound(t.Type),
                    $"{Path.GetFileName(path)} {t.Name} ({t.Type}): relative RMS difference from Q8_0 {rel:F4} >= {Bound(t.Type)}");
                compared++;
            }
            _out.WriteLine($"{Path.GetFileName(path)}: " + string.Join(", ",
                worstByType.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key} worst rel RMS {kv.Value:F4}")));
        }
        Assert.True(compared > 0);
        // The point of the test is the k-quant layouts: make sure the files really contain them.
        foreach (var t in new[] { GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q6_K })
            Assert.Contains(t, seenTypes);
    }

    /// <summary>GGUF tensor name to the Hugging Face name, for tensors llama.cpp's converter does not permute.</summary>
    private static string? HfName(string gguf)
    {
        if (gguf == "token_embd.weight") return "model.embed_tokens.weight";
        if (gguf == "output.weight") return "lm_head.weight";
        if (gguf == "output_norm.weight") return "model.norm.weight";
        var parts = gguf.Split('.');
        if (parts.Length != 4 || parts[0] != "blk") return null;
        string? hf = parts[2] switch
        {
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => null, // attn_q / attn_k are row-permuted for RoPE by the converter
        };
        return hf == null ? null : $"model.layers.{parts[1]}.{hf}.{parts[3]}";
    }

    /// <summary>
    /// Quantizing the BF16 source weights with Quantize.Row must give the bytes llama.cpp wrote (files made
    /// without an importance matrix, so llama.cpp used the same reference quantizers). Every 11th row of
    /// every tensor the converter does not permute, to keep the (Debug-build) test quick.
    /// </summary>
    [Fact]
    public void Quantize_ReproducesLlamaCppBytes()
    {
        var dir = GgufDir();
        var hfDir = dir == null ? null : Path.Combine(Path.GetDirectoryName(dir)!, "pycoder-29m");
        if (hfDir == null || !Directory.Exists(hfDir))
        {
            _out.WriteLine("SKIPPED: shared model directories are absent.");
            return;
        }
        var sources = Directory.GetFiles(hfDir, "*.safetensors").Select(SafetensorsFile.Open).ToList();
        try
        {
            var byName = sources.SelectMany(s => s.Tensors.Values.Select(t => (s, t))).ToDictionary(p => p.t.Name);
            var stats = new SortedDictionary<string, (long blocks, long same)>(StringComparer.Ordinal);
            foreach (var path in Directory.GetFiles(dir!, "*.gguf").OrderBy(p => p, StringComparer.Ordinal))
            {
                using var f = GgufFile.Open(path);
                foreach (var t in f.Tensors)
                {
                    if (HfName(t.Name) is not { } hf || !byName.TryGetValue(hf, out var src)) continue;
                    var raw = new byte[src.t.ByteSize];
                    src.s.ReadTensorBytes(src.t, 0, raw);
                    var x = new float[src.t.Elements];
                    Dequantize.Row(src.t.Type, raw, x); // BF16 -> F32, exact
                    var expected = new byte[t.ByteSize];
                    f.ReadTensorBytes(t, 0, expected);
                    long rowBytes = GgmlTypes.RowBytes(t.Type, t.RowLength);
                    var got = new byte[rowBytes];
                    int bb = GgmlTypes.BlockBytes(t.Type);
                    long blocks = 0, same = 0;
                    for (long r = 0; r < t.Rows; r += 11)
                    {
                        Quantize.Row(t.Type, x.AsSpan((int)(r * t.RowLength), (int)t.RowLength), got);
                        var want = expected.AsSpan((int)(r * rowBytes), (int)rowBytes);
                        for (int b = 0; b < rowBytes / bb; b++, blocks++)
                            if (got.AsSpan(b * bb, bb).SequenceEqual(want.Slice(b * bb, bb))) same++;
                    }
                    string key = $"{t.Type}";
                    var s = stats.GetValueOrDefault(key);
                    stats[key] = (s.blocks + blocks, s.same + same);
                }
            }
            foreach (var (type, (blocks, same)) in stats)
                _out.WriteLine($"{type}: {same}/{blocks} blocks identical to llama.cpp's");
            foreach (var (type, (blocks, same)) in stats)
                Assert.True(same == blocks, $"{type}: only {same} of {blocks} blocks match llama.cpp's bytes");
        }
        finally
        {
            foreach (var s in sources) s.Dispose();
        }
    }
}
