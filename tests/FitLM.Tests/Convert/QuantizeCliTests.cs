using System.Security.Cryptography;
using FitLM.Formats;
using FitLM.Tensors;
using FitLM.Tests.Cli;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Converters;

/// <summary>`fitlm quantize` and `fitlm convert --type` as a user runs them.</summary>
public sealed class QuantizeCliTests(QuantizeFixture fx, ITestOutputHelper output) : IClassFixture<QuantizeFixture>
{
    [Fact]
    public void BadTypeNameIsOneLineError()
    {
        string outPath = Path.Combine(fx.Dir, "never.gguf");
        var r = CliRunner.Run("quantize", TestPaths.DemoModel, outPath, "Q9_X");
        Assert.Equal(1, r.ExitCode);
        string line = Assert.Single(r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: unknown quantization type 'Q9_X' (supported: Q4_0, ", line);
        Assert.False(File.Exists(outPath));
    }

    [Fact]
    public void OutputEqualToInputIsRefusedAndTheInputIsUntouched()
    {
        string model = Path.Combine(fx.Dir, "demo-copy.gguf");
        File.Copy(TestPaths.DemoModel, model, overwrite: true);
        byte[] before = SHA256.HashData(File.ReadAllBytes(model));
        var r = CliRunner.Run("quantize", model, model, "Q8_0");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("the output would replace the input", r.StdErr);
        Assert.Single(r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal(before, SHA256.HashData(File.ReadAllBytes(model)));
    }

    [Fact]
    public void RequantizingTheDemoModelWarnsAndWritesQ8_0()
    {
        // The demo model is Q4_K_M: llama-quantize refuses without --allow-requantize; FitLM dequantizes and warns.
        string outPath = Path.Combine(fx.Dir, "demo-q8_0.gguf");
        var r = CliRunner.Run("quantize", TestPaths.DemoModel, outPath, "q8_0", "--threads", "2");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("warning: the input is already quantized (Q4_K, Q6_K)", r.StdErr);
        Assert.Contains("[ 3/75] token_embd.weight", r.StdErr);
        Assert.Contains("q4_K -> q8_0", r.StdErr);
        Assert.StartsWith($"wrote {outPath}: Q8_0, 75 tensors (f32 x17, q8_0 x58)", r.StdOut);
        using var g = GgufFile.Open(outPath);
        Assert.Equal(7, g.GetInt("general.file_type"));
        Assert.Equal(58, g.Tensors.Count(t => t.Type == GgmlType.Q8_0));
        var info = CliRunner.Run("info", "-m", outPath);
        Assert.Equal(0, info.ExitCode);
        if (fx.LlamaQuantize == null) return;
        // Dequantizing Q4_K/Q6_K and quantizing again gives llama-quantize --allow-requantize's bytes.
        string theirs = Path.Combine(fx.Dir, "demo-q8_0-llama.gguf");
        var (code, log) = fx.RunLlamaQuantize("--allow-requantize", TestPaths.DemoModel, theirs, "Q8_0", "2");
        Assert.True(code == 0, log);
        Assert.Null(QuantizeFixture.FirstDifference(outPath, theirs));
    }

    [Fact]
    public void CancellationLeavesNeitherTheOutputNorATempFile()
    {
        string dir = Directory.CreateTempSubdirectory("fitlm-quantize-cancel-").FullName;
        string outPath = Path.Combine(dir, "cancelled.gguf");
        using var cts = new CancellationTokenSource();
        int reported = 0;
        var progress = new CancelAfter(() => { if (++reported == 5) cts.Cancel(); });
        Assert.ThrowsAny<OperationCanceledException>(() =>
            FitLM.Conversion.GgufQuantizer.Quantize(TestPaths.DemoModel, outPath, FitLM.Conversion.QuantizationType.Parse("Q8_0"), null, progress, cts.Token));
        Assert.Equal(5, reported);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir));
        Directory.Delete(dir);
    }

    private sealed class CancelAfter(Action onReport) : IProgress<FitLM.Conversion.QuantizedTensor>
    {
        public void Report(FitLM.Conversion.QuantizedTensor value) => onReport();
    }

    [Fact]
    public void MissingImportanceMatrixFileIsOneLineError()
    {
        var r = CliRunner.Run("quantize", TestPaths.DemoModel, Path.Combine(fx.Dir, "x.gguf"), "Q4_K_M", "--imatrix", Path.Combine(fx.Dir, "nope.dat"));
        Assert.Equal(1, r.ExitCode);
        Assert.StartsWith("error: ", r.StdErr);
        Assert.Contains("no such importance matrix file", r.StdErr);
    }

    [Fact]
    public void ConvertTypeQuantizesAFolderInOnePass()
    {
        if (fx.Shared == null)
        {
            output.WriteLine("../shared is absent: no Hugging Face folder to convert");
            return;
        }
        string viaConvert = Path.Combine(fx.Dir, "tiny-convert-q4_k_m.gguf"), viaQuantize = Path.Combine(fx.Dir, "tiny-quantize-q4_k_m.gguf");
        var c = CliRunner.Run("convert", "-m", fx.TinyFolder, "-o", viaConvert, "--type", "q4_k_m");
        Assert.Equal(0, c.ExitCode);
        Assert.StartsWith($"wrote {viaConvert}: Q4_K_M", c.StdOut);
        var q = CliRunner.Run("quantize", fx.TinyF32, viaQuantize, "Q4_K_M");
        Assert.Equal(0, q.ExitCode);
        Assert.Equal(File.ReadAllBytes(viaQuantize), File.ReadAllBytes(viaConvert));
        using var g = GgufFile.Open(viaConvert);
        Assert.Equal(15, g.GetInt("general.file_type"));
        var bad = CliRunner.Run("convert", "-m", fx.TinyFolder, "-o", viaConvert, "--type", "q4_k_x");
        Assert.Equal(1, bad.ExitCode);
        Assert.StartsWith("error: unknown quantization type 'q4_k_x'", bad.StdErr);
    }
}
