namespace FitLM.Backends.Cuda;

/// <summary>Where a kernel that writes X [n × cols] also writes it in q8_0 (int8 values, scales, sums; common.cuh's quantize_block_q8_0).</summary>
internal readonly record struct QuantizedX(ulong Q, ulong D, ulong S)
{
    /// <summary>The device bytes of one token's q8_0 of <paramref name="cols"/> values (<see cref="Q8Scratch"/>).</summary>
    public static long Bytes(int cols) => cols + 2L * (cols / 32 * 4);

    /// <summary>The same target from row <paramref name="row"/> of X on.</summary>
    public QuantizedX At(int row, int cols) =>
        new(Q + (ulong)((long)row * cols), D + (ulong)((long)row * cols / 32 * 4), S + (ulong)((long)row * cols / 32 * 4));
}

/// <summary>One token's q8_0 of up to <paramref name="cols"/> values in device memory, a kernel's output of its own.</summary>
internal sealed class Q8Scratch(CudaDevice device, int cols) : IDisposable
{
    private readonly DeviceBuffer _q = device.Allocate(cols), _d = device.Allocate(cols / 32 * 4), _s = device.Allocate(cols / 32 * 4);

    public QuantizedX Target => new(_q.Pointer, _d.Pointer, _s.Pointer);

    public void Dispose()
    {
        _q.Dispose();
        _d.Dispose();
        _s.Dispose();
    }
}
