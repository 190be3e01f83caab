using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// Gate, up and the activation of one token in one launch (FITLM_CUDA_FUSED_ACT=1, a probe, off by default; matvec.cu's
/// gate_up_act_*): each thread block takes 32 outputs, their gate and up rows, and writes act(g)·u and its q8_0 for the
/// down projection into a scratch of its own (its x may be in the products' scratch, which other blocks still read).
/// One launch a layer fewer than the products in one launch and gate_act.
/// </summary>
internal sealed unsafe partial class CudaMatVec
{
    /// <summary>Whether FITLM_CUDA_FUSED_ACT=1 asks for the fused activation.</summary>
    public static bool FusedActEnabled { get; } = Environment.GetEnvironmentVariable("FITLM_CUDA_FUSED_ACT") == "1";

    private readonly ActScratch? _act;

    private sealed class ActScratch(CudaDevice device, KernelModule module, int maxCols) : IDisposable
    {
        public readonly Dictionary<GgmlType, nint> Kernel = new()
        {
            [GgmlType.Q4_0] = module.Function("gate_up_act_q4_0"),
            [GgmlType.Q8_0] = module.Function("gate_up_act_q8_0"),
        };
        public readonly Q8Scratch Output = new(device, maxCols);

        public void Dispose() => Output.Dispose();
    }

    /// <summary>Whether one token's gate and up of <paramref name="type"/> (rows × cols), read by a down projection of <paramref name="down"/>'s type, can be one launch with the activation.</summary>
    public bool CanFuseAct(GgmlType type, int rows, int cols, GgmlType down) =>
        _act != null && type is GgmlType.Q4_0 or GgmlType.Q8_0 && down is GgmlType.Q4_0 or GgmlType.Q8_0
        && rows % 32 == 0 && rows <= MaxCols && cols % 32 == 0 && cols <= MaxCols;

    /// <summary>
    /// Queues output = act(gate·x) ⊙ (up·x) for one token, with its q8_0 (returned: the down projection's input). x is a
    /// folded norm's (<paramref name="folded"/>) or in the products' scratch (<paramref name="sameInput"/>) or quantized here.
    /// </summary>
    public QuantizedX GateUpAct(GgmlType type, int cols, ulong x, bool sameInput, FoldedNorm? folded, ulong gate, ulong up, int rows, int act, ulong output)
    {
        Validate(type, GgmlTypes.RowBytes(type, cols), cols);
        if (folded == null) QuantizeUnlessThere(false, x, cols, 1, sameInput);
        var a = _act!;
        var from = folded?.Input ?? new QuantizedX(_xq!.Pointer, _xd!.Pointer, _xs!.Pointer);
        var target = a.Output.Target;
        ulong xq = from.Q, xd = from.D, xs = from.S, partials = folded?.Partials ?? 0, q = target.Q, d = target.D, s = target.S;
        float eps = folded?.Eps ?? 0f;
        void** args = stackalloc void*[] { &gate, &up, &rows, &cols, &xq, &xd, &xs, &partials, &eps, &act, &output, &q, &d, &s };
        _device.Launch(a.Kernel[type], (uint)(rows / 32), 32 * 16, 0, args); // 32 outputs a block, four rows a warp
        return target;
    }
}
