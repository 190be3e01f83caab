using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>A folded norm's output (<see cref="CudaMatVec.FoldNorm"/>): x ⊙ w in q8_0, each 32 elements' Σx², and ε.</summary>
internal readonly record struct FoldedNorm(QuantizedX Input, ulong Partials, float Eps);

/// <summary>
/// The folded RMSNorm of one-token steps (FITLM_CUDA_FOLD_NORM=1, a probe, off by default; matvec.cu's fold_norm_* and
/// *_scaled): the Q4_0/Q8_0 product before a norm (the output projection, the down projection) adds its rows to the
/// residual and writes the norm's q8_0 input for the products after it, which multiply by its 1/RMS, so the norm's
/// own kernel is not launched (two a layer). The products before it read x from the products' scratch, so the norm's
/// q8_0 goes to a scratch of its own.
/// </summary>
internal sealed unsafe partial class CudaMatVec
{
    /// <summary>Whether FITLM_CUDA_FOLD_NORM=1 asks for the folded norm.</summary>
    public static bool FoldNormEnabled { get; } = Environment.GetEnvironmentVariable("FITLM_CUDA_FOLD_NORM") == "1";

    /// <summary>The widest norm the readers fold (matvec.cu's NormScaledRows holds 4 sums a lane: 128 of 32).</summary>
    private const int MaxFoldedDim = 4096;

    private readonly FoldScratch? _fold;

    /// <summary>The folded norm's kernels and buffers: one token's q8_0 and its sums of squares.</summary>
    private sealed class FoldScratch(CudaDevice device, KernelModule module, int maxCols) : IDisposable
    {
        public readonly Dictionary<GgmlType, nint> Writer = new()
        {
            [GgmlType.Q4_0] = module.Function("fold_norm_q4_0"),
            [GgmlType.Q8_0] = module.Function("fold_norm_q8_0"),
        };
        public readonly Dictionary<GgmlType, (nint One, nint Two)> Scaled = new()
        {
            [GgmlType.Q4_0] = (module.Function("matvec_q4_0_q8_scaled"), module.Function("matvec2_q4_0_q8_scaled")),
            [GgmlType.Q8_0] = (module.Function("matvec_q8_0_q8_scaled"), 0),
        };
        public readonly Q8Scratch Output = new(device, maxCols);
        public readonly DeviceBuffer Partials = device.Allocate(maxCols / 32 * 4);

        public void Dispose()
        {
            Output.Dispose();
            Partials.Dispose();
        }
    }

    /// <summary>
    /// Whether a one-token product of <paramref name="producer"/> with <paramref name="dim"/> rows can fold the norm after
    /// it into the products of <paramref name="reader"/>'s type that read the norm.
    /// </summary>
    public bool CanFoldNorm(GgmlType producer, int dim, GgmlType reader) =>
        _fold != null && producer is GgmlType.Q4_0 or GgmlType.Q8_0 && reader is GgmlType.Q4_0 or GgmlType.Q8_0
        && dim % 32 == 0 && dim <= MaxFoldedDim && dim <= MaxCols;

    /// <summary>
    /// Queues y = W·x for one token folded with the norm after it: residual += y, and x ⊙ normWeights in q8_0 with each 32
    /// rows' Σ residual² for the products that read the norm (<see cref="MultiplyTogether(GgmlType, int, FoldedNorm, ValueTuple{ulong, int, ulong}, ValueTuple{ulong, int, ulong}, ValueTuple{ulong, int, ulong})"/>).
    /// </summary>
    /// <param name="sameInput">x's q8_0 is in the products' scratch (written with x).</param>
    /// <param name="input">x's q8_0 where another kernel wrote it (<see cref="GateUpAct"/>), else null.</param>
    public FoldedNorm FoldNorm(GgmlType type, ulong w, long rowBytes, int rows, int cols, ulong x, bool sameInput, ulong residual, ulong normWeights, float eps,
        QuantizedX? input = null)
    {
        Validate(type, rowBytes, cols);
        if (!CanFoldNorm(type, rows, type) || cols > MaxCols) throw new ArgumentException($"cuda matvec: no folded norm for {type} {rows} × {cols}");
        if (input == null) QuantizeUnlessThere(false, x, cols, 1, sameInput);
        var f = _fold!;
        var from = input ?? new QuantizedX(_xq!.Pointer, _xd!.Pointer, _xs!.Pointer);
        var target = f.Output.Target;
        ulong xq = from.Q, xd = from.D, xs = from.S, q = target.Q, d = target.D, s = target.S, partials = f.Partials.Pointer;
        void** args = stackalloc void*[] { &w, &rows, &cols, &xq, &xd, &xs, &residual, &normWeights, &q, &d, &s, &partials };
        _device.Launch(f.Writer[type], (uint)(rows / 32), 32 * 16, 0, args); // 32 rows a block, two a warp
        return new FoldedNorm(target, partials, eps);
    }
}
