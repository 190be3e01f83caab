using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Tests.Cli;
using Xunit;
using FitLM.Conversion;

namespace FitLM.Tests.Converters;

/// <summary>
/// `fitlm synth` files read back as the GGUF spec and llama.cpp lay them out: tensor names in llama.cpp's order,
/// shapes as [ne0, ne1], the per-tensor types llama-quantize picks for each file type, every tensor's data at an
/// aligned offset right after the previous one, metadata llama.cpp's loader needs; and FitLM runs them to finite
/// logits. Written through the real CLI with the "tiny" shape (hidden 256, 2 layers, 4 heads, 2 KV heads, FFN 512)
/// and the demo model's 8192-token vocabulary.
/// </summary>
public sealed class SynthFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-synth-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private const int Dim = 256, Layers = 2, Heads = 4, KvHeads = 2, Ffn = 512, HeadDim = Dim / Heads, Vocab = 8192;

    /// <summary>What llama-quantize gives each tensor, written out independently of SyntheticModel.TypeFor.</summary>
    private static GgmlType Expected(string ftype, string name)
    {
        if (name.EndsWith("_norm.weight")) return GgmlType.F32;
        return ftype switch
        {
            "f32" => GgmlType.F32,
            "f16" => GgmlType.F16,
            "q8_0" => GgmlType.Q8_0,
            "q4_0" => name == "output.weight" ? GgmlType.Q6_K : GgmlType.Q4_0,
            // Q4_K_M: output Q6_K; attn_v and ffn_down get Q6_K in "more bits" layers — with 2 layers, both
            // (layer < n/8 is false for n = 2, but layer >= 7n/8 holds for layer 1, and (l - n/8) % 3 == 2 for none:
            // so layer 1 only).
            "q4_k_m" => name == "output.weight" ? GgmlType.Q6_K
                : name is "blk.1.attn_v.weight" or "blk.1.ffn_down.weight" ? GgmlType.Q6_K
                : GgmlType.Q4_K,
            _ => throw new ArgumentException(ftype),
        };
    }

    private static List<(string Name, long[] Shape)> ExpectedTensors()
    {
        var list = new List<(string, long[])>
        {
            ("token_embd.weight", [Dim, Vocab]),
            ("output_norm.weight", [Dim]),
            ("output.weight", [Dim, Vocab]),
        };
        for (int l = 0; l < Layers; l++)
        {
            string p = $"blk.{l}.";
            list.Add((p + "attn_norm.weight", [Dim]));
            list.Add((p + "attn_q.weight", [Dim, Heads * HeadDim]));
            list.Add((p + "attn_k.weight", [Dim, KvHeads * HeadDim]));
            list.Add((p + "attn_v.weight", [Dim, KvHeads * HeadDim]));
            list.Add((p + "attn_output.weight", [Heads * HeadDim, Dim]));
            list.Add((p + "ffn_norm.weight", [Dim]));
            list.Add((p + "ffn_gate.weight", [Dim, Ffn]));
            list.Add((p + "ffn_up.weight", [Dim, Ffn]));
            list.Add((p + "ffn_down.weight", [Ffn, Dim]));
        }
        return list;
    }

    [Theory]
    [InlineData("f32")] // exact weights: the GPU test run compares float kernels (the tiled prefill attention) at float tolerance
    [InlineData("f16")]
    [InlineData("q8_0")]
    [InlineData("q4_0")]
    [InlineData("q4_k_m")]
    public void SynthFileHasLlamaCppLayoutAndRuns(string ftype)
    {
        string path = Path.Combine(_dir, $"tiny-{ftype}.gguf");
        var r = CliRunner.Run("synth", "-o", path, "--shape", "tiny", "--type", ftype, "--vocab", TestPaths.DemoModel, "--seed", "3");
        Assert.True(r.ExitCode == 0, r.StdErr);
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp*")); // written to a temp name and renamed

        using (var g = GgufFile.Open(path))
        {
            Assert.Equal(3u, g.Version);
            Assert.Equal(32, g.Alignment);
            // Metadata llama.cpp's llama loader reads.
            Assert.Equal("llama", g.GetString("general.architecture"));
            Assert.Equal(Dim, g.GetInt("llama.embedding_length"));
            Assert.Equal(Layers, g.GetInt("llama.block_count"));
            Assert.Equal(Ffn, g.GetInt("llama.feed_forward_length"));
            Assert.Equal(Heads, g.GetInt("llama.attention.head_count"));
            Assert.Equal(KvHeads, g.GetInt("llama.attention.head_count_kv"));
            Assert.Equal(HeadDim, g.GetInt("llama.rope.dimension_count"));
            Assert.Equal(1e-5, g.GetDouble("llama.attention.layer_norm_rms_epsilon", 0), 9);
            Assert.Equal(ftype switch { "f32" => 0, "f16" => 1, "q4_0" => 2, "q8_0" => 7, _ => 15 }, g.GetInt("general.file_type"));
            Assert.Equal(Vocab, g.Find("tokenizer.ggml.tokens")!.AsStringArray().Length);
            Assert.Equal("gpt2", g.GetString("tokenizer.ggml.model"));

            // Tensors: names in order, shapes, types, and data laid out back to back at aligned offsets.
            var expected = ExpectedTensors();
            Assert.Equal(expected.Select(e => e.Name), g.Tensors.Select(t => t.Name));
            long next = 0;
            foreach (var (t, e) in g.Tensors.Zip(expected))
            {
                Assert.Equal(e.Shape, t.Shape);
                Assert.Equal(Expected(ftype, t.Name), t.Type);
                Assert.Equal(GgmlTypes.RowBytes(t.Type, t.Shape[0]) * t.Rows, t.ByteSize);
                Assert.Equal(0, t.Offset % g.Alignment);
                Assert.Equal(0, (g.DataOffset + t.Offset) % g.Alignment);
                Assert.Equal(next, t.Offset);
                next = GgufFile.AlignUp(t.Offset + t.ByteSize, g.Alignment);
            }
            Assert.Equal(0, g.DataOffset % g.Alignment);
            var last = g.Tensors[^1];
            Assert.InRange(g.FileLength, g.DataOffset + last.Offset + last.ByteSize, g.DataOffset + next);

            // Values: norms near 1, matrices with std ≈ 0.02 around 0, never all zeros.
            var norm = Dequant(g, g.GetTensor("blk.0.attn_norm.weight"));
            Assert.InRange(norm.Average(), 0.99, 1.01);
            var w = Dequant(g, g.GetTensor("blk.1.ffn_up.weight"));
            double mean = w.Average(), std = Math.Sqrt(w.Select(v => (v - mean) * (v - mean)).Average());
            Assert.InRange(mean, -0.002, 0.002);
            Assert.InRange(std, 0.018, 0.022);
        }

        using var lm = LanguageModel.Load(path, contextLength: 64);
        var logits = new float[lm.Config.Vocab * 3];
        lm.Transformer.Forward([1, 100, 2000], 0, logits, 0);
        Assert.All(logits, v => Assert.True(float.IsFinite(v)));
        Assert.True(logits.Max() > logits.Min());
    }

    [Fact]
    public void SameSeedSameBytesOtherSeedOtherBytes()
    {
        string a = Path.Combine(_dir, "a.gguf"), b = Path.Combine(_dir, "b.gguf"), c = Path.Combine(_dir, "c.gguf");
        SyntheticModel.Write(a, SyntheticShape.Parse("tiny"), "q8_0", TestPaths.DemoModel, seed: 5);
        SyntheticModel.Write(b, SyntheticShape.Parse("tiny"), "q8_0", TestPaths.DemoModel, seed: 5);
        SyntheticModel.Write(c, SyntheticShape.Parse("tiny"), "q8_0", TestPaths.DemoModel, seed: 6);
        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(b));
        Assert.NotEqual(File.ReadAllBytes(a), File.ReadAllBytes(c));
    }

    [Fact]
    public void KnownShapesAreTheIssuesShapes()
    {
        Assert.Equal(new SyntheticShape("llama-0.8b", 2048, 16, 32, 4, 5632), SyntheticShape.Parse("llama-0.8b"));
        Assert.Equal(new SyntheticShape("llama-7b", 4096, 32, 32, 32, 11008), SyntheticShape.Parse("llama-7b"));
        var bad = CliRunner.Run("synth", "-o", Path.Combine(_dir, "x.gguf"), "--shape", "llama-99b", "--vocab", TestPaths.DemoModel);
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("unknown shape", bad.StdErr);
        Assert.False(File.Exists(Path.Combine(_dir, "x.gguf")));
    }

    private static float[] Dequant(GgufFile g, GgufTensorInfo t)
    {
        var bytes = new byte[t.ByteSize];
        g.ReadTensorBytes(t, 0, bytes);
        var values = new float[t.Elements];
        Dequantize.Row(t.Type, bytes, values);
        return values;
    }
}
