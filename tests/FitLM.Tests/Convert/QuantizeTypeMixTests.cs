using System.Text.RegularExpressions;
using FitLM.Conversion;
using FitLM.Formats;
using FitLM.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Converters;

/// <summary>
/// The per-tensor type mix (llama_tensor_get_type) against llama.cpp: the files llama-quantize wrote into
/// ../shared (Q4_K_M, Q3_K_M, Q2_K, Q4_0, Q8_0), and llama-quantize --dry-run for every type.
/// </summary>
public sealed partial class QuantizeTypeMixTests(QuantizeFixture fx, ITestOutputHelper output) : IClassFixture<QuantizeFixture>
{
    [Theory]
    [InlineData("pycoder-29m-q4_k_m.gguf", "Q4_K_M")]
    [InlineData("pycoder-29m-q3_k_m.gguf", "Q3_K_M")]
    [InlineData("pycoder-29m-q2_k.gguf", "Q2_K")]
    [InlineData("pycoder-29m-q4_0.gguf", "Q4_0")]
    [InlineData("pycoder-29m-q8_0.gguf", "Q8_0")]
    public void MixMatchesTheFilesLlamaQuantizeWrote(string file, string type)
    {
        if (fx.Shared == null)
        {
            output.WriteLine("../shared is absent: no llama.cpp files to compare with");
            return;
        }
        using var theirs = GgufFile.Open(Path.Combine(fx.Shared, "models", "pycoder-29m-gguf", file));
        var plan = GgufQuantizer.PlanTypes(fx.PycoderFolder, QuantizationType.Parse(type));
        Assert.Equal(theirs.Tensors.Select(t => (t.Name, t.Type)).OrderBy(x => x.Name), plan.OrderBy(x => x.Name));
        Assert.Equal((uint)theirs.GetInt("general.file_type"), QuantizationType.Parse(type).FileType);
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void MixMatchesLlamaQuantizeDryRunForEveryType(string type)
    {
        if (fx.LlamaQuantize == null)
        {
            output.WriteLine("../shared/peers/llama.cpp/llama-quantize is absent");
            return;
        }
        foreach (var model in new[] { fx.PycoderF32, fx.TinyF32 })
        {
            var (code, log) = fx.RunLlamaQuantize("--dry-run", model, type);
            Assert.True(code == 0, log);
            // "[   9/  75] blk.0.ffn_down.weight - [...], type =    f32, size = 2.50 MiB -> 0.51 MiB (q6_K)"; no "(type)": kept.
            var theirs = DryRunLine().Matches(log).Select(m => (m.Groups[1].Value,
                m.Groups[3].Success ? m.Groups[3].Value : m.Groups[2].Value)).OrderBy(x => x.Item1).ToList();
            var ours = GgufQuantizer.PlanTypes(model, QuantizationType.Parse(type))
                .Select(x => (x.Name, QuantizedTensor.TypeName(x.Type))).OrderBy(x => x.Item1).ToList();
            Assert.NotEmpty(theirs);
            Assert.Equal(theirs, ours);
        }
    }

    public static TheoryData<string> AllTypes()
    {
        var d = new TheoryData<string>();
        foreach (var t in QuantizationType.All.Where(t => t.Name != "F32")) d.Add(t.Name);
        return d;
    }

    [GeneratedRegex(@"\]\s+(\S+)\s+- \[[^\]]*\], type =\s+(\S+), size =[^\n(]*?(?:\((\w+)\))?\s*$", RegexOptions.Multiline)]
    private static partial Regex DryRunLine();

    [Fact]
    public void UseMoreBitsPicksTheLayersLlamaCppPicks()
    {
        // 8 layers (pycoder): the first, the last and every third between get Q6_K in Q4_K_M.
        Assert.Equal([0, 3, 6, 7], Enumerable.Range(0, 8).Where(i => TensorTypeMix.UseMoreBits(i, 8)));
        Assert.Equal([0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31], Enumerable.Range(0, 32).Where(i => TensorTypeMix.UseMoreBits(i, 32)));
    }

    [Fact]
    public void OneDimensionalTensorsAndNormsAreNeverQuantized()
    {
        Assert.False(TensorTypeMix.AllowsQuantization("blk.0.attn_norm.weight", 2));
        Assert.False(TensorTypeMix.AllowsQuantization("output_norm.weight", 1));
        Assert.False(TensorTypeMix.AllowsQuantization("blk.0.attn_q.bias", 1));
        Assert.False(TensorTypeMix.AllowsQuantization("blk.0.ffn_gate_inp.weight", 2));
        Assert.True(TensorTypeMix.AllowsQuantization("blk.0.attn_q.weight", 2));
    }

    [Fact]
    public void TypeNamesParseLikeLlamaQuantize()
    {
        Assert.Equal("Q4_K_M", QuantizationType.Parse("q4_k_m").Name);
        Assert.Equal("Q4_K_M", QuantizationType.Parse("Q4_K").Name);
        Assert.Equal(15u, QuantizationType.Parse("Q4_K_M").FileType);
        Assert.Equal("Q4_K_M", QuantizationType.Parse("15").Name);
        Assert.Equal(GgmlType.Q6_K, QuantizationType.Parse("q6_k").DefaultType);
        var e = Assert.Throws<FitLMException>(() => QuantizationType.Parse("Q9_X"));
        Assert.Contains("unknown quantization type 'Q9_X'", e.Message);
    }
}
