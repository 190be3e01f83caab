using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Layout;

/// <summary>
/// The library's folders are layers: no two folders use each other, directly or through a third. Read from the
/// sources (which top-level types each folder declares, which other folders' types each file names), so a new
/// dependency that closes a cycle fails here with the files that make it.
/// </summary>
public sealed partial class FolderLayeringTests(ITestOutputHelper output)
{
    // The exceptions are the base every layer throws; the root's other types (LanguageModel) are the top layer.
    private static readonly HashSet<string> Everywhere = ["FitLMException", "BudgetTooSmallException"];

    [GeneratedRegex(@"^(?:public |internal |file )?(?:(?:sealed|static|abstract|readonly|unsafe|partial|ref) )*(?:class|struct|interface|enum|record(?: struct| class)?) ([A-Z]\w*)", RegexOptions.Multiline)]
    private static partial Regex TopLevelType();

    [GeneratedRegex(@"//[^\n]*|/\*.*?\*/|@""(?:[^""]|"""")*""|""(?:\\.|[^""\\\n])*""", RegexOptions.Singleline)]
    private static partial Regex CommentsAndStrings();

    [GeneratedRegex(@"\b[A-Z]\w*")]
    private static partial Regex Identifier();

    [Fact]
    public void NoFolderOfTheLibraryDependsOnItselfThroughOthers()
    {
        string root = Path.Combine(TestPaths.RepoRoot, "src", "FitLM");
        var files = Directory.EnumerateFiles(root, "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"))
            .Select(f => (Folder: FolderOf(root, f), Name: Path.GetFileName(f), Text: CommentsAndStrings().Replace(File.ReadAllText(f), " ")))
            .Select(f => (f.Folder, f.Name, f.Text, Names: Identifier().Matches(f.Text).Select(m => m.Value).ToHashSet()))
            .ToList();
        Assert.True(files.Count > 50, $"found only {files.Count} sources under {root}");

        // Type name -> the one folder declaring it (names declared in two folders are ambiguous and skipped).
        var declaredIn = new Dictionary<string, string?>();
        foreach (var (folder, _, text, _) in files)
            foreach (Match m in TopLevelType().Matches(text))
                declaredIn[m.Groups[1].Value] = declaredIn.TryGetValue(m.Groups[1].Value, out var f) && f != folder ? null : folder;

        var edges = new Dictionary<string, Dictionary<string, List<string>>>();
        foreach (var (folder, name, text, names) in files)
            foreach (var (type, target) in declaredIn)
            {
                if (target == null || target == folder || Everywhere.Contains(type) || !names.Contains(type)) continue;
                // C# sees another folder's types only through a using, a qualified name, or from the root namespace.
                if (target != "(root)" && !Regex.IsMatch(text, $@"using FitLM\.{target}\b|\b{target}\.{type}\b")) continue;
                var to = edges.TryGetValue(folder, out var t) ? t : edges[folder] = [];
                (to.TryGetValue(target, out var why) ? why : to[target] = []).Add($"{name}:{type}");
            }
        foreach (var (from, to) in edges.OrderBy(e => e.Key))
            output.WriteLine($"{from} -> {string.Join(", ", to.Keys.Order())}");

        var cycle = FindCycle(edges);
        Assert.True(cycle == null, cycle == null ? "" :
            "folders that use each other: " + string.Join(" -> ", cycle) + "; because " +
            string.Join("; ", cycle.Zip(cycle.Skip(1)).Select(p => $"{p.First} uses {string.Join(", ", edges[p.First][p.Second].Take(4))}")));
    }

    private static string FolderOf(string root, string file)
    {
        string rel = Path.GetRelativePath(root, file);
        int slash = rel.IndexOf(Path.DirectorySeparatorChar);
        return slash < 0 ? "(root)" : rel[..slash];
    }

    /// <summary>A path a → … → a through the folder graph, or null when it has no cycle.</summary>
    private static List<string>? FindCycle(Dictionary<string, Dictionary<string, List<string>>> edges)
    {
        var state = new Dictionary<string, int>(); // 1: on the current path, 2: done
        var path = new List<string>();
        List<string>? Visit(string n)
        {
            state[n] = 1;
            path.Add(n);
            foreach (var m in edges.TryGetValue(n, out var to) ? to.Keys.Order() : Enumerable.Empty<string>())
            {
                if (state.GetValueOrDefault(m) == 1) return [.. path.SkipWhile(p => p != m), m];
                if (state.GetValueOrDefault(m) == 0 && Visit(m) is { } c) return c;
            }
            path.RemoveAt(path.Count - 1);
            state[n] = 2;
            return null;
        }
        foreach (var n in edges.Keys.Order())
            if (state.GetValueOrDefault(n) == 0 && Visit(n) is { } c) return c;
        return null;
    }
}
