using System.Runtime.InteropServices;

namespace FitLM.Tensors.Jit;

/// <summary>
/// Pages holding generated machine code, W^X: mapped read-write, the code copied in, then flipped to
/// read-execute with mprotect, so the pages are never writable and executable at once. Linux x64 only (mmap,
/// mprotect, munmap from libc); elsewhere <see cref="TryCreate"/> returns null and callers keep the managed
/// kernels. Unmapped on dispose; the kernels' pages live as long as the process.
/// </summary>
internal sealed unsafe partial class ExecutableMemory : IDisposable
{
    private const int ProtRead = 1, ProtWrite = 2, ProtExec = 4;
    private const int MapPrivate = 0x02, MapAnonymous = 0x20;

    private byte* _pointer;

    /// <summary>The start of the code (page-aligned).</summary>
    public byte* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(nameof(ExecutableMemory));

    /// <summary>Bytes mapped (the code rounded up to whole pages).</summary>
    public nuint Size { get; }

    public static bool IsSupported => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;

    private ExecutableMemory(byte* pointer, nuint size)
    {
        _pointer = pointer;
        Size = size;
    }

    /// <summary>Executable pages with a copy of <paramref name="code"/>, or null where this OS or its policy does not allow them.</summary>
    public static ExecutableMemory? TryCreate(ReadOnlySpan<byte> code)
    {
        if (!IsSupported || code.IsEmpty) return null;
        nuint page = (nuint)Environment.SystemPageSize;
        nuint size = ((nuint)code.Length + page - 1) / page * page;
        nint p = mmap(0, size, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (p == -1 || p == 0) return null;
        code.CopyTo(new Span<byte>((void*)p, code.Length));
        if (mprotect(p, size, ProtRead | ProtExec) != 0)
        {
            _ = munmap(p, size);
            return null;
        }
        return new ExecutableMemory((byte*)p, size);
    }

    public void Dispose()
    {
        if (_pointer == null) return;
        _ = munmap((nint)_pointer, Size);
        _pointer = null;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mprotect(nint addr, nuint length, int prot);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);
}
