using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// Q4_0, Q8_0 and Q6_K matrices as the GPU holds them: each block's fp16 scale d taken out, all the blocks' other bytes
/// first, block by block in row order ([rows·blocks × 16] for Q4_0, × 32 for Q8_0, × 208 for Q6_K: its ql, qh and
/// scales), then all the d's ([rows·blocks] × 2 bytes). The same bytes as the file's, rearranged so that every block's
/// quants start 16-byte aligned: GGUF's 18-, 34- and 210-byte blocks only allow 2-byte loads, which held kernels reading
/// them in place to 70-74% (llama.cpp's, Q4_0/Q8_0) and 25% (this project's, Q6_K) of an H100's copy bandwidth
/// (Kernels/matvec.cu, "int8 decode"). Q4_K's 144-byte blocks are 16-byte aligned as stored and stay so.
/// </summary>
internal static class SplitLayout
{
    public static bool Applies(GgmlType type) => type is GgmlType.Q4_0 or GgmlType.Q8_0 or GgmlType.Q6_K;

    /// <summary>A block's bytes, where its 2-byte d sits in it (Q4_0, Q8_0: first; Q6_K: last), and its elements.</summary>
    private static (int Bytes, int ScaleAt, int Elements) Block(GgmlType type) => type switch
    {
        GgmlType.Q4_0 => (18, 0, 32),
        GgmlType.Q8_0 => (34, 0, 32),
        GgmlType.Q6_K => (210, 208, 256),
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not a split-layout type"),
    };

    /// <summary>
    /// Rearranges <paramref name="rows"/> GGUF rows, rows r0.. of a matrix of <paramref name="totalRows"/>, and hands
    /// their quants and their scales to <paramref name="sink"/> with each part's offset in the split matrix.
    /// <paramref name="scratch"/> holds at least the rows' bytes.
    /// </summary>
    public static void Write(GgmlType type, int totalRows, int cols, int r0, int rows, ReadOnlySpan<byte> gguf, Span<byte> scratch,
        Action<long, ReadOnlySpan<byte>> sink)
    {
        var p = Place(type, totalRows, cols, r0, rows, gguf);
        var quants = scratch[..p.QuantBytes];
        var scales = scratch.Slice(p.QuantBytes, p.ScaleBytes);
        Rearrange(gguf, quants, scales, p.Blocks, p.BlockBytes, p.ScaleAt);
        sink(p.QuantsAt, quants);
        sink(p.ScalesAt, scales);
    }

    /// <summary>
    /// Rearranges <paramref name="rows"/> GGUF rows, rows r0.. of a matrix of <paramref name="totalRows"/>, straight into
    /// <paramref name="matrix"/>, the whole split matrix's bytes (quants and scales at their places in it).
    /// </summary>
    public static void WriteInto(GgmlType type, int totalRows, int cols, int r0, int rows, ReadOnlySpan<byte> gguf, Span<byte> matrix)
    {
        var p = Place(type, totalRows, cols, r0, rows, gguf);
        Rearrange(gguf, matrix.Slice((int)p.QuantsAt, p.QuantBytes), matrix.Slice((int)p.ScalesAt, p.ScaleBytes), p.Blocks, p.BlockBytes, p.ScaleAt);
    }

    /// <summary>Where rows r0.. of a split matrix go: their blocks, the quants' offset and bytes, the scales' offset and bytes.</summary>
    private readonly record struct RowsPlace(int Blocks, int BlockBytes, int ScaleAt, long QuantsAt, int QuantBytes, long ScalesAt, int ScaleBytes);

    private static RowsPlace Place(GgmlType type, int totalRows, int cols, int r0, int rows, ReadOnlySpan<byte> gguf)
    {
        var (bytes, scaleAt, elements) = Block(type);
        int main = bytes - 2;
        long blocksPerRow = cols / elements, blocks = rows * blocksPerRow;
        if (gguf.Length < blocks * bytes) throw new ArgumentException("fewer bytes than the rows hold", nameof(gguf));
        return new RowsPlace((int)blocks, bytes, scaleAt, r0 * blocksPerRow * main, (int)(blocks * main),
            totalRows * blocksPerRow * main + r0 * blocksPerRow * 2, (int)(blocks * 2));
    }

    /// <summary>
    /// Each block's 2-byte d into <paramref name="scales"/> and its other bytes into <paramref name="quants"/>. Q4_0's and
    /// Q8_0's 16 and 32 bytes move as one or two 16-byte vectors: two span copies a block ran at about 0.9 GB/s and held a
    /// layer read from the file each token to that speed (run 32: llama-7b Q4_0, 2.12 GiB a token, 0.68 tok/s).
    /// </summary>
    private static void Rearrange(ReadOnlySpan<byte> gguf, Span<byte> quants, Span<byte> scales, int blocks, int bytes, int scaleAt)
    {
        int main = bytes - 2;
        if (scaleAt != 0 || main % 16 != 0)
        {
            for (int b = 0; b < blocks; b++)
            {
                var block = gguf.Slice(b * bytes, bytes);
                block.Slice(scaleAt, 2).CopyTo(scales.Slice(2 * b, 2));
                (scaleAt == 0 ? block[2..] : block[..main]).CopyTo(quants.Slice(b * main, main));
            }
            return;
        }
        ref byte src = ref MemoryMarshal.GetReference(gguf);
        ref byte q = ref MemoryMarshal.GetReference(quants);
        ref byte d = ref MemoryMarshal.GetReference(scales);
        for (int b = 0; b < blocks; b++)
        {
            ref byte block = ref Unsafe.Add(ref src, (nint)b * bytes);
            Unsafe.WriteUnaligned(ref Unsafe.Add(ref d, 2 * b), Unsafe.ReadUnaligned<ushort>(ref block));
            for (int k = 0; k < main; k += 16)
                Unsafe.WriteUnaligned(ref Unsafe.Add(ref q, (nint)b * main + k), Unsafe.ReadUnaligned<Vector128<byte>>(ref Unsafe.Add(ref block, 2 + k)));
        }
    }

    /// <summary>A whole matrix of GGUF rows in the split layout (the kernel checks upload this).</summary>
    public static byte[] FromGguf(GgmlType type, int rows, int cols, ReadOnlySpan<byte> gguf)
    {
        var split = new byte[gguf.Length];
        Write(type, rows, cols, 0, rows, gguf, new byte[gguf.Length], (offset, part) => part.CopyTo(split.AsSpan((int)offset)));
        return split;
    }
}
