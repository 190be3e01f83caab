using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FitLM.Formats;
using FitLM.Tokenization;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Tokenization;

/// <summary>llama.cpp's tokenizer conformance suite (../shared/tokenizer-tests) and the pycoder reference.</summary>
public class TokenizerConformanceTests(ITestOutputHelper output)
{
    private const string Separator = "\n__ggml_vocab_test__\n";

    private string? SharedDir(string sub)
    {
        var shared = TestPaths.Shared;
        if (shared is null)
        {
            output.WriteLine("../shared is absent: skipping (this test needs the shared reference data)");
            return null;
        }
        var p = Path.Combine(shared, sub);
        if (!Directory.Exists(p))
        {
            output.WriteLine($"{p} is absent: skipping");
            return null;
        }
        return p;
    }

    private static (string[] Inputs, int[][] Expected) ReadSuite(string dir, string name)
    {
        string inp = File.ReadAllText(Path.Combine(dir, $"ggml-vocab-{name}.gguf.inp"), Encoding.UTF8);
        var parts = inp.Split(Separator);
        // the file ends with a separator: the last part is empty
        var inputs = parts[^1].Length == 0 ? parts[..^1] : parts;
        var lines = File.ReadAllText(Path.Combine(dir, $"ggml-vocab-{name}.gguf.out"), Encoding.UTF8).Split('\n');
        if (lines.Length > inputs.Length && lines[^1].Length == 0) lines = lines[..^1];
        var expected = lines.Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray()).ToArray();
        return (inputs, expected);
    }

    private static string Show(string s) => JsonSerializer.Serialize(s);

    public static TheoryData<string> Vocabs => new() { "llama-spm", "phi-3", "gpt-2", "deepseek-coder", "falcon", "starcoder" };

    [Theory]
    [MemberData(nameof(Vocabs))]
    public void MatchesLlamaCppTokenizerSuite(string name)
    {
        var dir = SharedDir("tokenizer-tests");
        if (dir is null) return;
        using var gguf = GgufFile.Open(Path.Combine(dir, $"ggml-vocab-{name}.gguf"));
        var tok = Tokenizer.FromGguf(gguf);
        var (inputs, expected) = ReadSuite(dir, name);
        Assert.Equal(expected.Length, inputs.Length);
        Assert.True(inputs.Length > 30, $"suite for {name} has only {inputs.Length} cases");

        var failures = new List<string>();
        for (int i = 0; i < inputs.Length; i++)
        {
            var ids = tok.Encode(inputs[i], addSpecial: false, parseSpecial: false);
            if (!ids.SequenceEqual(expected[i]))
                failures.Add($"#{i} {Show(inputs[i])}\n   expected [{string.Join(' ', expected[i])}]\n   actual   [{string.Join(' ', ids)}]");
        }
        output.WriteLine($"{name}: {inputs.Length - failures.Count}/{inputs.Length} cases match ({tok.Kind}, pre '{tok.PreTokenizer}')");
        Assert.True(failures.Count == 0, $"{name}: {failures.Count} of {inputs.Length} cases differ from llama.cpp:\n" + string.Join("\n", failures));
    }

    [Theory]
    [MemberData(nameof(Vocabs))]
    public void DecodeRoundTripsSuiteInputs(string name)
    {
        var dir = SharedDir("tokenizer-tests");
        if (dir is null) return;
        using var gguf = GgufFile.Open(Path.Combine(dir, $"ggml-vocab-{name}.gguf"));
        var tok = Tokenizer.FromGguf(gguf);
        var (inputs, _) = ReadSuite(dir, name);
        var failures = new List<string>();
        int checkedDecode = 0;
        foreach (var s in inputs)
        {
            var ids = tok.Encode(s, addSpecial: false);
            // The raw pieces always reproduce the text (SPM: plus the added leading space).
            var raw = Encoding.UTF8.GetString(ids.SelectMany(id => tok.TokenBytes(id)).ToArray());
            string expectedRaw = tok.Kind == TokenizerKind.Spm && tok.AddSpacePrefix && s.Length > 0 ? " " + s : s;
            if (raw != expectedRaw) failures.Add($"pieces of {Show(s)} give {Show(raw)}");
            // llama.cpp's detokenizer round-trips unless its clean_spaces pass rewrites " ," / " 's" etc.
            bool cleanupApplies = tok.CleanSpaces && (s.Contains(" ?") || s.Contains(" !") || s.Contains(" .") || s.Contains(" ,") || s.Contains(" '"));
            if (cleanupApplies) continue;
            checkedDecode++;
            var decoded = tok.Decode(ids);
            if (decoded != s) failures.Add($"Decode(Encode({Show(s)})) = {Show(decoded)}");
        }
        output.WriteLine($"{name}: {checkedDecode} decode round trips checked");
        Assert.True(failures.Count == 0, $"{name}:\n" + string.Join("\n", failures));
    }

    [Fact]
    public void CleanSpacesDetokenizationMatchesLlamaCpp()
    {
        var dir = SharedDir("tokenizer-tests");
        if (dir is null) return;
        using var gguf = GgufFile.Open(Path.Combine(dir, "ggml-vocab-gpt-2.gguf"));
        var tok = Tokenizer.FromGguf(gguf);
        Assert.True(tok.CleanSpaces);
        Assert.Equal("Hello, world! I've it's you 'll", tok.Decode(tok.Encode("Hello , world ! I 've it 's you 'll", false)));
    }

    [Fact]
    public void PycoderHuggingFaceTokenizerMatchesReferenceAndGguf()
    {
        var dir = SharedDir(Path.Combine("models", "pycoder-29m"));
        if (dir is null) return;
        var hf = Tokenizer.FromHuggingFace(dir);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "reference.json")));
        string prompt = doc.RootElement.GetProperty("prompt_text").GetString()!;
        int[] expected = doc.RootElement.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();

        Assert.Equal(TokenizerKind.BytePairGpt2, hf.Kind);
        Assert.Equal("gpt-2", hf.PreTokenizer);
        Assert.True(hf.PreTokenizerRecognized);
        Assert.Equal(8192, hf.VocabSize);
        Assert.Equal((0, 1, 2), (hf.BosId, hf.EosId, hf.PadId ?? -1));
        Assert.True(hf.AddBos);
        Assert.False(hf.AddEos);
        Assert.True(hf.IsEndOfGeneration(1));
        Assert.False(hf.IsEndOfGeneration(0));
        Assert.Equal(expected, hf.Encode(prompt));

        if (!File.Exists(TestPaths.DemoModel)) { output.WriteLine($"{TestPaths.DemoModel} absent: GGUF comparison skipped"); return; }
        using var gguf = GgufFile.Open(TestPaths.DemoModel);
        var gt = Tokenizer.FromGguf(gguf);
        Assert.Equal(expected, gt.Encode(prompt));
        Assert.Equal(prompt, gt.Decode(expected, skipSpecial: true));
        Assert.Equal("<|bos|>" + prompt, gt.Decode(expected));

        // What a GGUF writer would write from the HF folder is what the reference GGUF holds.
        Assert.Equal(gt.Tokens, hf.Tokens);
        Assert.Equal(gt.TokenTypes, hf.TokenTypes);
        Assert.Equal(gt.Merges, hf.Merges);
        Assert.Null(hf.Scores);
        Assert.Equal((gt.BosId, gt.EosId, gt.PadId, gt.AddBos, gt.AddEos), (hf.BosId, hf.EosId, hf.PadId, hf.AddBos, hf.AddEos));
    }

    [Fact]
    public void PycoderTokenizersAgreeOnHeldOutCodeAndAreFast()
    {
        var shared = TestPaths.Shared;
        var dir = SharedDir(Path.Combine("models", "pycoder-29m"));
        if (dir is null || shared is null) return;
        var dataPath = Path.Combine(shared, "data", "pycode-dev.txt");
        if (!File.Exists(dataPath) || !File.Exists(TestPaths.DemoModel)) { output.WriteLine("pycode-dev.txt or the demo GGUF is absent: skipping"); return; }
        string text = File.ReadAllText(dataPath, Encoding.UTF8);
        var hf = Tokenizer.FromHuggingFace(dir);
        using var gguf = GgufFile.Open(TestPaths.DemoModel);
        var gt = Tokenizer.FromGguf(gguf);

        string head = text[..Math.Min(text.Length, 200_000)];
        var a = hf.Encode(head);
        var b = gt.Encode(head);
        Assert.Equal(a, b);

        // Full megabyte, cold caches.
        var fresh = Tokenizer.FromGguf(gguf);
        var sw = Stopwatch.StartNew();
        var all = fresh.Encode(text);
        sw.Stop();
        output.WriteLine($"pycode-dev.txt: {text.Length:N0} chars -> {all.Length:N0} tokens in {sw.Elapsed.TotalMilliseconds:F0} ms (cold)");
        var sw2 = Stopwatch.StartNew();
        fresh.Encode(text);
        output.WriteLine($"warm: {sw2.Elapsed.TotalMilliseconds:F0} ms");
        Assert.Equal(text, Encoding.UTF8.GetString(all.Skip(1).SelectMany(id => fresh.TokenBytes(id)).ToArray()));
    }

    [Fact]
    public void LongWhitespaceRunsRoundTrip()
    {
        var dir = SharedDir("tokenizer-tests");
        if (dir is null) return;
        foreach (var name in new[] { "gpt-2", "deepseek-coder", "falcon", "llama-spm" })
        {
            using var gguf = GgufFile.Open(Path.Combine(dir, $"ggml-vocab-{name}.gguf"));
            var tok = Tokenizer.FromGguf(gguf);
            string text = "x" + new string(' ', 200_000) + "y\n" + new string('\n', 50_000) + new string('\t', 50_000) + "z";
            var sw = Stopwatch.StartNew();
            var ids = tok.Encode(text, false);
            output.WriteLine($"{name}: {ids.Length} tokens in {sw.ElapsedMilliseconds} ms");
            Assert.Equal(tok.Kind == TokenizerKind.Spm ? " " + text : text,
                Encoding.UTF8.GetString(ids.SelectMany(id => tok.TokenBytes(id)).ToArray()));
        }
    }
}
