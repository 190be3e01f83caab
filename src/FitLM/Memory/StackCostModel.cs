using System.Diagnostics;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Weights;

namespace FitLM.Memory;

/// <summary>
/// Predicts the decode speed of a stacked model's plan. Nothing is streamed, so a token costs the time the kernels
/// take over the bytes it multiplies: each conventional matrix at the rate the kernel of its type sustains, and
/// the stacked matrices as their caches (at the cache type's rate) or as blocks (at the direct kernel's rate, which
/// passes over the sign bits once per rank component). The rates come from short probes on this machine.
/// Attention, norms and the rest of the graph are not counted, so small models run somewhat below the prediction.
/// </summary>
public static class StackCostModel
{
    public static MemoryPlan Predict(MemoryPlan plan, GgufSource source, StackLayout layout, CancellationToken ct = default)
    {
        var stack = plan.Stack ?? throw new ArgumentException("not the plan of a stacked model", nameof(plan));
        var bytesByType = new Dictionary<GgmlType, long>();
        var stackTensors = new HashSet<string>(layout.Entries.SelectMany(e => new[] { e.Sign.Name, e.U.Name, e.V.Name }), StringComparer.Ordinal);
        bool separateHead = source.Find("output.weight") != null;
        foreach (var t in source.Tensors)
        {
            // Norm vectors are element-wise, and an embedding table with a separate head is one row looked up: neither is a matrix product.
            if (stackTensors.Contains(t.Name) || t.Shape.Length < 2 || t.Name == "token_embd.weight" && separateHead) continue;
            bytesByType[t.Type] = bytesByType.GetValueOrDefault(t.Type) + t.ByteSize;
        }
        var parts = new List<string>();
        double seconds = 0;
        foreach (var (type, bytes) in bytesByType.OrderByDescending(x => x.Value))
        {
            ct.ThrowIfCancellationRequested();
            double rate = MachineProfile.Measured.ComputeBytesPerSecond(type);
            seconds += bytes / rate;
            parts.Add($"{bytes / 1e6:F1} MB {GgmlTypes.Name(type)} at {rate / 1e9:F1} GB/s");
        }
        ct.ThrowIfCancellationRequested();
        if (stack.CacheType is { } cache)
        {
            double rate = MachineProfile.Measured.ComputeBytesPerSecond(cache);
            seconds += stack.CacheBytes / rate;
            parts.Add($"{stack.CacheBytes / 1e6:F1} MB of {GgmlTypes.Name(cache)} caches at {rate / 1e9:F1} GB/s");
        }
        else
        {
            long blocks = stack.WeightBytes - layout.FixedBytes;
            double rate = MeasureDirect(layout.Matrices.Max(m => m.Rank));
            seconds += blocks / rate;
            parts.Add($"{blocks / 1e6:F1} MB of blocks at {rate / 1e9:F2} GB/s (direct kernel)");
        }
        return plan with
        {
            PredictedTokensPerSecond = seconds > 0 ? 1 / seconds : 0,
            CostModelNote = $"compute {seconds * 1e3:F2} ms/token: {string.Join(", ", parts)}; nothing streamed",
        };
    }

    /// <summary>
    /// Block bytes per second the direct sign × low-rank kernel multiplies at rank <paramref name="rank"/>, on one
    /// random 2048 × 2048 block (large enough that the work per sign bit, not the call overhead, dominates).
    /// </summary>
    public static double MeasureDirect(int rank, int rows = 2048, int cols = 2048)
    {
        var rng = new Random(1);
        var signs = new byte[StackBlock.SignBytes(rows, cols)];
        rng.NextBytes(signs);
        var u = new Half[rows * rank];
        var v = new Half[cols * rank];
        for (int i = 0; i < u.Length; i++) u[i] = (Half)(rng.NextDouble() * 0.01);
        for (int i = 0; i < v.Length; i++) v[i] = (Half)(rng.NextDouble() * 0.01);
        var block = StackBlock.Create(signs, u, v, rows, cols, rank);
        try
        {
            using var w = StackedWeights.InMemory(new MemoryWeights(), [("probe", rows, cols, rank)], [[block]], cacheType: null);
            w.SetCount(0, 1);
            var m = w.Matrix("probe");
            var x = new float[cols];
            var y = new float[rows];
            for (int i = 0; i < cols; i++) x[i] = (float)rng.NextDouble();
            m.Multiply(x, y, 1); // warm-up
            double best = 0;
            for (int rep = 0; rep < 5; rep++)
            {
                var sw = Stopwatch.StartNew();
                m.Multiply(x, y, 1);
                best = Math.Max(best, block.Bytes / sw.Elapsed.TotalSeconds);
            }
            return best;
        }
        finally
        {
            block.Dispose();
        }
    }
}
