using FitLM.Adapters;
using System.Numerics.Tensors;
using FitLM.Runtime;
using FitLM.Tensors;

namespace FitLM.Training;

/// <summary>A LoRA pair being trained: its parameters and the gradients the backward pass sums into.</summary>
public sealed class TrainablePair(LoraPair pair)
{
    public LoraPair Pair { get; } = pair;
    public float[] GradA { get; } = new float[pair.A.Length];
    public float[] GradB { get; } = new float[pair.B.Length];
}

/// <summary>
/// One projection of the training graph, y = W x + s · B (A x): the frozen base W in its stored type and, when the
/// projection is a LoRA target, the pair. Forward keeps A x ([n × rank], the only extra activation LoRA costs);
/// backward sums dA, dB and adds the input gradient of both terms.
/// </summary>
internal sealed class LoraProjection(IMatrix weight, TrainablePair? lora, float scale)
{
    public IMatrix Weight { get; } = weight;
    public TrainablePair? Lora { get; } = lora;
    public int In => Weight.Cols;
    public int Out => Weight.Rows;
    public int Rank => Lora?.Pair.Rank ?? 0;

    /// <summary>y [n × Out] = W x (+ s B A x); <paramref name="ax"/> [n × Rank] receives A x.</summary>
    public void Forward(ReadOnlySpan<float> x, Span<float> y, int n, Span<float> ax, TrainingScratch s)
    {
        Weight.Multiply(x[..(n * In)], y, n);
        if (Lora is not { } l) return;
        long ts = PhaseTimes.Start();
        int r = Rank, i = In, o = Out;
        var p = l.Pair;
        // Rank is small (4–64): dots and row updates, not the matrix kernels, whose work items are rows of W
        // (8 rows would be one item on one thread) and which would need the operands transposed.
        for (int t = 0; t < n; t++)
        {
            var xt = x.Slice(t * i, i);
            for (int j = 0; j < r; j++) ax[t * r + j] = TensorPrimitives.Dot(xt, p.A.AsSpan(j * i, i));
        }
        var bT = s.Small(0, (long)r * o);
        DenseMath.Transpose(p.B, o, r, bT);
        for (int t = 0; t < n; t++)
        {
            var yt = y.Slice(t * o, o);
            for (int j = 0; j < r; j++) TensorPrimitives.MultiplyAdd(bT.Slice(j * o, o), scale * ax[t * r + j], yt, yt);
        }
        PhaseTimes.Stop(PhaseTimes.Phase.LoraForward, ts);
    }

    /// <summary>
    /// Given dY [n × Out]: dX [n × In] += dY · (W + s B A) and, for a LoRA target, dB += s dYᵀ (A x),
    /// dA += (s dY B)ᵀ x.
    /// </summary>
    public void Backward(ReadOnlySpan<float> x, ReadOnlySpan<float> ax, ReadOnlySpan<float> dy, Span<float> dx, int n, TrainingScratch s)
    {
        long ts = PhaseTimes.Start();
        s.Frozen.Accumulate(Weight, dy, n, dx);
        ts = PhaseTimes.Stop(PhaseTimes.Phase.FrozenBackward, ts);
        if (Lora is not { } l) return;
        int r = Rank, o = Out, i = In;
        var p = l.Pair;
        var bT = s.Small(0, (long)r * o);
        DenseMath.Transpose(p.B, o, r, bT);
        var g = s.Small(1, (long)n * r);
        var dBT = s.Small(2, (long)r * o);
        dBT.Clear();
        for (int t = 0; t < n; t++)
        {
            var dyt = dy.Slice(t * o, o);
            for (int j = 0; j < r; j++)
            {
                // g = s · dY · B;  dBᵀ += s · (A x)ᵀ dY
                g[t * r + j] = scale * TensorPrimitives.Dot(dyt, bT.Slice(j * o, o));
                var row = dBT.Slice(j * o, o);
                TensorPrimitives.MultiplyAdd(dyt, scale * ax[t * r + j], row, row);
            }
        }
        for (int j = 0; j < r; j++)
            for (int k = 0; k < o; k++) l.GradB[k * r + j] += dBT[j * o + k];
        for (int t = 0; t < n; t++)
        {
            // dA += gᵀ x;  dX += g A
            var xt = x.Slice(t * i, i);
            var dxt = dx.Slice(t * i, i);
            for (int j = 0; j < r; j++)
            {
                float gj = g[t * r + j];
                var dA = l.GradA.AsSpan(j * i, i);
                TensorPrimitives.MultiplyAdd(xt, gj, dA, dA);
                TensorPrimitives.MultiplyAdd(p.A.AsSpan(j * i, i), gj, dxt, dxt);
            }
        }
        PhaseTimes.Stop(PhaseTimes.Phase.LoraBackward, ts);
    }
}

/// <summary>Scratch arrays of the backward pass, grown on first use and reused for every step (no allocation per step).</summary>
internal sealed class TrainingScratch
{
    private readonly float[][] _small = [[], [], []];
    public FrozenMatrixGradient Frozen { get; } = new();

    public Span<float> Small(int slot, long length) => Get(ref _small[slot], length);

    private static Span<float> Get(ref float[] a, long length)
    {
        FrozenMatrixGradient.Ensure(ref a, length);
        return a.AsSpan(0, (int)length);
    }
}
