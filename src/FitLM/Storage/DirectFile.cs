using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace FitLM.Storage;

/// <summary>
/// A file read with direct I/O (O_DIRECT on Linux): reads go from the device into our buffers without
/// passing through the page cache, so streamed weights cost no hidden memory and each read's speed is the
/// storage's own. Direct reads need page-aligned offsets, lengths and buffers (<see cref="Alignment"/>).
/// Where the file system refuses O_DIRECT (tmpfs, some overlays) the file is opened normally and the pages
/// read are dropped from the cache afterwards (posix_fadvise DONTNEED), which keeps the memory promise.
/// </summary>
public sealed partial class DirectFile : IDisposable
{
    public const int Alignment = 4096;

    public string Path { get; }
    public SafeFileHandle Handle { get; }
    public bool IsDirect { get; }
    public long Length { get; }

    private DirectFile(string path, SafeFileHandle handle, bool direct)
    {
        Path = path;
        Handle = handle;
        IsDirect = direct;
        Length = RandomAccess.GetLength(handle);
    }

    public static DirectFile Open(string path, bool direct = true)
    {
        if (direct && OperatingSystem.IsLinux())
        {
            int flags = O_RDONLY | O_CLOEXEC | ODirectFlag();
            int fd = open(path, flags);
            if (fd >= 0) return new DirectFile(path, new SafeFileHandle(fd, ownsHandle: true), true);
        }
        try
        {
            return new DirectFile(path, File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read), false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FitLMException($"{path}: cannot open for streaming: {e.Message}", e);
        }
    }

    /// <summary>
    /// Reads [offset, offset + buffer.Length) into <paramref name="buffer"/>. For direct files the offset, the
    /// length and the buffer address must be multiples of <see cref="Alignment"/>; a read that reaches the end
    /// of the file may return fewer bytes. Returns the bytes read.
    /// </summary>
    public unsafe int Read(long offset, Span<byte> buffer)
    {
        if (IsDirect)
        {
            fixed (byte* p = buffer)
            {
                if (offset % Alignment != 0 || buffer.Length % Alignment != 0 || (nint)p % Alignment != 0)
                    throw new ArgumentException($"direct read of {buffer.Length} bytes at {offset} is not {Alignment}-aligned");
            }
        }
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(Handle, buffer[done..], offset + done);
            if (n <= 0) break;
            done += n;
        }
        if (!IsDirect && done > 0 && OperatingSystem.IsLinux())
            _ = posix_fadvise(Handle.DangerousGetHandle().ToInt32(), offset, done, POSIX_FADV_DONTNEED);
        return done;
    }

    /// <summary>The aligned range that covers [offset, offset + length).</summary>
    public static (long Start, long Length) AlignedRange(long offset, long length)
    {
        long start = offset / Alignment * Alignment;
        long end = (offset + length + Alignment - 1) / Alignment * Alignment;
        return (start, end - start);
    }

    public void Dispose() => Handle.Dispose();

    private const int O_RDONLY = 0;
    private const int O_CLOEXEC = 0x80000;
    private const int POSIX_FADV_DONTNEED = 4;

    private static int ODirectFlag() => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.Arm64 or Architecture.Arm => 0x10000,
        _ => 0x4000,
    };

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int fd, long offset, long len, int advice);
}
