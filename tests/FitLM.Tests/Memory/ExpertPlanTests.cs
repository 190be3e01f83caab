using FitLM.Memory;
using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;
using FitLM.Tokenization;
using FitLM.Weights;
using Xunit;

namespace FitLM.Tests.Memory;

/// <summary>A mixture of experts' shapes without a file (Qwen3-MoE's tensors): what the planner needs to decide.</summary>
internal sealed class MoeShapeSource(ModelConfig config, GgmlType type) : IModelSource
{
    public string Path => "moe-shapes-only";
    public ModelConfig Config => config;
    public Tokenizer Tokenizer => throw new NotSupportedException();
    public IReadOnlyList<TensorDesc> Tensors { get; } = Build(config, type);
    public TensorDesc? Find(string name) => Tensors.FirstOrDefault(t => t.Name == name);
    public void Read(TensorDesc tensor, long offset, Span<byte> dst) => throw new NotSupportedException();
    public TensorLocation Locate(TensorDesc tensor) => new(Path, 0);
    public void Dispose() { }

    /// <summary>pycoder-moe (../shared/models/pycoder-moe): 4 layers, hidden 256, 32 experts of 96, top-4, tied head.</summary>
    public static ModelConfig PycoderMoe => new()
    {
        Architecture = "qwen3moe", Dim = 256, Layers = 4, Heads = 4, KvHeads = 2, HeadDim = 64, FfnDim = 6144, Vocab = 8192,
        RopeDims = 64, QkNorm = true, ExpertCount = 32, ExpertsUsed = 4, ExpertFfnDim = 96, ExpertWeightsNorm = true,
    };

    private static List<TensorDesc> Build(ModelConfig c, GgmlType type)
    {
        var list = new List<TensorDesc>();
        void M(string name, params long[] shape) => list.Add(new(name, shape, type, GgmlTypes.RowBytes(type, shape[0]) * shape.Skip(1).Aggregate(1L, (a, b) => a * b)));
        void F(string name, params long[] shape) => list.Add(new(name, shape, GgmlType.F32, 4 * shape.Aggregate(1L, (a, b) => a * b)));
        M("token_embd.weight", c.Dim, c.Vocab);
        F("output_norm.weight", c.Dim);
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"blk.{l}.";
            F(p + "attn_norm.weight", c.Dim);
            M(p + "attn_q.weight", c.Dim, c.QDim);
            M(p + "attn_k.weight", c.Dim, c.KvDim);
            M(p + "attn_v.weight", c.Dim, c.KvDim);
            M(p + "attn_output.weight", c.QDim, c.Dim);
            F(p + "attn_q_norm.weight", c.HeadDim);
            F(p + "attn_k_norm.weight", c.HeadDim);
            F(p + "ffn_norm.weight", c.Dim);
            F(p + "ffn_gate_inp.weight", c.Dim, c.ExpertCount);
            M(p + "ffn_gate_exps.weight", c.Dim, c.ExpertFfnDim, c.ExpertCount);
            M(p + "ffn_up_exps.weight", c.Dim, c.ExpertFfnDim, c.ExpertCount);
            M(p + "ffn_down_exps.weight", c.ExpertFfnDim, c.Dim, c.ExpertCount);
        }
        return list;
    }
}

/// <summary>
/// The planner's branch for mixtures of experts (ExpertPlanner): all resident when everything fits, else every
/// weight but the routed experts resident and an expert cache of as many experts a layer as the budget leaves
/// room for, never fewer than a token runs.
/// </summary>
public sealed class ExpertPlanTests
{
    private const int Context = 256;
    private static readonly Planner.Options Base = new() { Context = Context, RuntimeBytes = 50L << 20 };

    private static (long Fixed, long AllWeights, long Stacks, long ExpertBytes) Sizes(IModelSource src)
    {
        var whole = Planner.Plan(src, Base with { BudgetBytes = long.MaxValue / 4 });
        long all = src.Tensors.Sum(t => t.ByteSize);
        long stacks = src.Tensors.Where(t => t.Name.Contains("_exps.")).Sum(t => t.ByteSize);
        var c = src.Config;
        long expert = stacks / c.Layers / c.ExpertCount;
        return (whole.TotalBytes - all, all, stacks, expert);
    }

    [Fact]
    public void EverythingFits_ExpertsStayResident()
    {
        using var src = new MoeShapeSource(MoeShapeSource.PycoderMoe, GgmlType.F16);
        var (fix, all, _, _) = Sizes(src);
        var plan = Planner.Plan(src, Base with { BudgetBytes = fix + all });
        Assert.Null(plan.Experts);
        Assert.All(plan.Tensors, t => Assert.Equal(Placement.Resident, t.Placement));
    }

    [Fact]
    public void AQuarterOfTheExperts_HoldsEightOfThirtyTwoPerLayer()
    {
        using var src = new MoeShapeSource(MoeShapeSource.PycoderMoe, GgmlType.F16);
        var c = src.Config;
        var (fix, all, stacks, expert) = Sizes(src);
        Assert.Equal(3L * 256 * 96 * 2, expert); // gate, up and down of 256 × 96 in F16
        long budget = fix + (all - stacks) + stacks / 4;
        var plan = Planner.Plan(src, Base with { BudgetBytes = budget });
        var e = Assert.IsType<ExpertPlan>(plan.Experts);
        Assert.Equal(8, e.SlotsPerLayer);
        Assert.Equal(expert, e.ExpertBytes);
        Assert.Equal(8L * c.Layers * expert, e.CacheBytes);
        Assert.Equal(ExpertPolicy.Predict, e.Policy);
        Assert.Equal(0.25, e.PredictedHitRate, 9);
        Assert.Contains("uniform-routing estimate", e.HitRateNote);
        Assert.Equal((long)(0.75 * c.ExpertsUsed * c.Layers * expert), e.ReadBytesPerToken);
        Assert.Equal(e.ReadBytesPerToken, plan.StreamedBytesPerToken);
        Assert.True(plan.TotalBytes <= budget);
        foreach (var t in plan.Tensors)
            Assert.Equal(t.Tensor.Name.Contains("_exps.") ? Placement.Experts : Placement.Resident, t.Placement);
        Assert.False(plan.Streams);

        // One byte less than a whole row of slots (one expert in every layer) gives one slot fewer.
        var less = Planner.Plan(src, Base with { BudgetBytes = budget - 1 });
        Assert.Equal(7, less.Experts!.SlotsPerLayer);
    }

    [Fact]
    public void BelowTheSmallestPlan_IsOneLineNamingTheMinimum()
    {
        using var src = new MoeShapeSource(MoeShapeSource.PycoderMoe, GgmlType.F16);
        var c = src.Config;
        var (fix, all, stacks, expert) = Sizes(src);
        // The smallest expert cache holds the 4 experts a token runs in each of the 4 layers.
        long minimum = fix + (all - stacks) + (long)c.ExpertsUsed * c.Layers * expert;
        var atMinimum = Planner.Plan(src, Base with { BudgetBytes = minimum });
        Assert.Equal(c.ExpertsUsed, atMinimum.Experts!.SlotsPerLayer);
        var e = Assert.Throws<BudgetTooSmallException>(() => Planner.Plan(src, Base with { BudgetBytes = minimum - 1 }));
        // Streaming whole layers (two buffers of attention and all 32 experts) needs more here, so the expert cache's minimum is named.
        Assert.Equal(minimum, e.MinimumBytes);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains($"give --memory {(long)Math.Ceiling(minimum / (double)(1 << 20))}MiB or more", e.Message);
        Assert.Contains("an expert cache of 4 experts a layer", e.Message);
    }

    [Fact]
    public void AnExplicitCacheSizeIsUsedEvenWhereEverythingFits_AndCheckedAgainstTheBudget()
    {
        using var src = new MoeShapeSource(MoeShapeSource.PycoderMoe, GgmlType.F16);
        var c = src.Config;
        var (fix, all, stacks, expert) = Sizes(src);
        var plan = Planner.Plan(src, Base with { BudgetBytes = fix + all, ExpertCacheBytes = 10L * c.Layers * expert + 5, ExpertPolicy = ExpertPolicy.Lru });
        Assert.Equal(10, plan.Experts!.SlotsPerLayer);
        Assert.Equal(ExpertPolicy.Lru, plan.Experts.Policy);

        var few = Assert.Throws<FitLMException>(() => Planner.Plan(src, Base with { BudgetBytes = fix + all, ExpertCacheBytes = 3L * c.Layers * expert }));
        Assert.Contains("--expert-cache", few.Message);
        Assert.DoesNotContain('\n', few.Message);

        long tight = fix + (all - stacks) + 8L * c.Layers * expert;
        Assert.Throws<BudgetTooSmallException>(() => Planner.Plan(src, Base with { BudgetBytes = tight, ExpertCacheBytes = 9L * c.Layers * expert }));
    }

    [Fact]
    public void NoCachePolicy_HoldsWhatATokenRunsAndReadsEveryExpert()
    {
        using var src = new MoeShapeSource(MoeShapeSource.PycoderMoe, GgmlType.F16);
        var c = src.Config;
        var (fix, all, stacks, expert) = Sizes(src);
        var plan = Planner.Plan(src, Base with { BudgetBytes = fix + (all - stacks) + stacks / 2, ExpertPolicy = ExpertPolicy.None });
        Assert.Equal(c.ExpertsUsed, plan.Experts!.SlotsPerLayer);
        Assert.Equal(0, plan.Experts.PredictedHitRate);
        Assert.Equal((long)c.ExpertsUsed * c.Layers * expert, plan.Experts.ReadBytesPerToken);
        // Asked for where everything fits (a baseline to measure against), it is still planned: the load reads experts through it.
        var ample = Planner.Plan(src, Base with { BudgetBytes = fix + all, ExpertPolicy = ExpertPolicy.None });
        Assert.Equal(c.ExpertsUsed, ample.Experts!.SlotsPerLayer);
    }

    [Fact]
    public void NaiveStreamingIsTheNoCacheBaseline_AndADisabledCacheStreamsWholeLayers()
    {
        using var src = new MoeShapeSource(MoeShapeSource.PycoderMoe, GgmlType.F16);
        var c = src.Config;
        var (fix, all, stacks, _) = Sizes(src);
        long budget = fix + (all - stacks) + stacks / 2 + (4L << 20);
        // --stream naive on a mixture of experts reads every routed expert each time it runs: policy none, k slots.
        var naive = Assert.IsType<ExpertPlan>(Planner.Plan(src, Base with { BudgetBytes = budget, StreamEverything = true, Mode = StreamMode.Naive }).Experts);
        Assert.Equal(ExpertPolicy.None, naive.Policy);
        Assert.Equal(c.ExpertsUsed, naive.SlotsPerLayer);
        var layers = Planner.Plan(src, Base with { BudgetBytes = budget, ExpertCache = false });
        Assert.Null(layers.Experts);
        Assert.True(layers.Streams);
    }

    [Fact]
    public void CostModel_ComputesOnlyTheExpertsATokenRuns_AndPricesMissesAsRandomReads()
    {
        using var src = new MoeShapeSource(MoeShapeSource.PycoderMoe, GgmlType.F16);
        var c = src.Config;
        var (fix, all, stacks, _) = Sizes(src);
        var storage = new StorageProfile("x", true, [new(4 << 20, 4, 2e9, 0, Sequential: true), new(4 << 10, 1, 20e6, 0), new(1 << 20, 1, 500e6, 0)]);
        var machine = MachineProfile.Fixed(4e9, 10e-6);
        var o = Base with { Storage = storage, Machine = machine };
        var quarter = Planner.Plan(src, o with { BudgetBytes = fix + (all - stacks) + stacks / 4 });
        var half = Planner.Plan(src, o with { BudgetBytes = fix + (all - stacks) + stacks / 2 });
        var whole = Planner.Plan(src, o with { BudgetBytes = fix + all });
        Assert.True(quarter.PredictedTokensPerSecond < half.PredictedTokensPerSecond);
        Assert.True(half.PredictedTokensPerSecond < whole.PredictedTokensPerSecond);
        Assert.Contains("missed experts", quarter.CostModelNote);
        // A token multiplies 4 of 32 experts a layer, and makes one matrix call per expert of each stack.
        long unused = (long)(stacks * (1 - 4 / 32.0));
        Assert.InRange(Footprint.WeightBytesPerToken(src), all - unused - 64, all - unused + 64);
        int dense = src.Tensors.Count(t => t.Shape.Length >= 2 && !t.Name.Contains("_exps."));
        Assert.Equal(dense + 3 * c.Layers * c.ExpertsUsed, CostModel.MatrixCallsPerToken(src));
        double compute = Footprint.WeightBytesPerToken(src) / 4e9 + CostModel.MatrixCallsPerToken(src) * 10e-6;
        Assert.Equal(1 / compute, whole.PredictedTokensPerSecond, 6);
    }

    [Fact]
    public void Replace_KeepsAnExpertCacheAtTheNewBudgetsSize_AndMovesLayersOfAModelLoadedWithout()
    {
        using var src = new MoeShapeSource(MoeShapeSource.PycoderMoe, GgmlType.F16);
        var (fix, all, stacks, _) = Sizes(src);
        long quarter = fix + (all - stacks) + stacks / 4, half = fix + (all - stacks) + stacks / 2;
        var cached = Planner.Plan(src, Base with { BudgetBytes = quarter, ExpertPolicy = ExpertPolicy.Frequency });
        var (grown, below) = Planner.Replace(cached, src, half);
        Assert.False(below);
        Assert.Equal(16, grown.Experts!.SlotsPerLayer);
        Assert.Equal(ExpertPolicy.Frequency, grown.Experts.Policy);
        Assert.True(grown.TotalBytes <= half);

        // Loaded whole (movable layers): a smaller budget streams layers, as for a dense model.
        var whole = Planner.Plan(src, Base with { BudgetBytes = fix + all });
        var (shrunk, _) = Planner.Replace(whole, src, half + (4L << 20));
        Assert.Null(shrunk.Experts);
        Assert.True(shrunk.Streams);
    }

    [Fact]
    public void ThePycoderMoeFolder_HoldsEightOfThirtyTwoAtAQuarter()
    {
        if (TestPaths.Shared is not { } shared) return;
        using var src = ModelSource.Open(Path.Combine(shared, "models", "pycoder-moe"));
        Assert.Equal((32, 4, 4), (src.Config.ExpertCount, src.Config.ExpertsUsed, src.Config.Layers));
        var (fix, all, stacks, _) = Sizes(src);
        var plan = Planner.Plan(src, Base with { BudgetBytes = fix + (all - stacks) + stacks / 4 });
        Assert.Equal(8, plan.Experts!.SlotsPerLayer);
    }
}
