using System.Runtime.InteropServices;
using System.Text;

namespace FitLM.Memory;

/// <summary>
/// A PSI trigger on /proc/pressure/memory (Linux 5.2+): poll() wakes as soon as tasks have stalled on memory
/// for a while, so the watcher re-reads its budget at once instead of at its next tick. Where the kernel has no
/// PSI or refuses the trigger (an unprivileged process before Linux 6.4, or a window that is not a multiple of
/// 2 s), there is none and the watcher only polls.
/// </summary>
internal sealed partial class PressureTrigger : IDisposable
{
    /// <summary>
    /// 100 ms of "some" stall within 1 s (the brief's threshold), then the same ratio in the 2 s window the
    /// kernel lets an unprivileged process use.
    /// </summary>
    private static readonly string[] Thresholds = ["some 100000 1000000", "some 200000 2000000"];

    private const int O_RDWR = 2, O_NONBLOCK = 0x800, O_CLOEXEC = 0x80000;
    private const short POLLPRI = 0x2, POLLERR = 0x8, POLLNVAL = 0x20;

    private int _fd;

    private PressureTrigger(int fd, string threshold)
    {
        _fd = fd;
        Threshold = threshold;
    }

    /// <summary>The trigger the kernel accepted ("some STALL_US WINDOW_US").</summary>
    public string Threshold { get; }

    /// <summary>False once the kernel reported the trigger gone (POLLERR): the caller then only polls.</summary>
    public bool Alive => _fd >= 0;

    public static PressureTrigger? TryOpen(string path = "/proc/pressure/memory")
    {
        if (!OperatingSystem.IsLinux() || !File.Exists(path)) return null;
        foreach (var threshold in Thresholds)
        {
            int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
            if (fd < 0) return null;
            // The kernel reads the trigger as a NUL-terminated string (Documentation/accounting/psi.rst).
            byte[] text = Encoding.ASCII.GetBytes(threshold + "\0");
            if (write(fd, text, text.Length) > 0) return new PressureTrigger(fd, threshold);
            _ = close(fd);
        }
        return null;
    }

    /// <summary>Waits up to <paramref name="timeoutMs"/>; true when memory pressure crossed the threshold.</summary>
    public bool Wait(int timeoutMs)
    {
        if (_fd < 0) { Thread.Sleep(timeoutMs); return false; }
        var p = new PollFd { Fd = _fd, Events = POLLPRI };
        int n = poll(ref p, 1, timeoutMs);
        if (n <= 0) return false;   // timeout, or EINTR: the next tick reads anyway
        if ((p.Revents & (POLLERR | POLLNVAL)) != 0) { Dispose(); return false; }
        return (p.Revents & POLLPRI) != 0;
    }

    public void Dispose()
    {
        if (_fd >= 0) _ = close(_fd);
        _fd = -1;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint write(int fd, byte[] buffer, nint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int poll(ref PollFd fds, nuint count, int timeoutMs);

    [LibraryImport("libc")]
    private static partial int close(int fd);
}
