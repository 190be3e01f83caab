using FitLM.Adapters;
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
        int r = Rank;
        DenseMath.MultiplyTransposed(x, n, In, l.Pair.A, r, ax);
        var tmp = s.Product(n * Out);
        DenseMath.MultiplyTransposed(ax, n, r, l.Pair.B, Out, tmp);
        DenseMath.AddScaled(tmp, scale, y[..(n * Out)]);
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

        // dB [o × r] += s · dYᵀ [o × n] · (A x) [n × r]
        var dyT = s.Transposed(0, (long)o * n);
        DenseMath.Transpose(dy, n, o, dyT);
        var axT = s.Transposed(1, (long)r * n);
        DenseMath.Transpose(ax, n, r, axT);
        var dB = s.Small(0, (long)o * r);
        DenseMath.MultiplyTransposed(dyT, o, n, axT, r, dB);
        DenseMath.AddScaled(dB, scale, l.GradB);

        // g [n × r] = s · dY · B
        var bT = s.Small(1, (long)r * o);
        DenseMath.Transpose(p.B, o, r, bT);
        var g = s.Small(2, (long)n * r);
        DenseMath.MultiplyTransposed(dy, n, o, bT, r, g);
        System.Numerics.Tensors.TensorPrimitives.Multiply(g, scale, g);

        // dA [r × i] += gᵀ [r × n] · x [n × i]
        var gT = s.Small(3, (long)r * n);
        DenseMath.Transpose(g, n, r, gT);
        var xT = s.Transposed(0, (long)i * n);
        DenseMath.Transpose(x[..(n * i)], n, i, xT);
        var dA = s.Small(4, (long)r * i);
        DenseMath.MultiplyTransposed(gT, r, n, xT, i, dA);
        DenseMath.AddScaled(dA, 1f, l.GradA);

        // dX [n × i] += g · A
        var aT = s.Small(5, (long)i * r);
        DenseMath.Transpose(p.A, r, i, aT);
        var tmp = s.Product(n * i);
        DenseMath.MultiplyTransposed(g, n, r, aT, i, tmp);
        DenseMath.AddScaled(tmp, 1f, dx[..(n * i)]);
        PhaseTimes.Stop(PhaseTimes.Phase.LoraBackward, ts);
    }
}

/// <summary>Scratch arrays of the backward pass, grown on first use and reused for every step (no allocation per step).</summary>
internal sealed class TrainingScratch
{
    private readonly float[][] _transposed = [[], []];
    private readonly float[][] _small = [[], [], [], [], [], []];
    private float[] _product = [];
    public FrozenMatrixGradient Frozen { get; } = new();

    public Span<float> Transposed(int slot, long length) => Get(ref _transposed[slot], length);
    public Span<float> Small(int slot, long length) => Get(ref _small[slot], length);
    public Span<float> Product(long length) => Get(ref _product, length);

    private static Span<float> Get(ref float[] a, long length)
    {
        FrozenMatrixGradient.Ensure(ref a, length);
        return a.AsSpan(0, (int)length);
    }
}
