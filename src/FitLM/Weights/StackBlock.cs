using FitLM.Model;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using FitLM.Storage;
using FitLM.Runtime;

namespace FitLM.Weights;

/// <summary>
/// One BitStack residual block of a weight matrix W [Rows × Cols]: B = sign ⊙ (U Vᵀ), where sign is the
/// sign matrix of the residual it approximates (1 bit per weight, bit-packed row by row, least significant
/// bit first, a set bit meaning −1) and U [Rows × Rank], V [Cols × Rank] are fp16 factors of a rank-Rank
/// approximation of the residual's magnitudes. Sum the blocks of a matrix to get its approximation.
/// <para>
/// The three parts live in one native buffer, at the offsets they have in the file (so a block is read
/// from a stacked GGUF with one read). Freeing the block frees the buffer.
/// </para>
/// </summary>
public sealed unsafe class StackBlock : IDisposable
{
    private NativeBuffer? _buffer;
    private readonly long _signOffset, _uOffset, _vOffset;

    public int Rows { get; }
    public int Cols { get; }
    public int Rank { get; }

    /// <summary>Bytes of sign bits, U and V: what the block costs in a file or a budget (no padding).</summary>
    public long Bytes => BytesOf(Rows, Cols, Rank);
    /// <summary>Bytes the block holds in memory (its buffer, which may include the file's alignment padding).</summary>
    public long BufferBytes => _buffer?.Length ?? 0;

    public static long SignBytes(int rows, int cols) => (long)rows * cols / 8;
    public static long FactorBytes(int n, int rank) => 2L * n * rank;
    public static long BytesOf(int rows, int cols, int rank) => SignBytes(rows, cols) + FactorBytes(rows, rank) + FactorBytes(cols, rank);

    /// <summary>Wraps a buffer holding the sign bits, U and V at the given offsets; the block owns it from now on.</summary>
    public StackBlock(NativeBuffer buffer, long signOffset, long uOffset, long vOffset, int rows, int cols, int rank)
    {
        if (rows <= 0 || cols <= 0 || cols % 8 != 0 || rank <= 0) throw new ArgumentException($"bad block shape {rows}×{cols} rank {rank}");
        if (signOffset < 0 || signOffset + SignBytes(rows, cols) > buffer.Length ||
            uOffset < 0 || uOffset + FactorBytes(rows, rank) > buffer.Length ||
            vOffset < 0 || vOffset + FactorBytes(cols, rank) > buffer.Length)
            throw new ArgumentException("block parts lie outside the buffer");
        _buffer = buffer;
        _signOffset = signOffset;
        _uOffset = uOffset;
        _vOffset = vOffset;
        Rows = rows;
        Cols = cols;
        Rank = rank;
    }

    /// <summary>A block from packed signs and fp16 factors (U row-major [rows × rank], V row-major [cols × rank]).</summary>
    public static StackBlock Create(ReadOnlySpan<byte> signs, ReadOnlySpan<Half> u, ReadOnlySpan<Half> v, int rows, int cols, int rank)
    {
        long sb = SignBytes(rows, cols), ub = FactorBytes(rows, rank), vb = FactorBytes(cols, rank);
        if (signs.Length != sb || u.Length != (long)rows * rank || v.Length != (long)cols * rank) throw new ArgumentException("block part sizes do not match the shape");
        var buf = new NativeBuffer(sb + ub + vb);
        signs.CopyTo(new Span<byte>(buf.Pointer, (int)sb));
        MemoryMarshal.AsBytes(u).CopyTo(new Span<byte>(buf.Pointer + sb, (int)ub));
        MemoryMarshal.AsBytes(v).CopyTo(new Span<byte>(buf.Pointer + sb + ub, (int)vb));
        return new StackBlock(buf, 0, sb, sb + ub, rows, cols, rank);
    }

    private NativeBuffer Buffer => _buffer ?? throw new ObjectDisposedException(nameof(StackBlock));
    public ReadOnlySpan<byte> Signs => new(Buffer.Pointer + _signOffset, (int)SignBytes(Rows, Cols));
    public ReadOnlySpan<Half> U => new(Buffer.Pointer + _uOffset, Rows * Rank);
    public ReadOnlySpan<Half> V => new(Buffer.Pointer + _vOffset, Cols * Rank);

    /// <summary>Vᵀ as floats, [Rank × Cols]: the layout the row kernels read.</summary>
    public void TransposedV(Span<float> vt)
    {
        var v = V;
        for (int c = 0; c < Cols; c++)
            for (int k = 0; k < Rank; k++)
                vt[k * Cols + c] = (float)v[c * Rank + k];
    }

    /// <summary>
    /// dst[r - r0, :] += B[r, :] for rows r0 .. r1 − 1 (negated when <paramref name="negate"/>).
    /// <paramref name="vt"/> is <see cref="TransposedV"/>; <paramref name="scratch"/> holds Cols floats.
    /// Every caller gets the same float result for the same block: the sum over the rank runs in a fixed order.
    /// </summary>
    public void AddRows(Span<float> dst, int r0, int r1, ReadOnlySpan<float> vt, Span<float> scratch, bool negate = false)
    {
        int cols = Cols, rank = Rank;
        var u = U;
        var signs = Signs;
        var acc = scratch[..cols];
        uint flip = negate ? 0x80000000u : 0u;
        for (int r = r0; r < r1; r++)
        {
            acc.Clear();
            for (int k = 0; k < rank; k++)
                TensorPrimitives.MultiplyAdd(vt.Slice(k * cols, cols), (float)u[r * rank + k], acc, acc);
            ApplySignsAdd(acc, signs.Slice(r * (cols / 8), cols / 8), dst.Slice((r - r0) * cols, cols), flip);
        }
    }

    /// <summary>dst[c] += (bit c of signs set ? −1 : 1) · acc[c], with every sign flipped by <paramref name="flip"/> = 0x80000000.</summary>
    internal static void ApplySignsAdd(ReadOnlySpan<float> acc, ReadOnlySpan<byte> signs, Span<float> dst, uint flip)
    {
        int cols = acc.Length;
        if (Vector256.IsHardwareAccelerated)
        {
            var masks = SignMasks;
            var f = Vector256.Create(flip);
            ref float a0 = ref MemoryMarshal.GetReference(acc);
            ref float d0 = ref MemoryMarshal.GetReference(dst);
            for (int c = 0; c < cols; c += 8)
            {
                var m = masks[signs[c >> 3]] ^ f;
                var a = Vector256.LoadUnsafe(ref a0, (nuint)c).AsUInt32() ^ m;
                var d = Vector256.LoadUnsafe(ref d0, (nuint)c) + a.AsSingle();
                d.StoreUnsafe(ref d0, (nuint)c);
            }
            return;
        }
        for (int c = 0; c < cols; c++)
        {
            float a = acc[c];
            bool neg = ((signs[c >> 3] >> (c & 7)) & 1) != 0;
            if (flip != 0) neg = !neg;
            dst[c] += neg ? -a : a;
        }
    }

    /// <summary>For each sign byte, eight lanes holding 0x80000000 where the byte's bit is set.</summary>
    internal static readonly Vector256<uint>[] SignMasks = BuildMasks();

    private static Vector256<uint>[] BuildMasks()
    {
        var m = new Vector256<uint>[256];
        Span<uint> lanes = stackalloc uint[8];
        for (int b = 0; b < 256; b++)
        {
            for (int i = 0; i < 8; i++) lanes[i] = ((b >> i) & 1) != 0 ? 0x80000000u : 0u;
            m[b] = Vector256.Create<uint>(lanes);
        }
        return m;
    }

    /// <summary>
    /// y[r] += Σ_c B[r, c] · x[c] without materializing B: for each rank component k, z = V[:, k] ⊙ x, then each
    /// row takes the signed sum of z under its sign bits and weights it by U[r, k]. <paramref name="zt"/> holds
    /// Rank × Cols floats of scratch.
    /// </summary>
    public void MultiplyAdd(ReadOnlySpan<float> vt, ReadOnlySpan<float> x, Span<float> y, int r0, int r1, Span<float> zt)
    {
        int cols = Cols, rank = Rank;
        for (int k = 0; k < rank; k++)
            TensorPrimitives.Multiply(vt.Slice(k * cols, cols), x[..cols], zt.Slice(k * cols, cols));
        var u = U;
        var signs = Signs;
        Span<float> t = stackalloc float[rank];
        for (int r = r0; r < r1; r++)
        {
            SignedSums(zt, signs.Slice(r * (cols / 8), cols / 8), cols, rank, t);
            float sum = 0;
            for (int k = 0; k < rank; k++) sum += (float)u[r * rank + k] * t[k];
            y[r - r0] += sum;
        }
    }

    /// <summary>t[k] = Σ_c (±1 by the sign bits) · zt[k, c].</summary>
    private static void SignedSums(ReadOnlySpan<float> zt, ReadOnlySpan<byte> signs, int cols, int rank, Span<float> t)
    {
        if (Vector256.IsHardwareAccelerated && rank <= 32)
        {
            var masks = SignMasks;
            Span<Vector256<float>> acc = stackalloc Vector256<float>[rank];
            acc.Clear();
            ref float z0 = ref MemoryMarshal.GetReference(zt);
            for (int c = 0; c < cols; c += 8)
            {
                var m = masks[signs[c >> 3]];
                for (int k = 0; k < rank; k++)
                    acc[k] += (Vector256.LoadUnsafe(ref z0, (nuint)(k * cols + c)).AsUInt32() ^ m).AsSingle();
            }
            for (int k = 0; k < rank; k++) t[k] = Vector256.Sum(acc[k]);
            return;
        }
        for (int k = 0; k < rank; k++)
        {
            float s = 0;
            for (int c = 0; c < cols; c++)
            {
                float z = zt[k * cols + c];
                s += ((signs[c >> 3] >> (c & 7)) & 1) != 0 ? -z : z;
            }
            t[k] = s;
        }
    }

    public void Dispose()
    {
        _buffer?.Dispose();
        _buffer = null;
    }
}
