using System.Text;
using System.Text.Json;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Cli;

/// <summary>
/// `fitlm tokenize` and `detokenize` load only the vocabulary: llama.cpp's vocabulary-only ggml-vocab-*.gguf
/// files (no tensors; some with architecture 'gpt2') used to fail with "tensor 'token_embd.weight' is missing".
/// </summary>
public class VocabularyCommandTests(ITestOutputHelper output)
{
    private const string Separator = "\n__ggml_vocab_test__\n";

    public static TheoryData<string> Vocabs => new() { "llama-spm", "phi-3", "gpt-2", "deepseek-coder", "falcon", "starcoder" };

    private string? VocabFile(string name)
    {
        if (TestPaths.Shared is not { } shared)
        {
            output.WriteLine("../shared is absent: skipping (this test needs llama.cpp's vocabulary files)");
            return null;
        }
        return Path.Combine(shared, "tokenizer-tests", $"ggml-vocab-{name}.gguf");
    }

    [Theory]
    [MemberData(nameof(Vocabs))]
    public void TokenizeAVocabularyOnlyFileMatchesLlamaCppSuite(string name)
    {
        if (VocabFile(name) is not { } vocab) return;
        var inputs = File.ReadAllText(vocab + ".inp", Encoding.UTF8).Split(Separator);
        if (inputs[^1].Length == 0) inputs = inputs[..^1];
        var expected = File.ReadAllText(vocab + ".out", Encoding.UTF8).Split('\n')[..inputs.Length]
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray()).ToArray();

        var r = CliRunner.RunWithInput(JsonSerializer.Serialize(inputs), "tokenize", "-m", vocab, "--no-bos", "--json");
        Assert.True(r.ExitCode == 0, r.StdErr);
        var actual = JsonSerializer.Deserialize<int[][]>(r.StdOut)!;
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(expected[i].SequenceEqual(actual[i]), $"{name} #{i} {JsonSerializer.Serialize(inputs[i])}: expected [{string.Join(' ', expected[i])}], got [{string.Join(' ', actual[i])}]");
    }

    [Theory]
    [MemberData(nameof(Vocabs))]
    public void DetokenizeAVocabularyOnlyFileRoundTrips(string name)
    {
        if (VocabFile(name) is not { } vocab) return;
        var ids = CliRunner.Run("tokenize", "-m", vocab, "--no-bos", "Hello world, def f(x):");
        Assert.True(ids.ExitCode == 0, ids.StdErr);
        var args = ids.StdOut.Trim().Split(' ');
        var text = CliRunner.Run(["detokenize", "-m", vocab, .. args]);
        Assert.True(text.ExitCode == 0, text.StdErr);
        Assert.Equal("Hello world, def f(x):", text.StdOut.TrimEnd('\n').TrimStart(' '));
    }

    [Fact]
    public void ShowPiecesPrintsIdsWithTheirTextAsLlamaTokenize()
    {
        var r = CliRunner.Run("tokenize", "-m", TestPaths.DemoModel, "--show-pieces", "def f(x):");
        Assert.True(r.ExitCode == 0, r.StdErr);
        var lines = r.StdOut.TrimEnd('\n').Split('\n');
        var ids = CliRunner.Run("tokenize", "-m", TestPaths.DemoModel, "def f(x):").StdOut.Trim().Split(' ');
        Assert.Equal(ids.Length, lines.Length);
        // llama-tokenize: the id right-aligned in six columns, " -> ", the piece in single quotes.
        Assert.Matches(@"^ {0,5}\d+ -> '.*'$", lines[0]);
        Assert.Equal($"{ids[0],6}", lines[0][..6]);
        string joined = string.Concat(lines.Skip(1).Select(l => l[(l.IndexOf("-> '") + 4)..^1]));
        Assert.Equal("def f(x):", joined.TrimStart());
    }

    [Fact]
    public void DetokenizeReadsJsonAndRefusesIdsOutsideTheVocabulary()
    {
        var ids = CliRunner.Run("tokenize", "-m", TestPaths.DemoModel, "--no-bos", "def f(x):").StdOut.Trim().Split(' ').Select(int.Parse).ToArray();
        var r = CliRunner.RunWithInput(JsonSerializer.Serialize(new[] { ids, ids[..1] }), "detokenize", "-m", TestPaths.DemoModel, "--json");
        Assert.True(r.ExitCode == 0, r.StdErr);
        var texts = JsonSerializer.Deserialize<string[]>(r.StdOut)!;
        Assert.Equal("def f(x):", texts[0]);

        var bad = CliRunner.Run("detokenize", "-m", TestPaths.DemoModel, "1", "99999999");
        Assert.Equal(1, bad.ExitCode);
        Assert.StartsWith("error: token id 99999999 is outside the vocabulary", bad.StdErr);
        var word = CliRunner.Run("detokenize", "-m", TestPaths.DemoModel, "abc");
        Assert.StartsWith("error: 'abc' is not a token id", word.StdErr);
    }

    [Fact]
    public void TokenizeAHuggingFaceFolderReadsOnlyTokenizerJson()
    {
        // A folder with tokenizer.json alone (no config.json, no weights) is enough to tokenize.
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent: skipping"); return; }
        string? source = Directory.EnumerateFiles(Path.Combine(shared, "models"), "tokenizer.json", SearchOption.AllDirectories).FirstOrDefault();
        if (source == null) { output.WriteLine("no tokenizer.json under ../shared/models: skipping"); return; }
        string dir = Directory.CreateTempSubdirectory("fitlm-vocab-").FullName;
        try
        {
            File.Copy(source, Path.Combine(dir, "tokenizer.json"));
            string config = Path.Combine(Path.GetDirectoryName(source)!, "tokenizer_config.json");
            if (File.Exists(config)) File.Copy(config, Path.Combine(dir, "tokenizer_config.json"));
            var r = CliRunner.Run("tokenize", "-m", dir, "--no-bos", "Hello world");
            Assert.True(r.ExitCode == 0, r.StdErr);
            Assert.NotEmpty(r.StdOut.Trim());
        }
        finally { Directory.Delete(dir, true); }
    }
}
