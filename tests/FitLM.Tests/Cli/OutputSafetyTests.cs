using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Cli;

/// <summary>
/// Every command that writes a file refuses an output that is (or would replace) one of its inputs, before it
/// reads anything: `prepare -m x.gguf -o x.gguf` used to truncate the model it was about to read.
/// </summary>
public sealed class OutputSafetyTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-outputs-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private string Input(string name, string text = "input that must survive")
    {
        string path = Path.Combine(_dir, name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>Runs the command; it must fail with the one-line refusal naming the input, and leave every file as it was.</summary>
    private void AssertRefused(string input, params string[] args)
    {
        var before = Directory.EnumerateFiles(_dir, "*", SearchOption.AllDirectories).ToDictionary(f => f, File.ReadAllText);
        var r = CliRunner.Run(args);
        output.WriteLine($"fitlm {string.Join(' ', args.Select(Path.GetFileName))} -> {r.ExitCode}: {r.StdErr.Trim()}");
        Assert.Equal(1, r.ExitCode);
        Assert.Matches($"^error: .*: the output would replace the input {System.Text.RegularExpressions.Regex.Escape(input)}; choose another -o\n$", r.StdErr);
        var after = Directory.EnumerateFiles(_dir, "*", SearchOption.AllDirectories).ToDictionary(f => f, File.ReadAllText);
        Assert.Equal(before, after);
    }

    [Fact]
    public void ConvertRefusesToWriteOverTheFoldersOwnShard()
    {
        string shard = Input("hf/model.safetensors");
        Input("hf/config.json", "{}");
        string folder = Path.GetDirectoryName(shard)!;
        AssertRefused(folder, "convert", "-m", folder, "-o", shard);
        AssertRefused(folder, "convert", "-m", folder, "-o", Path.Combine(folder, "config.json"));
    }

    [Fact]
    public void PrepareRefusesItsOwnModelUnderAnyName()
    {
        string model = Input("x.gguf");
        AssertRefused(model, "prepare", "-m", model, "-o", model);
        string link = Path.Combine(_dir, "link.gguf");
        File.CreateSymbolicLink(link, model);
        AssertRefused(model, "prepare", "-m", model, "-o", link);
        AssertRefused(model, "prepare", "-m", model, "-o", Path.Combine(_dir, ".", "x.gguf"));
    }

    [Fact]
    public void SynthRefusesItsVocabulary()
    {
        string vocab = Input("vocab.gguf");
        AssertRefused(vocab, "synth", "--vocab", vocab, "-o", vocab);
    }

    [Fact]
    public void CalibrateRefusesTheModelAndTheText()
    {
        string model = Input("m.gguf");
        string text = Input("calib.txt");
        AssertRefused(model, "calibrate", "-m", model, "-f", text, "-o", model);
        AssertRefused(text, "calibrate", "-m", model, "-f", text, "-o", text);
    }

    [Fact]
    public void CompressRefusesTheModelAndTheCalibrationText()
    {
        string model = Input("m.gguf");
        string text = Input("calib.txt");
        AssertRefused(model, "compress", "-m", model, "--method", "bitstack", "--calib", text, "-o", model);
        AssertRefused(text, "compress", "-m", model, "--method", "bitstack", "--calib", text, "-o", text);
    }

    [Fact]
    public void LadderRefusesToWriteItsTableOrPlotOverAnInput()
    {
        string model = Input("stack.gguf");
        string text = Input("eval.txt");
        string other = Input("other.gguf");
        AssertRefused(text, "ladder", "-m", model, "-f", text, "--table", text);
        AssertRefused(other, "ladder", "-m", model, "-f", text, "--compare", other, "--plot", other);
    }
}
