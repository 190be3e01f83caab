using System.Security.Cryptography;
using System.Text;
using FitLM.Storage;

namespace FitLM.Backends.Cuda;

/// <summary>
/// Compiled CUBINs on disk, so NVRTC runs once per kernel source, options, compiler version and GPU architecture
/// (compiling matvec.cu takes seconds; loading a CUBIN milliseconds). Each file is "FITLMCUBIN1", the SHA-256 of the
/// CUBIN, then the CUBIN; one that is unreadable, truncated or does not match its hash is compiled again and
/// replaced, never trusted. Files are written under a temporary name and renamed, so a concurrent reader never
/// sees half a file. The compile step is injected (tests run the cache without a GPU).
/// </summary>
internal sealed class KernelCache(string directory, Func<string, IReadOnlyList<string>, byte[]> compile)
{
    private static readonly byte[] Magic = "FITLMCUBIN1"u8.ToArray();

    public string Directory { get; } = directory;

    /// <summary>$XDG_CACHE_HOME/fitlm/cuda, else ~/.cache/fitlm/cuda.</summary>
    public static string DefaultDirectory()
    {
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string root = !string.IsNullOrEmpty(xdg) ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "fitlm", "cuda");
    }

    /// <summary>The file name: the architecture, then the SHA-256 of source, options, compiler version and architecture.</summary>
    public static string Key(string source, IReadOnlyList<string> options, string compilerVersion, string arch)
    {
        var text = new StringBuilder();
        foreach (string part in (IEnumerable<string>)[source, .. options, compilerVersion, arch])
            text.Append(part.Length).Append(':').Append(part).Append('\n'); // length-prefixed: no two lists collide
        return $"{arch}-{Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())))}.cubin";
    }

    /// <summary>The cached CUBIN for this key, or a fresh compile (logged to <paramref name="log"/>) stored for next time.</summary>
    public byte[] GetOrCompile(string source, IReadOnlyList<string> options, string compilerVersion, string arch, Action<string>? log = null)
    {
        string path = Path.Combine(Directory, Key(source, options, compilerVersion, arch));
        if (TryRead(path) is { } cached) return cached;
        log?.Invoke($"compiling CUDA kernels for {arch} (first use; cached in {Directory})");
        byte[] cubin = compile(source, options);
        TryWrite(path, cubin);
        return cubin;
    }

    private static byte[]? TryRead(string path)
    {
        try
        {
            if (!File.Exists(path)) return null;
            byte[] file = File.ReadAllBytes(path);
            int header = Magic.Length + SHA256.HashSizeInBytes;
            if (file.Length <= header || !file.AsSpan(0, Magic.Length).SequenceEqual(Magic)) return null;
            var body = file.AsSpan(header);
            return SHA256.HashData(body).AsSpan().SequenceEqual(file.AsSpan(Magic.Length, SHA256.HashSizeInBytes)) ? body.ToArray() : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// Best effort: a cache that cannot be written (read-only home) costs a compile per run, not the run. Written as
    /// every output is (<see cref="OutputFile.WriteAtomically"/>: a temp file beside it, then renamed).
    /// </summary>
    private static void TryWrite(string path, byte[] cubin)
    {
        try
        {
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            OutputFile.WriteAtomically(path, temp =>
            {
                using var f = new FileStream(temp, FileMode.CreateNew, FileAccess.Write);
                f.Write(Magic);
                f.Write(SHA256.HashData(cubin));
                f.Write(cubin);
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FitLMException) { }
    }
}
