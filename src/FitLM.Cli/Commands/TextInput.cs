namespace FitLM.Cli.Commands;

/// <summary>Text a command reads from a file given with -f, where "-" is standard input (as llama.cpp's tools take it).</summary>
internal static class TextInput
{
    public const string StdinName = "-";

    /// <summary>The whole text of <paramref name="path"/>, or of stdin for "-"; <paramref name="what"/> names it in errors ("prompt file").</summary>
    public static string Read(string path, string what)
    {
        if (path == StdinName) return Console.In.ReadToEnd();
        if (Directory.Exists(path)) throw new FitLMException($"{path}: is a directory, not a {what}");
        if (!File.Exists(path)) throw new FitLMException($"{path}: {what} not found");
        return File.ReadAllText(path);
    }
}
