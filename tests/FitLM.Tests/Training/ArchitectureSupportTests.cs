using FitLM.Tests.Cli;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Training;

/// <summary>
/// The families the training and compression paths do not implement are refused in one line that says what would
/// work, before anything is written; MeZO, which runs the inference graph, trains them through the matrices they have.
/// </summary>
public sealed class ArchitectureSupportTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-archsupport-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private string? Zoo(string name) =>
        TestPaths.Shared is { } s && Directory.Exists(Path.Combine(s, "models", "zoo", name)) ? Path.Combine(s, "models", "zoo", name) : null;

    private string Text()
    {
        string p = Path.Combine(_dir, "train.txt");
        File.WriteAllText(p, File.ReadAllText(Path.Combine(TestPaths.Shared!, "data", "pycode-dev.txt"))[..20_000]);
        return p;
    }

    private static void AssertOneLineError(CliRunner.Result r, string contains)
    {
        Assert.NotEqual(0, r.ExitCode);
        var lines = r.StdErr.Trim().Split('\n');
        Assert.StartsWith("error: ", lines[^1]);
        Assert.Contains(contains, lines[^1]);
        Assert.Single(lines, l => l.StartsWith("error: ", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("tiny-gemma2", "does not implement post-norms and scaled embeddings (gemma2) yet; --method mezo trains this model")]
    [InlineData("tiny-phi3", "does not implement fused Q/K/V and gate/up projections (phi3) yet")]
    [InlineData("tiny-qwen3moe", "does not implement a mixture of experts (qwen3moe) yet")]
    public void LoraBackpropagationRefusesWhatItsGraphLacks(string name, string message)
    {
        if (Zoo(name) is not { } folder) { output.WriteLine($"{name} is absent"); return; }
        string outDir = Path.Combine(_dir, "out");
        AssertOneLineError(CliRunner.Run("finetune", "-m", folder, "-f", Text(), "--steps", "1", "-c", "64", "-o", outDir), message);
        Assert.False(Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any(), "nothing is written");
    }

    [Theory]
    [InlineData("tiny-phi3", "q,k,v,o,gate,up,down", "phi3 has no q, k, v, gate, up matrix to adapt (Q/K/V and gate/up are fused); use --targets o,down")]
    [InlineData("tiny-qwen3moe", "q,k,v,o,gate,up,down", "qwen3moe has no gate, up, down matrix to adapt (its FFN is a mixture of experts); use --targets q,k,v,o")]
    public void MezoAdaptersNameTheMatricesAModelHas(string name, string targets, string message)
    {
        if (Zoo(name) is not { } folder) { output.WriteLine($"{name} is absent"); return; }
        AssertOneLineError(CliRunner.Run("finetune", "-m", folder, "-f", Text(), "--method", "mezo", "--targets", targets,
            "--steps", "1", "-c", "64", "-o", Path.Combine(_dir, "out")), message);
    }

    [Theory]
    [InlineData("tiny-phi3", "o,down")]
    [InlineData("tiny-qwen3moe", "q,k,v,o")]
    [InlineData("tiny-gemma2", "q,k,v,o,gate,up,down")]
    public void MezoTrainsEveryFamilyThroughTheMatricesItHas(string name, string targets)
    {
        if (Zoo(name) is not { } folder) { output.WriteLine($"{name} is absent"); return; }
        string outDir = Path.Combine(_dir, "out");
        var r = CliRunner.Run("finetune", "-m", folder, "-f", Text(), "--method", "mezo", "--targets", targets, "--steps", "2", "-c", "64", "-o", outDir);
        Assert.True(r.ExitCode == 0, r.StdErr);
        Assert.True(File.Exists(Path.Combine(outDir, "adapter.gguf")));
        // The adapter applies at inference on the same model.
        var ppl = CliRunner.Run("perplexity", "-m", folder, "--lora", Path.Combine(outDir, "adapter.gguf"), "-f", Text(), "-c", "128", "--chunks", "2");
        Assert.True(ppl.ExitCode == 0, ppl.StdErr);
        Assert.Contains("Final estimate: PPL = ", ppl.StdOut + ppl.StdErr);
    }

    [Theory]
    [InlineData("tiny-qwen3moe", "qwen3moe is a mixture of experts; prepare bundles dense FFN neurons")]
    [InlineData("tiny-phi3", "phi3 keeps gate and up in one matrix; prepare does not bundle its FFN")]
    public void PrepareRefusesFeedForwardsItCannotBundle(string name, string message)
    {
        if (Zoo(name) is not { } folder) { output.WriteLine($"{name} is absent"); return; }
        string gguf = Path.Combine(_dir, name + ".gguf");
        Assert.Equal(0, CliRunner.Run("convert", "-m", folder, "-o", gguf, "--type", "f16").ExitCode);
        AssertOneLineError(CliRunner.Run("prepare", "-m", gguf, "-o", Path.Combine(_dir, "p.gguf")), message);
        Assert.False(File.Exists(Path.Combine(_dir, "p.gguf")));
    }
}
