using FitLM.Generation;
using FitLM.KvCache;
using FitLM.Memory;
using FitLM.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Generation;

/// <summary>
/// Speculative decoding: the verification pass's logits equal plain decoding's bit for bit, so greedy (and seeded)
/// output is the same token for token, with prompt lookup and with a draft model, through every stop condition.
/// </summary>
public sealed class SpeculativeTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-spec-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static readonly Lazy<LanguageModel> Demo = new(() => LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 256, MaxBatch = 64 }));

    private static readonly string[] Prompts =
    [
        "def fibonacci(n):",
        "import os\nimport sys\n\ndef main(argv):\n    for arg in argv:\n        print(arg)\n\n# the same function, with the loop variable renamed to item:\ndef main(argv):\n",
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):",
    ];

    private static (int[] Ids, string Text, StopReason Stop) Plain(LanguageModel lm, int[] prompt, int n, SamplingOptions o, string[]? stop = null)
    {
        var gen = new Generator(lm);
        var tokens = gen.Generate(prompt, n, o, stop).ToList();
        return (tokens.Where(t => t.Id >= 0).Select(t => t.Id).ToArray(), string.Concat(tokens.Select(t => t.Text)), gen.LastStopReason);
    }

    private static (int[] Ids, string Text, StopReason Stop, SpeculativeStatistics Stats) Speculative(LanguageModel lm, IDrafter drafter, int[] prompt, int n,
        SamplingOptions o, string[]? stop = null, int draftMax = 8)
    {
        var gen = new SpeculativeGenerator(lm, drafter, draftMax);
        var tokens = gen.Generate(prompt, n, o, stop).ToList();
        return (tokens.Where(t => t.Id >= 0).Select(t => t.Id).ToArray(), string.Concat(tokens.Select(t => t.Text)), gen.LastStopReason, gen.Statistics);
    }

    [Fact]
    public void LookupGivesThePlainGreedyTokens()
    {
        var lm = Demo.Value;
        int accepted = 0;
        foreach (var text in Prompts)
        {
            var prompt = lm.Tokenizer.Encode(text, addSpecial: true);
            var plain = Plain(lm, prompt, 96, SamplingOptions.Greedy);
            var spec = Speculative(lm, new LookupDrafter(3), prompt, 96, SamplingOptions.Greedy, draftMax: 10);
            Assert.Equal(plain.Ids, spec.Ids);
            Assert.Equal(plain.Text, spec.Text);
            Assert.Equal(plain.Stop, spec.Stop);
            Assert.Equal(plain.Ids.Length - 1, spec.Stats.Produced);
            accepted += spec.Stats.Accepted;
            output.WriteLine($"{plain.Ids.Length} tokens: {spec.Stats}");
        }
        Assert.True(accepted > 0, "lookup never had a draft accepted");
    }

    [Fact]
    public void SeededSamplingGivesThePlainTokensToo()
    {
        var lm = Demo.Value;
        var prompt = lm.Tokenizer.Encode(Prompts[1], addSpecial: true);
        var o = new SamplingOptions { Temperature = 0.7f, Seed = 11 };
        var plain = Plain(lm, prompt, 64, o);
        var spec = Speculative(lm, new LookupDrafter(2), prompt, 64, o);
        Assert.Equal(plain.Ids, spec.Ids);
    }

    [Fact]
    public void DraftModelGivesThePlainGreedyTokens()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("skipped: ../shared is absent"); return; }
        var lm = Demo.Value;
        using var draft = new ModelDrafter(LanguageModel.Load(Path.Combine(shared, "models", "pycoder-29m-gguf", "pycoder-29m-q2_k.gguf"),
            new LoadOptions { ContextLength = 256, MaxBatch = 64 }), lm);
        foreach (var text in Prompts)
        {
            var prompt = lm.Tokenizer.Encode(text, addSpecial: true);
            var plain = Plain(lm, prompt, 80, SamplingOptions.Greedy);
            var spec = Speculative(lm, draft, prompt, 80, SamplingOptions.Greedy, draftMax: 6);
            Assert.Equal(plain.Ids, spec.Ids);
            Assert.Equal(plain.Text, spec.Text);
            output.WriteLine($"{plain.Ids.Length} tokens: {spec.Stats}");
            Assert.True(spec.Stats.Accepted > 0);
        }
    }

    [Fact]
    public void ADraftThatIsAlwaysWrongStillGivesThePlainTokens()
    {
        var lm = Demo.Value;
        var prompt = lm.Tokenizer.Encode(Prompts[0], addSpecial: true);
        var plain = Plain(lm, prompt, 40, SamplingOptions.Greedy);
        var spec = Speculative(lm, new WrongDrafter(lm.Config.Vocab), prompt, 40, SamplingOptions.Greedy);
        Assert.Equal(plain.Ids, spec.Ids);
        Assert.Equal(0, spec.Stats.Accepted);
        Assert.Equal(spec.Stats.Produced, spec.Stats.Steps); // one token per pass, as plain decoding
    }

    /// <summary>Proposes 8 tokens of which none is what the model picks: the next id after the plain pick.</summary>
    private sealed class WrongDrafter(int vocab) : IDrafter
    {
        public string Name => "wrong";
        public int Draft(ReadOnlySpan<int> history, Span<int> draft, CancellationToken ct)
        {
            for (int i = 0; i < draft.Length; i++) draft[i] = (history[^1] * 31 + i * 7 + 1) % vocab;
            return draft.Length;
        }
        public void Dispose() { }
    }

    [Fact]
    public void StopStringsTokenLimitAndContextEndStopWhereThePlainLoopStops()
    {
        var lm = Demo.Value;
        var prompt = lm.Tokenizer.Encode(Prompts[1], addSpecial: true);
        foreach (var (n, stop) in new (int, string[]?)[] { (1, null), (2, null), (17, null), (60, ["print"]), (60, [":\n"]), (60, ["arg", "item"]) })
        {
            var plain = Plain(lm, prompt, n, SamplingOptions.Greedy, stop);
            var spec = Speculative(lm, new LookupDrafter(2), prompt, n, SamplingOptions.Greedy, stop);
            Assert.Equal(plain.Ids, spec.Ids);
            Assert.Equal(plain.Text, spec.Text);
            Assert.Equal(plain.Stop, spec.Stop);
        }
        // The end of the context: a model of 64 positions runs out mid-draft.
        using var small = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = prompt.Length + 23, MaxBatch = 16 });
        var p2 = Plain(small, prompt, 1000, SamplingOptions.Greedy);
        var s2 = Speculative(small, new LookupDrafter(1), prompt, 1000, SamplingOptions.Greedy, draftMax: 12);
        Assert.Equal(StopReason.ContextFull, p2.Stop);
        Assert.Equal(p2.Ids, s2.Ids);
        Assert.Equal(p2.Stop, s2.Stop);
    }

    [Fact]
    public void EndOfGenerationStopsAsThePlainLoop()
    {
        var lm = Demo.Value;
        // Sampling at a high temperature reaches the end-of-generation token within a few hundred tokens for some seeds.
        var prompt = lm.Tokenizer.Encode("x = 1", addSpecial: true);
        bool sawEnd = false;
        for (int seed = 0; seed < 6; seed++)
        {
            var o = new SamplingOptions { Temperature = 1.5f, TopK = 0, TopP = 1, MinP = 0, Seed = seed };
            var plain = Plain(lm, prompt, 200, o);
            var spec = Speculative(lm, new LookupDrafter(1), prompt, 200, o);
            Assert.Equal(plain.Ids, spec.Ids);
            Assert.Equal(plain.Stop, spec.Stop);
            sawEnd |= plain.Stop == StopReason.EndOfGeneration;
        }
        output.WriteLine($"end of generation reached: {sawEnd}");
    }

    /// <summary>
    /// The verification pass (all rows in one batch, each as alone) gives every position the logits a one-token
    /// decode step gives it, bit for bit: on a context long enough for decode's attention to split into spans
    /// (16+ tiles) and on a short one, for q8_0 and q4_k_m weights and every KV type that can roll back.
    /// </summary>
    [Theory]
    [InlineData("q8_0", "f32", 600)]
    [InlineData("q4_k_m", "f32", 600)]
    [InlineData("q8_0", "f16", 600)]
    [InlineData("q4_k_m", "kivi4", 600)]
    [InlineData("q8_0", "kivi2:r32", 600)]
    [InlineData("q4_k_m", "xquant4", 600)]
    [InlineData("q8_0", "xquant-cl", 600)]
    [InlineData("q8_0", "f32", 100)]
    [InlineData("q4_k_m", "kivi2:r32", 100)]
    [InlineData("q8_0", "xquant4", 100)]
    public void VerifyPassLogitsEqualOneTokenDecodeLogits(string quant, string kv, int promptLength)
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("skipped: ../shared is absent"); return; }
        using var lm = LanguageModel.Load(Path.Combine(shared, "models", "pycoder-29m-gguf", $"pycoder-29m-{quant}.gguf"),
            new LoadOptions { ContextLength = 1024, MaxBatch = 128, Kv = KvCacheOptions.Parse(kv) });
        var tf = lm.Transformer;
        int vocab = lm.Config.Vocab;
        // A 600-token prompt (decode at 19+ tiles splits attention; 100: no split), then 12 positions decoded one at a time.
        var text = File.ReadAllText(Path.Combine(shared, "data", "pycode-dev.txt"))[..4000];
        var prompt = lm.Tokenizer.Encode(text, addSpecial: true)[..promptLength];
        const int k = 12;
        var next = new int[k];
        var plain = new float[k * vocab];
        var logits = new float[vocab];
        tf.Forward(prompt, 0, logits, prompt.Length - 1);
        int last = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits);
        for (int i = 0; i < k; i++)
        {
            next[i] = last;
            tf.Forward([last], prompt.Length + i, plain.AsSpan(i * vocab, vocab), 0);
            last = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(plain.AsSpan(i * vocab, vocab));
        }
        // The same positions as one verification batch, after the prompt again (quantized caches cannot roll back that far).
        tf.Forward(prompt, 0, logits, prompt.Length - 1);
        var batch = new float[k * vocab];
        tf.Forward(next, prompt.Length, batch, 0, batchInvariant: true);
        for (int i = 0; i < k; i++)
            Assert.True(plain.AsSpan(i * vocab, vocab).SequenceEqual(batch.AsSpan(i * vocab, vocab)), $"row {i} differs ({kv}, {quant})");
    }

    [Fact]
    public void LongContextGreedyTextIsTheSameWithLookupAndDraft()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("skipped: ../shared is absent"); return; }
        using var lm = LanguageModel.Load(Path.Combine(shared, "models", "pycoder-29m-gguf", "pycoder-29m-q8_0.gguf"), new LoadOptions { ContextLength = 1024, MaxBatch = 128 });
        var text = File.ReadAllText(Path.Combine(shared, "data", "pycode-dev.txt"))[..4000];
        var prompt = lm.Tokenizer.Encode(text, addSpecial: true)[..560];
        var plain = Plain(lm, prompt, 64, SamplingOptions.Greedy);
        var spec = Speculative(lm, new LookupDrafter(3), prompt, 64, SamplingOptions.Greedy, draftMax: 10);
        Assert.Equal(plain.Ids, spec.Ids);
        using var draft = new ModelDrafter(LanguageModel.Load(Path.Combine(shared, "models", "pycoder-29m-gguf", "pycoder-29m-q2_k.gguf"),
            new LoadOptions { ContextLength = 1024, MaxBatch = 128 }), lm);
        var withDraft = Speculative(lm, draft, prompt, 64, SamplingOptions.Greedy, draftMax: 8);
        Assert.Equal(plain.Ids, withDraft.Ids);
        output.WriteLine($"lookup: {spec.Stats}; draft: {withDraft.Stats}");
    }

    [Fact]
    public void ADraftWithAnotherTokenizerIsRefused()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("skipped: ../shared is absent"); return; }
        string src = Path.Combine(shared, "models", "zoo", "tiny-llama3"), copy = OtherTokenizerCopy(shared, _dir);
        var lm = Demo.Value;
        using var same = LanguageModel.Load(src, new LoadOptions { ContextLength = 256 });
        using (new ModelDrafter(same, lm, ownsModel: false)) { }
        using var other = LanguageModel.Load(copy, new LoadOptions { ContextLength = 256 });
        var e = Assert.Throws<FitLMException>(() => new ModelDrafter(other, lm, ownsModel: false));
        Assert.Contains("tokenizer", e.Message, StringComparison.Ordinal);
        // And the random draft, never right, changes nothing.
        var prompt = lm.Tokenizer.Encode(Prompts[2], addSpecial: true);
        using var random = new ModelDrafter(LanguageModel.Load(src, new LoadOptions { ContextLength = 256 }), lm);
        var plain = Plain(lm, prompt, 30, SamplingOptions.Greedy);
        var spec = Speculative(lm, random, prompt, 30, SamplingOptions.Greedy, draftMax: 4);
        Assert.Equal(plain.Ids, spec.Ids);
    }

    [Fact]
    public void LookupDraftsWhatFollowedTheLatestEarlierOccurrence()
    {
        var d = new LookupDrafter(2);
        var draft = new int[4];
        // "1 2" last occurred at 3..4, followed by 9 8; earlier at 0..1 followed by 3.
        Assert.Equal(4, d.Draft([1, 2, 3, 1, 2, 9, 8, 1, 2], draft, default));
        Assert.Equal(new[] { 9, 8, 1, 2 }, draft);
        // A loop of period 2 is drafted past the history's end.
        Assert.Equal(4, d.Draft([5, 6, 5, 6], draft, default));
        Assert.Equal(new[] { 5, 6, 5, 6 }, draft);
        // Nothing matched, not even the shortest n-gram allowed (2): no draft.
        Assert.Equal(0, d.Draft([1, 2, 3, 4], draft, default));
        Assert.Throws<FitLMException>(() => new LookupDrafter(0));
    }

    [Fact]
    public void H2OEvictionIsRefused()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 128, Kv = new KvCacheOptions { Evict = KvEviction.H2O, Keep = 64 } });
        var e = Assert.Throws<FitLMException>(() => new SpeculativeGenerator(lm, new LookupDrafter(2), 8));
        Assert.Contains("h2o", e.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// A copy of zoo/tiny-llama3 (which shares pycoder's tokenizer; its random weights make a draft that is always wrong)
    /// in <paramref name="dir"/>/other-vocab with one token renamed, so its tokenizer is another one.
    /// </summary>
    internal static string OtherTokenizerCopy(string shared, string dir)
    {
        string src = Path.Combine(shared, "models", "zoo", "tiny-llama3"), copy = Path.Combine(dir, "other-vocab");
        Directory.CreateDirectory(copy);
        foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(copy, Path.GetFileName(f)));
        string tok = Path.Combine(copy, "tokenizer.json");
        File.WriteAllText(tok, File.ReadAllText(tok).Replace("<|pad|>", "<|padding|>", StringComparison.Ordinal));
        return copy;
    }
}
