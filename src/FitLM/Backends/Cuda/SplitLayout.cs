using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// Q4_0 and Q8_0 matrices as the GPU holds them: all the quants of the matrix first, block by block in row order
/// ([rows·blocks × 16] bytes for Q4_0, × 32 for Q8_0, each block's bytes as GGUF orders them), then all the fp16
/// scales ([rows·blocks] × 2 bytes). The same bytes as the file's, rearranged so that every block's quants start
/// 16-byte aligned: GGUF's 18- and 34-byte blocks only allow 2-byte loads, which held the kernels reading them in
/// place to 70-74% of an H100's copy bandwidth (Kernels/matvec.cu, "int8 decode").
/// </summary>
internal static class SplitLayout
{
    public static bool Applies(GgmlType type) => type is GgmlType.Q4_0 or GgmlType.Q8_0;

    private static int QuantBytes(GgmlType type) => type == GgmlType.Q4_0 ? 16 : 32;

    /// <summary>
    /// Rearranges <paramref name="rows"/> GGUF rows, rows r0.. of a matrix of <paramref name="totalRows"/>, and hands
    /// their quants and their scales to <paramref name="sink"/> with each part's offset in the split matrix.
    /// <paramref name="scratch"/> holds at least the rows' bytes.
    /// </summary>
    public static void Write(GgmlType type, int totalRows, int cols, int r0, int rows, ReadOnlySpan<byte> gguf, Span<byte> scratch,
        Action<long, ReadOnlySpan<byte>> sink)
    {
        int qb = QuantBytes(type), bytes = qb + 2;
        long blocksPerRow = cols / 32, blocks = rows * blocksPerRow;
        var quants = scratch[..(int)(blocks * qb)];
        var scales = scratch.Slice((int)(blocks * qb), (int)(blocks * 2));
        for (int b = 0; b < blocks; b++)
        {
            var block = gguf.Slice(b * bytes, bytes);
            block[..2].CopyTo(scales.Slice(2 * b, 2));
            block[2..].CopyTo(quants.Slice(b * qb, qb));
        }
        sink(r0 * blocksPerRow * qb, quants);
        sink(totalRows * blocksPerRow * qb + r0 * blocksPerRow * 2, scales);
    }

    /// <summary>A whole matrix of GGUF rows in the split layout (the kernel checks upload this).</summary>
    public static byte[] FromGguf(GgmlType type, int rows, int cols, ReadOnlySpan<byte> gguf)
    {
        var split = new byte[gguf.Length];
        Write(type, rows, cols, 0, rows, gguf, new byte[gguf.Length], (offset, part) => part.CopyTo(split.AsSpan((int)offset)));
        return split;
    }
}
