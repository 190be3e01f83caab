using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Cli;

/// <summary>`--memory` as users type it: a size as before, auto, cgroup:PATH, and one-line errors for the rest.</summary>
public sealed class MemoryFlagTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-memory-flag-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private CliRunner.Result Plan(string memory)
    {
        var r = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--memory", memory, "--no-probe");
        output.WriteLine($"--memory {memory}: exit {r.ExitCode}\n{r.StdOut}{r.StdErr}");
        return r;
    }

    [Fact]
    public void A_limit_file_is_the_budget_plan_uses()
    {
        string file = Path.Combine(_dir, "memory.max");
        File.WriteAllText(file, "209715200\n");
        var r = Plan("cgroup:" + file);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("budget 200.0 MiB", r.StdOut);
    }

    [Fact]
    public void Auto_plans_within_what_the_machine_has()
    {
        var r = Plan("auto");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("budget ", r.StdOut);
    }

    [Theory]
    [InlineData("plenty", "is not a size (512MiB, 2GiB), auto, cgroup or cgroup:PATH")]
    [InlineData("cgroup:/no/such/memory.max", "cannot read the memory limit file /no/such/memory.max")]
    public void Bad_budgets_are_one_line_errors(string memory, string expected)
    {
        var r = Plan(memory);
        Assert.NotEqual(0, r.ExitCode);
        Assert.StartsWith("error: ", r.StdErr);
        Assert.Contains(expected, r.StdErr);
        Assert.Single(r.StdErr.Trim().Split('\n'));
    }

    [Fact]
    public void A_malformed_limit_file_is_named()
    {
        string file = Path.Combine(_dir, "memory.max");
        File.WriteAllText(file, "lots\n");
        var r = Plan("cgroup:" + file);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains($"error: {file} holds 'lots', not a memory limit", r.StdErr);
    }
}
