namespace FitLM.Backends.Cuda;

/// <summary>Where a kernel that writes X [n × cols] also writes it in q8_0 (int8 values, scales, sums; common.cuh's quantize_block_q8_0).</summary>
internal readonly record struct QuantizedX(ulong Q, ulong D, ulong S)
{
    /// <summary>The same target from row <paramref name="row"/> of X on.</summary>
    public QuantizedX At(int row, int cols) =>
        new(Q + (ulong)((long)row * cols), D + (ulong)((long)row * cols / 32 * 4), S + (ulong)((long)row * cols / 32 * 4));
}
