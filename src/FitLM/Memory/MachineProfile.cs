using System.Collections.Concurrent;
using FitLM.Tensors;

namespace FitLM.Memory;

/// <summary>
/// The machine's speeds the cost models price plans with: the matrix-vector kernels' weight bytes per second by
/// type, and the fixed cost of one matrix-vector call (handing rows to the worker threads and waiting for them).
/// <see cref="Measured"/> probes each once per process and keeps it, so one process never prices the same plan twice
/// with different numbers (re-timing on every call let a busy machine flip `plan`'s mode choice, and the tests that
/// check it); tests inject <see cref="Fixed"/> numbers and do not depend on the machine's load at all.
/// </summary>
public sealed class MachineProfile
{
    private readonly Func<GgmlType, long, double> _compute;
    private readonly Func<double> _dispatch;
    private readonly ConcurrentDictionary<(GgmlType Type, long ProbeBytes, int Threads), Lazy<double>> _rates = new();
    private readonly ConcurrentDictionary<int, Lazy<double>> _dispatches = new();

    private MachineProfile(Func<GgmlType, long, double> compute, Func<double> dispatch)
    {
        _compute = compute;
        _dispatch = dispatch;
    }

    /// <summary>
    /// This machine, each speed probed the first time a process asks for it (per type, probe size and thread count), and
    /// the best of that and what earlier processes on this machine probed (<see cref="MachineCache"/>).
    /// </summary>
    public static MachineProfile Measured { get; } = new(
        (type, probeBytes) => MachineCache.Best($"compute {type} {probeBytes >> 20} MiB {MatMul.Threads} threads", CostModel.MeasureCompute(type, probeBytes)),
        () => 1 / MachineCache.Best($"matrix calls per second {MatMul.Threads} threads", 1 / CostModel.MeasureDispatch()));

    /// <summary>A machine with the given speeds, for tests and for predictions that must not depend on the machine.</summary>
    public static MachineProfile Fixed(double computeBytesPerSecond, double dispatchSeconds = 0) =>
        new((_, _) => computeBytesPerSecond, () => dispatchSeconds);

    /// <summary>
    /// Weight bytes per second the kernels sustain for <paramref name="type"/>; the probe's matrix takes at most
    /// <paramref name="roomBytes"/> (the smaller of the model's bytes per token and what a budget leaves the probe), at most <see cref="CostModel.MaxComputeProbeBytes"/>.
    /// </summary>
    public double ComputeBytesPerSecond(GgmlType type, long roomBytes = long.MaxValue)
    {
        long probe = Math.Clamp(roomBytes, CostModel.MinComputeProbeBytes, CostModel.MaxComputeProbeBytes);
        return _rates.GetOrAdd((type, probe, MatMul.Threads), k => new Lazy<double>(() => _compute(k.Type, k.ProbeBytes))).Value;
    }

    /// <summary>Seconds one matrix-vector call costs besides its bytes (measured on a matrix small enough to stay in cache).</summary>
    public double DispatchSeconds => _dispatches.GetOrAdd(MatMul.Threads, _ => new Lazy<double>(_dispatch)).Value;
}
