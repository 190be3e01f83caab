using System.Runtime.InteropServices;

namespace FitLM.Runtime;

/// <summary>
/// A 64-byte aligned block of unmanaged memory for weights and caches. Unmanaged, so the GC never copies
/// or scans it and freeing it returns the memory at once; every live byte is counted in <see cref="LiveBytes"/>.
/// </summary>
public sealed unsafe class NativeBuffer : IDisposable
{
    private static long s_live;
    /// <summary>Bytes currently held by all native buffers of the process.</summary>
    public static long LiveBytes => Interlocked.Read(ref s_live);

    public byte* Pointer { get; private set; }
    public long Length { get; }

    /// <param name="alignment">64 for vector loads; 4096 for direct I/O, which needs page-aligned buffers.</param>
    public NativeBuffer(long length, int alignment = 64)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        Length = length;
        Pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(length, 1), (nuint)alignment);
        Interlocked.Add(ref s_live, length);
    }

    public Span<byte> Span => Length <= int.MaxValue ? new Span<byte>(Pointer, (int)Length) : throw new InvalidOperationException("buffer exceeds 2 GiB; use Slice");

    public Span<byte> Slice(long offset, int length)
    {
        if (offset < 0 || length < 0 || offset + length > Length) throw new ArgumentOutOfRangeException(nameof(offset));
        return new Span<byte>(Pointer + offset, length);
    }

    public void Dispose()
    {
        if (Pointer == null) return;
        NativeMemory.AlignedFree(Pointer);
        Pointer = null;
        Interlocked.Add(ref s_live, -Length);
        GC.SuppressFinalize(this);
    }

    ~NativeBuffer() => Dispose();
}
