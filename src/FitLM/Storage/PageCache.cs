using System.Runtime.InteropServices;
using FitLM.Model;

namespace FitLM.Storage;

/// <summary>
/// Resident weights are read once through the page cache at load; when the rest of a model is streamed,
/// those cached pages are dropped so the model file does not quietly occupy the memory the budget denies it.
/// </summary>
public static partial class PageCache
{
    public static void Drop(IModelSource source)
    {
        if (!OperatingSystem.IsLinux()) return;
        foreach (var file in source.Tensors.Select(t => source.Locate(t).File).Distinct())
        {
            try
            {
                using var h = File.OpenHandle(file, FileMode.Open, FileAccess.Read, FileShare.Read);
                _ = posix_fadvise(h.DangerousGetHandle().ToInt32(), 0, 0, 4 /* POSIX_FADV_DONTNEED */);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int fd, long offset, long len, int advice);
}
