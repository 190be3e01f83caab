namespace FitLM.Tests;

/// <summary>Where the repository and ../shared (reference models, data, tokenizer suites) are.</summary>
public static class TestPaths
{
    public static string RepoRoot { get; } = FindRoot();

    /// <summary>../shared beside the checkout, or null when it is absent (tests then say so and return).</summary>
    public static string? Shared
    {
        get
        {
            var p = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));
            return Directory.Exists(p) ? p : null;
        }
    }

    public static string DemoModel => Path.Combine(RepoRoot, "models", "pycoder-29m-q4_k_m.gguf");

    private static string SourceFile([System.Runtime.CompilerServices.CallerFilePath] string path = "") => path;

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "FitLM.slnx"))) return d.FullName;
        // Artifacts built outside the tree (FITLM_ARTIFACTS): fall back to where this source file was compiled.
        for (var d = new DirectoryInfo(Path.GetDirectoryName(SourceFile())!); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "FitLM.slnx"))) return d.FullName;
        throw new InvalidOperationException("cannot find the repository root (FitLM.slnx)");
    }
}
