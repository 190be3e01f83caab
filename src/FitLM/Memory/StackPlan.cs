using FitLM.Tensors;
using FitLM.Weights;

namespace FitLM.Memory;

/// <summary>
/// The size of a stacked (BitStack) model as a memory plan describes it: how much of the stack is loaded, what
/// its weights and matrix caches take, and what a decoded token multiplies. Derived from the layout alone, so
/// the planner (before loading), the loaded model and a resized one describe the same size the same way.
/// </summary>
public sealed record StackPlan
{
    /// <summary>Stack positions loaded (blocks), of <see cref="TotalEntries"/>.</summary>
    public required int Entries { get; init; }
    public required int TotalEntries { get; init; }
    /// <summary>Fewest and most blocks any stacked matrix has at this size (they differ by at most one).</summary>
    public required int MinBlocks { get; init; }
    public required int MaxBlocks { get; init; }
    /// <summary>Type the matrices are re-materialized into, or null for the direct sign × low-rank kernel.</summary>
    public required GgmlType? CacheType { get; init; }
    /// <summary>Conventional tensors (embeddings, head, norms) plus the loaded blocks: what --weights caps.</summary>
    public required long WeightBytes { get; init; }
    /// <summary>Bytes of the re-materialized matrices (0 with the direct kernel).</summary>
    public required long CacheBytes { get; init; }
    /// <summary>Working memory multiplying and resizing need besides blocks and caches (<see cref="StackPlanner.TransientBytes"/>).</summary>
    public required long TransientBytes { get; init; }
    /// <summary>
    /// Weight bytes a decoded token passes through the kernels: the conventional tensors (an embedding table with a
    /// separate head only one row) plus every matrix cache, or the loaded blocks with the direct kernel.
    /// </summary>
    public required long BytesPerToken { get; init; }
    /// <summary>Bits per weight over every parameter of the model, and over the stacked matrices alone.</summary>
    public required double BitsPerWeight { get; init; }
    public required double StackBitsPerWeight { get; init; }

    public static StackPlan Of(StackLayout layout, int entries, GgmlType? cacheType)
    {
        var counts = layout.CountsAt(entries);
        // A matrix without blocks has no cache (it multiplies as zero), so only the others count.
        long cacheBytes = cacheType is { } t
            ? layout.Matrices.Where(m => counts[m.Index] > 0).Sum(m => GgmlTypes.RowBytes(t, m.Cols) * m.Rows)
            : 0;
        long blockBytes = layout.BlockBytesBetween(0, Math.Clamp(entries, 0, layout.Entries.Count));
        return new StackPlan
        {
            Entries = entries,
            TotalEntries = layout.Entries.Count,
            MinBlocks = counts.Min(),
            MaxBlocks = counts.Max(),
            CacheType = cacheType,
            WeightBytes = layout.BytesAt(entries),
            CacheBytes = cacheBytes,
            TransientBytes = StackPlanner.TransientBytes(layout, cacheType),
            BytesPerToken = layout.FixedBytesPerToken + (cacheType != null ? cacheBytes : blockBytes),
            BitsPerWeight = layout.TotalBitsPerWeight(entries),
            StackBitsPerWeight = layout.StackBitsPerWeight(entries),
        };
    }

    /// <summary>"2-3 per matrix" or "3 per matrix".</summary>
    public string BlocksPerMatrix => MinBlocks == MaxBlocks ? $"{MinBlocks} per matrix" : $"{MinBlocks}-{MaxBlocks} per matrix";

    /// <summary>How the matrices multiply, in words.</summary>
    public string KernelText => CacheType is { } t ? $"matrices cached as {GgmlTypes.Name(t)}" : "direct sign x low-rank kernel";
}
