using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Weights;
using Xunit;

namespace FitLM.Tests.Weights;

/// <summary>
/// Layers move between resident and streamed while the model runs (issue 17): what the model computes never
/// changes, memory goes back when layers move out, and a failed read while growing leaves the model streamed.
/// </summary>
[Collection(SequentialCollection.Name)] // one test reads the process's RSS
public class MovableLayersTests
{
    /// <summary>A fixed figure for the rest of the process, so plans do not depend on the test host's RSS.</summary>
    private const long Runtime = 64L << 20;
    private const int Context = 64;

    private static Planner.Options Options(long budget) => new() { BudgetBytes = budget, Context = Context, RuntimeBytes = Runtime };

    private static MemoryPlan AllResident(IModelSource src) => Planner.Plan(src, Options(1L << 40));

    /// <summary>A plan from Planner.Replace that keeps about half of the weights resident.</summary>
    private static MemoryPlan Half(IModelSource src, MemoryPlan all) =>
        Planner.Replace(all, src, all.TotalBytes - all.ResidentWeightBytes / 2).Plan;

    /// <summary>Every layer, the head and the embedding streamed: the smallest plan.</summary>
    private static MemoryPlan Smallest(IModelSource src, MemoryPlan all)
    {
        var (plan, below) = Planner.Replace(all, src, 1 << 20);
        Assert.True(below);
        return plan;
    }

    /// <summary>Greedy decoding from <paramref name="pos"/>: the logits of every step, and the next token.</summary>
    private static int Decode(Transformer t, int token, int pos, int steps, List<float> into)
    {
        var logits = new float[t.Config.Vocab];
        for (int i = 0; i < steps; i++)
        {
            t.Forward([token], pos + i, logits, 0);
            into.AddRange(logits);
            token = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits);
        }
        return token;
    }

    private static int[] Prompt(IModelSource src) => src.Tokenizer.Encode("def add(a, b):\n    return");

    /// <summary>Prompt, then 9 greedy steps, with <paramref name="between"/> called before steps 3 and 6.</summary>
    private static float[] Generate(IModelSource src, IWeightProvider weights, Action<int>? between = null)
    {
        var t = new Transformer(src.Config, weights, Context);
        var prompt = Prompt(src);
        var all = new List<float>();
        var logits = new float[prompt.Length * src.Config.Vocab];
        t.Forward(prompt, 0, logits, 0);
        all.AddRange(logits);
        int token = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits.AsSpan((prompt.Length - 1) * src.Config.Vocab));
        int pos = prompt.Length;
        for (int phase = 0; phase < 3; phase++)
        {
            if (phase > 0) between?.Invoke(phase);
            token = Decode(t, token, pos, 3, all);
            pos += 3;
        }
        return all.ToArray();
    }

    [Fact]
    public void LayersMovedOutAndBackGiveBitIdenticalLogits() => AssertMovesKeepLogits(TestPaths.DemoModel, mixed: true);

    [Fact]
    public void ATiedHeadMovesWithTheEmbeddingRowsStillRead()
    {
        if (TestPaths.Shared is not { } shared)
        {
            Console.WriteLine("skipped: ../shared is absent");
            return;
        }
        // tiny-qwen2 ties its head to the embedding: one unit multiplied as the head and read by rows.
        AssertMovesKeepLogits(Path.Combine(shared, "models", "zoo", "tiny-qwen2"), mixed: false);
    }

    /// <param name="mixed">whether half the budget keeps some layers resident and streams others (not so for a tiny model whose head outweighs its layers)</param>
    private static void AssertMovesKeepLogits(string model, bool mixed)
    {
        using var src = ModelSource.Open(model);
        var all = AllResident(src);
        var half = Half(src, all);
        if (mixed) Assert.Contains(half.Tensors, t => t.Placement == Placement.Streamed && t.Layer >= 0);
        if (mixed) Assert.Contains(half.Tensors, t => t.Placement == Placement.Resident && t.Layer >= 0 && t.Tensor.Shape.Length == 2);

        float[] reference;
        using (var resident = new ResidentWeights(src)) reference = Generate(src, resident);
        // Planned that way from the start: half resident, and everything streamed.
        using (var planned = new StreamingWeights(src, half.Tensors, StreamMode.Prefetch)) Assert.Equal(reference, Generate(src, planned));
        using (var streamed = new StreamingWeights(src, Smallest(src, all).Tensors, StreamMode.Prefetch)) Assert.Equal(reference, Generate(src, streamed));

        // Loaded all resident (and still movable), then half out, then back in.
        using (var movable = new StreamingWeights(src, all.Tensors, StreamMode.Prefetch))
        {
            Assert.Equal(0, movable.StreamedUnits);
            var moved = Generate(src, movable, phase => movable.ApplyPlacement(phase == 1 ? half.Tensors : all.Tensors));
            Assert.Equal(0, movable.StreamedUnits);
            Assert.Equal(reference, moved);
        }
        // Resident → everything streamed (head and embedding too) → half: the matrices the transformer holds follow.
        using (var movable = new StreamingWeights(src, all.Tensors, StreamMode.Prefetch))
        {
            var smallest = Smallest(src, all);
            var moved = Generate(src, movable, phase => movable.ApplyPlacement(phase == 1 ? smallest.Tensors : half.Tensors));
            Assert.Equal(reference, moved);
        }
    }

    [Fact]
    public void MovingLayersOutGivesTheirMemoryBack()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        var all = AllResident(src);
        var smallest = Smallest(src, all);
        using var movable = new StreamingWeights(src, all.Tensors, StreamMode.Prefetch);
        _ = Generate(src, movable);
        long residentBefore = movable.ResidentBytes;
        long layerBytes = all.Tensors.Where(t => t.Layer >= 0 && t.Tensor.Shape.Length == 2).Sum(t => t.Tensor.ByteSize);
        HeapTrim.Native();
        long rssBefore = ProcessMemory.RssBytes();

        movable.ApplyPlacement(smallest.Tensors);
        long rssAfter = ProcessMemory.RssBytes();
        long residentAfter = movable.ResidentBytes;
        // What is left: vectors, the two stream slots and the embedding's row buffer.
        Assert.True(residentBefore - residentAfter >= layerBytes - 2 * movable.SlotBytes,
            $"resident {residentBefore} → {residentAfter}, layers {layerBytes}, slot {movable.SlotBytes}");
        if (rssBefore > 0)
            Assert.True(rssBefore - rssAfter >= (residentBefore - residentAfter) / 2,
                $"RSS {rssBefore >> 10} KiB → {rssAfter >> 10} KiB, freed {(residentBefore - residentAfter) >> 10} KiB");

        movable.ApplyPlacement(all.Tensors);
        Assert.Equal(residentBefore, movable.ResidentBytes);
        Assert.Equal(0, movable.SlotBytes);
    }

    [Fact]
    public void StreamSlotsFollowTheLargestStreamedUnit()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        var all = AllResident(src);
        using var movable = new StreamingWeights(src, all.Tensors, StreamMode.Prefetch);
        Assert.Equal(0, movable.SlotBytes);

        long Bytes(Func<TensorPlan, bool> which) => all.Tensors.Where(which).Sum(t => t.Tensor.ByteSize);
        IReadOnlyList<TensorPlan> Streaming(Func<TensorPlan, bool> which) =>
            all.Tensors.Select(t => which(t) && t.Tensor.Shape.Length == 2 ? t with { Placement = Placement.Streamed } : t).ToList();
        bool Layer3(TensorPlan t) => t.Layer == 3;
        bool Head(TensorPlan t) => t.Tensor.Name == "output.weight";
        long layer = Bytes(t => Layer3(t) && t.Tensor.Shape.Length == 2), head = Bytes(Head);
        Assert.True(head > layer, "the demo model's head is its largest unit");

        movable.ApplyPlacement(Streaming(Layer3));
        Assert.True(movable.SlotBytes >= layer && movable.SlotBytes < layer + (1 << 20), $"slot {movable.SlotBytes} for a layer of {layer}");
        Assert.False(movable.IsLayerResident(3));
        Assert.True(movable.IsLayerResident(2));
        long layerSlot = movable.SlotBytes;

        movable.ApplyPlacement(Streaming(t => Layer3(t) || Head(t)));
        Assert.True(movable.SlotBytes >= head && movable.SlotBytes < head + (1 << 20), $"slot {movable.SlotBytes} for a head of {head}");

        movable.ApplyPlacement(Streaming(Layer3));
        Assert.Equal(layerSlot, movable.SlotBytes);
        movable.ApplyPlacement(all.Tensors);
        Assert.Equal(0, movable.SlotBytes);
        Assert.Equal(0, movable.StreamedUnits);
    }

    [Fact]
    public void PrefetchReadsOnlyStreamedUnits()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        var all = AllResident(src);
        var half = Half(src, all);
        using var movable = new StreamingWeights(src, all.Tensors, StreamMode.Prefetch);
        movable.ApplyPlacement(half.Tensors);
        _ = Generate(src, movable);
        // Prompt plus 9 steps: each pass reads every streamed unit once, and prefetch reads at most one more.
        long perPass = half.Tensors.Where(t => t.Placement == Placement.Streamed && t.Tensor.Name != "token_embd.weight")
            .GroupBy(t => t.Layer).Sum(g => g.Sum(t => t.Tensor.ByteSize) + (1 << 20));
        Assert.True(movable.BytesRead > 0);
        Assert.True(movable.BytesRead <= 11 * perPass, $"read {movable.BytesRead} bytes, streamed units are {perPass} a pass");
    }

    [Fact]
    public void AReadErrorWhileGrowingLeavesTheModelStreamedAndWorking()
    {
        using var inner = ModelSource.Open(TestPaths.DemoModel);
        var all = AllResident(inner);
        var half = Half(inner, all);
        float[] reference;
        using (var resident = new ResidentWeights(inner)) reference = Generate(inner, resident);

        var faulty = new FaultySource(inner);
        using var movable = new StreamingWeights(faulty, half.Tensors, StreamMode.Prefetch);
        int streamed = movable.StreamedUnits;
        long residentBytes = 0;
        FitLMException? error = null;
        var logits = Generate(faulty, movable, phase =>
        {
            if (phase != 1) return;
            residentBytes = movable.ResidentBytes;
            faulty.Fail = true;
            error = Assert.Throws<FitLMException>(() => movable.ApplyPlacement(all.Tensors));
            faulty.Fail = false;
        });
        Assert.NotNull(error);
        Assert.Contains("stays streamed", error.Message);
        Assert.Contains("disk went away", error.Message);
        Assert.Equal(streamed, movable.StreamedUnits);
        Assert.Equal(residentBytes, movable.ResidentBytes);
        Assert.Equal(reference, logits);
        // What the model's plan should say now: the placement it had before the failed grow.
        Assert.Equal(half.Tensors.Select(t => t.Placement), movable.PlacementNow(all.Tensors).Select(t => t.Placement));

        // The storage is back: the next attempt grows.
        movable.ApplyPlacement(all.Tensors);
        Assert.Equal(0, movable.StreamedUnits);
    }

    /// <summary>A model source whose reads fail on demand (what a vanished or truncated file does to a grow).</summary>
    private sealed class FaultySource(IModelSource inner) : IModelSource
    {
        public bool Fail { get; set; }
        public string Path => inner.Path;
        public ModelConfig Config => inner.Config;
        public FitLM.Tokenization.Tokenizer Tokenizer => inner.Tokenizer;
        public IReadOnlyList<TensorDesc> Tensors => inner.Tensors;
        public TensorDesc? Find(string name) => inner.Find(name);
        public TensorLocation Locate(TensorDesc tensor) => inner.Locate(tensor);

        public void Read(TensorDesc tensor, long offset, Span<byte> dst)
        {
            if (Fail) throw new IOException($"{Path}: the disk went away");
            inner.Read(tensor, offset, dst);
        }

        public void Dispose() { }
    }
}
