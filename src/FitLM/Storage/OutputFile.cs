using System.Runtime.InteropServices;

namespace FitLM.Storage;

/// <summary>
/// The two rules every command that writes a file follows: an output never replaces one of its inputs
/// (<c>prepare -m x.gguf -o x.gguf</c> used to truncate the model it was reading), and an output appears whole
/// or not at all (a temp file beside it, fsynced, then renamed), so a crash or Ctrl-C never leaves half a model
/// under the name a user will load next.
/// </summary>
public static partial class OutputFile
{
    /// <summary>
    /// Throws <see cref="FitLMException"/> "OUT: the output would replace the input IN; choose another -o" when
    /// <paramref name="output"/> resolves (full path, symlinks resolved, same inode where both exist) to one of
    /// <paramref name="inputs"/>, or is one of the files inside an input folder. A new file written into an input
    /// folder (llama.cpp's converter writes its GGUF beside the shards) is allowed: it replaces nothing.
    /// Null or empty inputs are ignored, so optional inputs can be passed as they are.
    /// </summary>
    public static void EnsureNotInput(string output, params string[] inputs)
    {
        ArgumentException.ThrowIfNullOrEmpty(output);
        string resolvedOutput = Resolve(output);
        FileIdentity? outputIdentity = FileIdentity.Of(resolvedOutput);
        foreach (string input in inputs)
        {
            if (string.IsNullOrEmpty(input)) continue;
            string resolvedInput = Resolve(input);
            if (Replaces(resolvedOutput, outputIdentity, resolvedInput))
                throw new FitLMException($"{output}: the output would replace the input {input}; choose another -o");
        }
    }

    /// <summary>
    /// Writes <paramref name="path"/> through a temp file beside it (same folder, so the rename stays on one
    /// file system; a hidden name, so a folder listing never shows it): <paramref name="writeTempFile"/> writes
    /// the temp path, which is then fsynced and renamed over <paramref name="path"/>. On any failure,
    /// cancellation included, the temp file is deleted and <paramref name="path"/> is left as it was.
    /// </summary>
    public static void WriteAtomically(string path, Action<string> writeTempFile)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(writeTempFile);
        string full = Path.GetFullPath(path);
        string folder = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(folder))
            throw new FitLMException($"{path}: the folder {folder} does not exist; create it or choose another -o");
        string temp = TempPathBeside(full);
        try
        {
            writeTempFile(temp);
            if (!File.Exists(temp))
                throw new InvalidOperationException($"the writer did not create {temp}");
            FlushToDisk(temp);
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    /// <summary>A hidden name beside <paramref name="fullPath"/>, unique per process and call.</summary>
    internal static string TempPathBeside(string fullPath)
    {
        string folder = Path.GetDirectoryName(fullPath)!;
        string name = Path.GetFileName(fullPath);
        return Path.Combine(folder, $".{name}.{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}.tmp");
    }

    private static bool Replaces(string output, FileIdentity? outputIdentity, string input)
    {
        if (PathsEqual(output, input)) return true;
        if (Directory.Exists(input))
        {
            // An input folder: the output replaces one of its files when it is one of them.
            string folder = Path.TrimEndingDirectorySeparator(input) + Path.DirectorySeparatorChar;
            if (output.StartsWith(folder, PathComparison) && File.Exists(output)) return true;
            if (outputIdentity is { } id && InputFolderHolds(input, id)) return true;
            return false;
        }
        return outputIdentity is { } o && FileIdentity.Of(input) is { } i && o == i;
    }

    /// <summary>Whether a file of the folder (top level: the files a model folder is read from) is the output under another name (a hard link).</summary>
    private static bool InputFolderHolds(string folder, FileIdentity output)
    {
        try
        {
            foreach (string file in Directory.EnumerateFiles(folder))
                if (FileIdentity.Of(Resolve(file)) == output) return true;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return false;
    }

    /// <summary>
    /// The full path with every symlink resolved: the final target of an existing path, or, for a file that does
    /// not exist yet, its resolved folder joined with its name.
    /// </summary>
    internal static string Resolve(string path)
    {
        string full = Path.GetFullPath(path);
        string trimmed = Path.TrimEndingDirectorySeparator(full);
        string? parent = Path.GetDirectoryName(trimmed);
        if (parent is null) return trimmed;                       // the root
        string resolved = Path.Combine(Resolve(parent), Path.GetFileName(trimmed));
        try
        {
            FileSystemInfo info = Directory.Exists(resolved) ? new DirectoryInfo(resolved) : new FileInfo(resolved);
            if (info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is { } target)
                return Resolve(target.FullName);
        }
        catch (IOException) { }                                    // a link loop: compare the path as it is
        return resolved;
    }

    private static StringComparison PathComparison =>
        OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

    private static bool PathsEqual(string a, string b) =>
        string.Equals(Path.TrimEndingDirectorySeparator(a), Path.TrimEndingDirectorySeparator(b), PathComparison);

    private static void FlushToDisk(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        stream.Flush(flushToDisk: true);
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>The device and inode of a file, so two names of one file (hard links, bind mounts) compare equal.</summary>
    private readonly record struct FileIdentity(ulong Device, ulong Inode)
    {
        public static FileIdentity? Of(string path)
        {
            if (OperatingSystem.IsWindows() || !File.Exists(path)) return null;
            // struct stat is 144 bytes on linux-x64, 128 on linux-arm64 and 144 on macOS; st_dev is first and
            // st_ino at offset 8 on all three (macOS's st_dev is 32 bits).
            Span<byte> buffer = stackalloc byte[256];
            try
            {
                if (stat(path, buffer) != 0) return null;
            }
            catch (EntryPointNotFoundException) { return null; }  // glibc before 2.33 exports only __xstat
            ulong device = OperatingSystem.IsMacOS() ? BitConverter.ToUInt32(buffer) : BitConverter.ToUInt64(buffer);
            return new FileIdentity(device, BitConverter.ToUInt64(buffer[8..]));
        }
    }

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int stat(string path, Span<byte> buffer);
}
