using FitLM.Conversion;
using FitLM.Formats;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Tests.Cli;
using FitLM.Tests.Model;
using FitLM.Weights;
using Xunit;

namespace FitLM.Tests.Converters;

/// <summary>
/// `fitlm synth` mixtures of experts: llama.cpp's names, metadata keys ({arch}.expert_count, expert_used_count,
/// expert_feed_forward_length) and llama-quantize's types (experts as the file type, router and norms F32, output
/// Q6_K; with 8 experts attn_k/attn_v Q8_0); the tiny shape loads and generates, the same under an expert cache.
/// </summary>
public sealed class SynthMoeTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-synth-moe-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void TinyMoeHasLlamaCppLayout_LoadsAndGeneratesTheSameUnderAnExpertCache()
    {
        string path = Path.Combine(_dir, "tiny-moe.gguf");
        var r = CliRunner.Run("synth", "-o", path, "--shape", "tiny-moe", "--type", "q4_0", "--vocab", TestPaths.DemoModel, "--seed", "3");
        Assert.True(r.ExitCode == 0, r.StdErr);
        using (var g = GgufFile.Open(path))
        {
            Assert.Equal("qwen3moe", g.GetString("general.architecture"));
            Assert.Equal(8, g.GetInt("qwen3moe.expert_count"));
            Assert.Equal(2, g.GetInt("qwen3moe.expert_used_count"));
            Assert.Equal(128, g.GetInt("qwen3moe.expert_feed_forward_length"));
            Assert.Equal(new long[] { 256, 128, 8 }, g.GetTensor("blk.1.ffn_gate_exps.weight").Shape);
            Assert.Equal(new long[] { 128, 256, 8 }, g.GetTensor("blk.1.ffn_down_exps.weight").Shape);
            Assert.Equal(new long[] { 256, 8 }, g.GetTensor("blk.0.ffn_gate_inp.weight").Shape);
            Assert.Equal(new long[] { 64 }, g.GetTensor("blk.0.attn_q_norm.weight").Shape);
            Assert.Equal(GgmlType.Q4_0, g.GetTensor("blk.0.ffn_up_exps.weight").Type);
            Assert.Equal(GgmlType.F32, g.GetTensor("blk.0.ffn_gate_inp.weight").Type);
            Assert.Equal(GgmlType.F32, g.GetTensor("blk.0.attn_k_norm.weight").Type);
            Assert.Equal(GgmlType.Q6_K, g.GetTensor("output.weight").Type);
            // llama-quantize gives 8-expert models' attn_k and attn_v Q8_0 (llama_tensor_get_type's n_expert == 8).
            Assert.Equal(GgmlType.Q8_0, g.GetTensor("blk.0.attn_v.weight").Type);
            Assert.Equal(GgmlType.Q4_0, g.GetTensor("blk.0.attn_q.weight").Type);
            foreach (var t in g.Tensors) Assert.Equal(GgmlTypes.RowBytes(t.Type, t.Shape[0]) * t.Rows, t.ByteSize);
        }

        var resident = Greedy(path, new LoadOptions { ContextLength = 64 }, out var residentPlan);
        Assert.Null(residentPlan.Experts);
        // An expert cache of 3 of 8 experts a layer: the router's experts run whatever the cache holds.
        using var src = ModelSource.Open(path);
        long expert = ExpertPlanner.ExpertBytesByLayer(src).Max();
        var cached = Greedy(path, new LoadOptions { ContextLength = 64, ExpertCacheBytes = 3 * 2 * expert, ExpertPolicy = ExpertPolicy.Lru }, out var cachedPlan);
        Assert.Equal(3, cachedPlan.Experts!.SlotsPerLayer);
        Assert.Equal(resident, cached);
    }

    private static List<int> Greedy(string path, LoadOptions options, out MemoryPlan plan)
    {
        using var lm = LanguageModel.Load(path, options);
        plan = lm.Plan;
        var logits = new float[lm.Config.Vocab];
        int[] prompt = [1, 100, 2000, 31];
        for (int i = 0; i < prompt.Length; i++) lm.Transformer.Forward([prompt[i]], i, logits, 0);
        Assert.All(logits, v => Assert.True(float.IsFinite(v)));
        return GreedyContinuation.Ids(lm.Transformer, logits, prompt.Length, 12);
    }

    [Fact]
    public void OlmoeShapeIsOlmoe1B7B()
    {
        var s = SyntheticShape.Parse("olmoe-7b");
        Assert.Equal(("olmoe", 16, 2048, 16, 16, 128, 64, 8, 1024), (s.Architecture, s.Layers, s.Dim, s.Heads, s.KvHeads, s.HeadDimension, s.Experts, s.ExpertsUsed, s.ExpertWidth));
        var layout = SyntheticModel.Layout(s, "q4_0", 50304).ToDictionary(t => t.Name);
        Assert.Equal(new long[] { 2048 }, layout["blk.0.attn_q_norm.weight"].Shape); // whole-row Q/K norms
        Assert.Equal(new long[] { 2048 }, layout["blk.0.attn_k_norm.weight"].Shape);
        Assert.Equal(new long[] { 2048, 1024, 64 }, layout["blk.15.ffn_up_exps.weight"].Shape);
        Assert.Equal(new long[] { 1024, 2048, 64 }, layout["blk.15.ffn_down_exps.weight"].Shape);
        Assert.Equal(new long[] { 2048, 64 }, layout["blk.3.ffn_gate_inp.weight"].Shape);
        Assert.Equal(GgmlType.F32, layout["blk.3.ffn_gate_inp.weight"].Type);
        Assert.Equal(GgmlType.Q4_0, layout["blk.3.ffn_gate_exps.weight"].Type);
        Assert.Equal(GgmlType.Q4_0, layout["blk.3.attn_v.weight"].Type); // 64 experts: no Q8_0 bump
        Assert.Equal(GgmlType.Q6_K, layout["output.weight"].Type);
        Assert.Equal(GgmlType.F32, layout["blk.3.attn_norm.weight"].Type);
        Assert.DoesNotContain("blk.0.ffn_gate.weight", layout.Keys);
        // About 6.9 billion parameters, as OLMoE-1B-7B.
        double parameters = layout.Values.Sum(t => (double)t.Shape.Aggregate(1L, (a, b) => a * b));
        Assert.InRange(parameters, 6.8e9, 7.0e9);
    }

    [Fact]
    public void Qwen3MoeShapeIsQwen3_30B_A3B()
    {
        var s = SyntheticShape.Parse("qwen3-30b-a3b");
        Assert.Equal(("qwen3moe", 48, 2048, 32, 4, 128, 128, 8, 768), (s.Architecture, s.Layers, s.Dim, s.Heads, s.KvHeads, s.HeadDimension, s.Experts, s.ExpertsUsed, s.ExpertWidth));
        var layout = SyntheticModel.Layout(s, "q4_0", 151936).ToDictionary(t => t.Name);
        Assert.Equal(new long[] { 128 }, layout["blk.0.attn_q_norm.weight"].Shape); // per head
        Assert.Equal(new long[] { 2048, 4096 }, layout["blk.0.attn_q.weight"].Shape);
        Assert.Equal(new long[] { 2048, 512 }, layout["blk.0.attn_k.weight"].Shape);
        Assert.Equal(new long[] { 4096, 2048 }, layout["blk.0.attn_output.weight"].Shape);
        Assert.Equal(new long[] { 2048, 768, 128 }, layout["blk.47.ffn_gate_exps.weight"].Shape);
        Assert.Equal(new long[] { 768, 2048, 128 }, layout["blk.47.ffn_down_exps.weight"].Shape);
        Assert.Equal(GgmlType.Q4_0, layout["blk.47.ffn_down_exps.weight"].Type);
        Assert.Equal(GgmlType.F32, layout["blk.47.ffn_gate_inp.weight"].Type);
        double parameters = layout.Values.Sum(t => (double)t.Shape.Aggregate(1L, (a, b) => a * b));
        Assert.InRange(parameters, 30.3e9, 30.7e9); // Qwen3-30B-A3B: 30.5 billion
    }
}
