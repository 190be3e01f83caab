using FitLM.Storage;
using Xunit;

namespace FitLM.Tests.Storage;

/// <summary>OutputFile: an output never replaces an input, under any of its names; an output appears whole or not at all.</summary>
public sealed class OutputFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-output-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private string Write(string name, string text = "input")
    {
        string path = Path.Combine(_dir, name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void TheSameFileUnderAnyPathIsRefused()
    {
        string input = Write("model.gguf");
        var e = Assert.Throws<FitLMException>(() => OutputFile.EnsureNotInput(input, input));
        Assert.Equal($"{input}: the output would replace the input {input}; choose another -o", e.Message);
        // A relative spelling, a detour through the folder, a symlink and a hard link name the same file.
        string detour = Path.Combine(_dir, "sub", "..", "model.gguf");
        Directory.CreateDirectory(Path.Combine(_dir, "sub"));
        Assert.Throws<FitLMException>(() => OutputFile.EnsureNotInput(detour, input));
        string link = Path.Combine(_dir, "link.gguf");
        File.CreateSymbolicLink(link, input);
        Assert.Throws<FitLMException>(() => OutputFile.EnsureNotInput(link, input));
        Assert.Throws<FitLMException>(() => OutputFile.EnsureNotInput(input, link));
        if (!OperatingSystem.IsWindows())
        {
            string hard = Path.Combine(_dir, "hard.gguf");
            if (Link(input, hard) == 0) Assert.Throws<FitLMException>(() => OutputFile.EnsureNotInput(hard, input));
        }
    }

    [Fact]
    public void AFileOfAnInputFolderIsRefusedANewFileBesideItIsNot()
    {
        string shard = Write("hf/model.safetensors");
        string folder = Path.GetDirectoryName(shard)!;
        Assert.Throws<FitLMException>(() => OutputFile.EnsureNotInput(shard, folder));
        Assert.Throws<FitLMException>(() => OutputFile.EnsureNotInput(folder, folder));
        OutputFile.EnsureNotInput(Path.Combine(folder, "model.gguf"), folder); // replaces nothing: llama.cpp's converter writes there too
        OutputFile.EnsureNotInput(Path.Combine(_dir, "other.gguf"), shard, folder, "", null!);
    }

    [Fact]
    public void WriteAtomicallyReplacesTheFileAndLeavesNoTemp()
    {
        string path = Write("out.txt", "old");
        string? temp = null;
        OutputFile.WriteAtomically(path, t => { temp = t; File.WriteAllText(t, "new"); });
        Assert.Equal("new", File.ReadAllText(path));
        Assert.Equal(_dir, Path.GetDirectoryName(temp));
        Assert.StartsWith(".", Path.GetFileName(temp)); // hidden while written
        Assert.Equal(["out.txt"], Directory.GetFiles(_dir).Select(Path.GetFileName));
    }

    [Fact]
    public void AFailedOrCancelledWriteLeavesTheOldFileAndNoTemp()
    {
        string path = Write("out.txt", "old");
        Assert.Throws<IOException>(() => OutputFile.WriteAtomically(path, t => { File.WriteAllText(t, "half"); throw new IOException("disk full"); }));
        Assert.Throws<OperationCanceledException>(() => OutputFile.WriteAtomically(path, t => { File.WriteAllText(t, "half"); throw new OperationCanceledException(); }));
        Assert.Equal("old", File.ReadAllText(path));
        Assert.Equal(["out.txt"], Directory.GetFiles(_dir).Select(Path.GetFileName));
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "link", SetLastError = true)]
    private static extern int Link(string existing, string created);
}
