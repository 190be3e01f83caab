using System.Text.Json;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Weights;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Weights;

/// <summary>
/// The expert cache on real mixtures of experts (../shared): under every policy, with caches far smaller than the
/// experts, the logits are bit-identical to the resident run's (prompt batch and every decode step) and so are the
/// greedy ids; pycoder-moe's also equal transformers' (reference.json). Routing is exact: a cache only moves reads.
/// </summary>
public sealed class ExpertCacheTests(ITestOutputHelper output)
{
    private static readonly ExpertPolicy[] Policies = [ExpertPolicy.Lru, ExpertPolicy.Frequency, ExpertPolicy.Predict, ExpertPolicy.PredictLru, ExpertPolicy.None];

    private sealed record Trace(float[] PromptLogits, List<float[]> StepLogits, List<int> Ids);

    /// <summary>The prompt as one batch, then <paramref name="steps"/> greedy tokens one at a time, every logit kept.</summary>
    private static Trace Run(LanguageModel lm, int[] prompt, int steps)
    {
        int v = lm.Config.Vocab, n = prompt.Length;
        var logits = new float[n * v];
        lm.Transformer.Forward(prompt, 0, logits, 0);
        var last = logits.AsSpan((n - 1) * v, v).ToArray();
        var stepLogits = new List<float[]>();
        var ids = new List<int>();
        for (int i = 0; i < steps; i++)
        {
            int next = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(last);
            ids.Add(next);
            lm.Transformer.Forward([next], n + i, last, 0);
            stepLogits.Add((float[])last.Clone());
        }
        return new Trace(logits, stepLogits, ids);
    }

    /// <summary>The least an expert cache may hold: the k experts a token runs, in every layer.</summary>
    private static long Smallest(string folder)
    {
        using var src = ModelSource.Open(folder);
        return (long)src.Config.ExpertsUsed * src.Config.Layers * ExpertCachedWeights.ExpertBytes(src);
    }

    private static int[] PromptIds(string folder) =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "reference.json"))).RootElement
            .GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();

    /// <summary>Every policy at <paramref name="cacheBytes"/> against the resident run; returns the resident trace.</summary>
    private Trace AssertEveryPolicyMatchesResident(string folder, long cacheBytes, int steps, int[]? promptIds = null)
    {
        var prompt = promptIds ?? PromptIds(folder);
        Trace resident;
        using (var lm = LanguageModel.Load(folder, 256))
        {
            Assert.IsNotType<ExpertCachedWeights>(lm.Weights);
            resident = Run(lm, prompt, steps);
        }
        foreach (var policy in Policies)
        {
            using var lm = LanguageModel.Load(folder, new LoadOptions { ContextLength = 256, ExpertCacheBytes = cacheBytes, ExpertPolicy = policy });
            var cache = Assert.IsType<ExpertCachedWeights>(lm.Weights);
            var trace = Run(lm, prompt, steps);
            var st = cache.Statistics;
            output.WriteLine($"{Path.GetFileName(folder)} {policy}: {cache.Report(lm.Config).First()}");
            Assert.True(resident.PromptLogits.AsSpan().SequenceEqual(trace.PromptLogits), $"{policy}: prompt logits differ from the resident run's");
            for (int i = 0; i < steps; i++)
                Assert.True(resident.StepLogits[i].AsSpan().SequenceEqual(trace.StepLogits[i]), $"{policy}: step {i}'s logits differ from the resident run's");
            Assert.Equal(resident.Ids, trace.Ids);
            Assert.Equal(st.Uses, st.Hits + st.LateReadsAhead + st.Misses);
            Assert.Equal(prompt.Length + steps, st.Tokens);
            if (policy == ExpertPolicy.None) Assert.Equal(0, st.Hits);
            if (policy is ExpertPolicy.Predict or ExpertPolicy.PredictLru) Assert.True(st.ReadsAhead > 0, $"{policy}: nothing read ahead");
            else Assert.Equal(st.Misses * ExpertCachedWeights.ExpertBytes(lm.Source), st.BytesRead);
        }
        return resident;
    }

    [Fact]
    public void PycoderMoe_every_policy_is_bit_identical_to_resident_and_to_transformers_greedy()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent; nothing to compare"); return; }
        string folder = Path.Combine(shared, "models", "pycoder-moe");
        var reference = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "reference.json"))).RootElement
            .GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToList();
        using (var src = ModelSource.Open(folder))
        {
            long expert = ExpertCachedWeights.ExpertBytes(src);
            Assert.Equal(3 * 96 * 256 * 2, expert); // BF16 gate, up, down of 96 × 256
            Assert.Equal(8, ExpertCachedWeights.SlotsFor(8 * 4 * expert, src));
            Assert.Equal(4, ExpertCachedWeights.SlotsFor(1, src)); // never below the k a token runs
        }
        // 25% of the experts (8 of 32 a layer), and the least a cache may hold (4: the prompt's batch runs in groups).
        var resident = AssertEveryPolicyMatchesResident(folder, 4608 << 10, reference.Count);
        Assert.Equal(reference, resident.Ids);
        AssertEveryPolicyMatchesResident(folder, Smallest(folder), 16);
    }

    /// <summary>
    /// A GGUF file is read with direct I/O: page-aligned reads of the pages around each expert's rows into a staging
    /// buffer (Q8_0 rows of 256 are 272 bytes, so experts start mid-page). Same logits as resident, every policy.
    /// </summary>
    [Fact]
    public void PycoderMoe_gguf_read_with_direct_io_is_bit_identical_to_resident()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent; nothing to compare"); return; }
        string folder = Path.Combine(shared, "models", "pycoder-moe");
        var dir = Directory.CreateTempSubdirectory("fitlm-experts-direct-");
        try
        {
            string gguf = Path.Combine(dir.FullName, "pycoder-moe.q8_0.gguf");
            FitLM.Conversion.HfToGgufConverter.Convert(folder, gguf, GgmlType.Q8_0);
            bool storageTakesDirect;
            using (var probe = FitLM.Storage.DirectFile.Open(gguf, direct: true)) storageTakesDirect = probe.IsDirect;
            using (var lm = LanguageModel.Load(gguf, new LoadOptions { ContextLength = 256, ExpertCacheBytes = Smallest(gguf) }))
                Assert.Equal(storageTakesDirect, Assert.IsType<ExpertCachedWeights>(lm.Weights).ReadsDirect);
            output.WriteLine(storageTakesDirect ? "direct I/O" : $"{dir.FullName} does not take O_DIRECT: buffered reads");
            AssertEveryPolicyMatchesResident(gguf, Smallest(gguf), 16, PromptIds(folder));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Theory]
    [InlineData("tiny-qwen3moe")]
    [InlineData("tiny-mixtral")]
    [InlineData("tiny-qwen2moe")]
    [InlineData("tiny-olmoe")]
    public void Zoo_mixtures_are_bit_identical_to_resident_under_every_policy(string name)
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent; nothing to compare"); return; }
        string folder = Path.Combine(shared, "models", "zoo", name);
        if (!Directory.Exists(folder)) { output.WriteLine($"{folder} is absent"); return; }
        AssertEveryPolicyMatchesResident(folder, Smallest(folder), 24);
    }

    /// <summary>Records what the model asks of the provider under the cache.</summary>
    private sealed class RecordingWeights(IWeightProvider inner) : IWeightProvider
    {
        public List<string> Matrices { get; } = new();
        public IMatrix Matrix(string name)
        {
            Matrices.Add(name);
            return inner.Matrix(name);
        }
        public float[] Vector(string name) => inner.Vector(name);
        public bool Has(string name) => inner.Has(name);
        public long ResidentBytes => inner.ResidentBytes;
        public void Dispose() => inner.Dispose();
    }

    [Fact]
    public void The_stacked_expert_tensors_are_never_loaded_whole()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent; nothing to compare"); return; }
        string folder = Path.Combine(shared, "models", "pycoder-moe");
        using var source = ModelSource.Open(folder);
        var recording = new RecordingWeights(new ResidentWeights(source));
        using var weights = new ExpertCachedWeights(recording, source, 8, ExpertPolicy.PredictLru);
        var tf = new Transformer(source.Config, weights, 64, 64);
        var prompt = PromptIds(folder);
        tf.Forward(prompt, 0, new float[source.Config.Vocab], prompt.Length - 1);
        Assert.NotEmpty(recording.Matrices);
        Assert.DoesNotContain(recording.Matrices, n => n.Contains("_exps", StringComparison.Ordinal));
        Assert.Throws<InvalidOperationException>(() => weights.Matrix("blk.0.ffn_up_exps.weight"));
        var stacks = source.Tensors.Where(t => t.Name.Contains("_exps", StringComparison.Ordinal)).ToList();
        long others = source.Tensors.Sum(t => t.ByteSize) - stacks.Sum(t => t.ByteSize);
        // Norm weights are held as float32 (BF16 on storage), a few KiB more than stored; one stack would be 1.5 MiB.
        Assert.True(recording.ResidentBytes < others + stacks.Min(t => t.ByteSize) / 8,
            $"the inner provider holds {recording.ResidentBytes} bytes, against {others} outside the experts");
        // Slots: 14 in layer 0 and 6 in the others (prediction serves them), the bytes of 8 a layer.
        Assert.Equal(14, weights.SlotsOf(0, source.Config));
        Assert.Equal(6, weights.SlotsOf(3, source.Config));
        Assert.Equal(32 * ExpertCachedWeights.ExpertBytes(source), weights.CacheBytes);
        Assert.Equal(recording.ResidentBytes + weights.CacheBytes, weights.ResidentBytes);
        // Where the first layer would take more than every expert, the others give up only what it took.
        using var large = new ExpertCachedWeights(new ResidentWeights(source), source, 30, ExpertPolicy.Predict);
        Assert.Equal(32, large.SlotsOf(0, source.Config));
        Assert.Equal(29, large.SlotsOf(1, source.Config));
        using var lru = new ExpertCachedWeights(new ResidentWeights(source), source, 8, ExpertPolicy.Lru);
        Assert.Equal(8, lru.SlotsOf(0, source.Config));
    }

    [Fact]
    public void An_expert_cache_on_a_dense_model_is_refused_in_one_line()
    {
        var e = Assert.Throws<FitLMException>(() => LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 64, ExpertCacheBytes = 1 << 20 }));
        Assert.Contains("mixture of experts", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }
}
