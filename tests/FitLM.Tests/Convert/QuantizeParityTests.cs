using FitLM.Conversion;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Converters;

/// <summary>
/// `fitlm quantize` against ../shared's llama-quantize on the same F32 input: the files must be byte-identical
/// (metadata, tensor order, per-tensor types and every quantized block), with and without an importance matrix.
/// Skipped without ../shared or its llama.cpp peer.
/// </summary>
public sealed class QuantizeParityTests(QuantizeFixture fx, ITestOutputHelper output) : IClassFixture<QuantizeFixture>
{
    private bool NoPeer()
    {
        if (fx.LlamaQuantize != null) return false;
        output.WriteLine("../shared/peers/llama.cpp/llama-quantize is absent: nothing to compare against");
        return true;
    }

    private void AssertSameAsLlama(string input, string type, string? imatrix = null)
    {
        string tag = $"{Path.GetFileNameWithoutExtension(input)}-{type}{(imatrix == null ? "" : "-" + Path.GetExtension(imatrix)[1..])}";
        string ours = Path.Combine(fx.Dir, $"fitlm-{tag}.gguf"), theirs = Path.Combine(fx.Dir, $"llama-{tag}.gguf");
        string[] imArgs = imatrix == null ? [] : ["--imatrix", imatrix];
        var (code, log) = fx.RunLlamaQuantize([.. imArgs, input, theirs, type, "1"]);
        Assert.True(code == 0, $"llama-quantize failed: {log[^Math.Min(log.Length, 2000)..]}");
        var result = GgufQuantizer.Quantize(input, ours, QuantizationType.Parse(type), new QuantizeOptions(imatrix, Threads: 2));
        output.WriteLine($"{tag}: {string.Join(", ", result.TensorTypes.Select(kv => $"{kv.Key} x{kv.Value}"))}");
        Assert.Null(QuantizeFixture.FirstDifference(ours, theirs));
        File.Delete(ours);
        File.Delete(theirs);
    }

    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_0")]
    [InlineData("Q4_1")]
    [InlineData("Q5_0")]
    [InlineData("Q5_1")]
    [InlineData("Q2_K")]
    [InlineData("Q3_K_S")]
    [InlineData("Q3_K_M")]
    [InlineData("Q3_K_L")]
    [InlineData("Q4_K_S")]
    [InlineData("Q4_K_M")]
    [InlineData("Q5_K_S")]
    [InlineData("Q5_K_M")]
    [InlineData("Q6_K")]
    [InlineData("F16")]
    [InlineData("BF16")]
    public void EachTypeIsByteIdenticalToLlamaQuantize(string type)
    {
        if (NoPeer()) return;
        AssertSameAsLlama(fx.PycoderMini, type);
    }

    [Theory]
    [InlineData("Q4_K_M")]
    [InlineData("Q2_K")]
    [InlineData("Q6_K")]
    public void RowsThatAreNotWholeSuperBlocksFallBackAsLlamaQuantizeDoes(string type)
    {
        // tiny-llama3's rows are 64 wide: Q4_K falls back to Q5_0, Q2_K/Q3_K to Q4_0, Q6_K to Q8_0, output to Q8_0.
        if (NoPeer()) return;
        AssertSameAsLlama(fx.TinyF32, type);
    }

    [Theory]
    [InlineData("Q4_K_M", ".gguf")]
    [InlineData("Q4_K_M", ".dat")]
    [InlineData("Q4_0", ".gguf")]
    [InlineData("Q5_1", ".dat")]
    [InlineData("Q2_K", ".gguf")]
    [InlineData("Q3_K_M", ".gguf")]
    [InlineData("Q5_K_M", ".gguf")]
    [InlineData("Q6_K", ".dat")]
    public void ImportanceMatrixQuantizationIsByteIdenticalToLlamaQuantize(string type, string format)
    {
        if (NoPeer()) return;
        AssertSameAsLlama(fx.PycoderMini, type, format == ".gguf" ? fx.MiniImatrixGguf : fx.MiniImatrixDat);
    }

    [Fact]
    public void HuggingFaceFolderInputEqualsQuantizingItsF32Conversion()
    {
        // `fitlm quantize HF_FOLDER` = convert_hf_to_gguf --outtype f32 + llama-quantize, in one pass.
        if (NoPeer()) return;
        string ours = Path.Combine(fx.Dir, "tiny-from-folder-Q4_K_M.gguf"), theirs = Path.Combine(fx.Dir, "tiny-llama-Q4_K_M.gguf");
        var (code, log) = fx.RunLlamaQuantize(fx.TinyF32, theirs, "Q4_K_M", "1");
        Assert.True(code == 0, log);
        GgufQuantizer.Quantize(fx.TinyFolder, ours, QuantizationType.Parse("q4_k_m"));
        Assert.Null(QuantizeFixture.FirstDifference(ours, theirs));
    }
}
