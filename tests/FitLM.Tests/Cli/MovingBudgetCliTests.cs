using System.Collections.Concurrent;
using System.Diagnostics;
using Xunit;

namespace FitLM.Tests.Cli;

/// <summary>
/// `fitlm run --memory cgroup:FILE --verbose` while the test rewrites FILE (a file in cgroup memory.max format; the
/// machine's cgroups are never touched): the run adapts between tokens, says so in one line per change, and finishes.
/// </summary>
public class MovingBudgetCliTests
{
    private static void WriteLimit(string path, long bytes)
    {
        File.WriteAllText(path + ".tmp", $"{bytes}\n");
        File.Move(path + ".tmp", path, overwrite: true);
    }

    private static string WaitForLine(ConcurrentQueue<string> lines, string text)
    {
        // No timing assertion: the line is what is tested, the minute only bounds a hang.
        var deadline = DateTime.UtcNow.AddMinutes(1);
        while (DateTime.UtcNow < deadline)
        {
            if (lines.FirstOrDefault(l => l.Contains(text, StringComparison.Ordinal)) is { } line) return line;
            Thread.Sleep(20);
        }
        throw new Xunit.Sdk.XunitException($"no stderr line with '{text}': {string.Join(" | ", lines)}");
    }

    [Fact]
    public void RunFollowsALimitFileDownAndBackAndFinishes()
    {
        string dir = Path.Combine(Path.GetTempPath(), "fitlm-moving-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            string limit = Path.Combine(dir, "memory.max");
            WriteLimit(limit, 1L << 30);
            const int Tokens = 1500;
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "fitlm.dll"));
            foreach (var a in new[] { "run", "-m", TestPaths.DemoModel, "--memory", "cgroup:" + limit, "--verbose", "--ids", "--ignore-eos",
                "-n", $"{Tokens}", "-c", "2048", "--temp", "0", "--kv", "f16", "-t", "2", "-p", "def quicksort(items):" })
                psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var err = new ConcurrentQueue<string>();
            p.ErrorDataReceived += (_, e) => { if (e.Data != null) err.Enqueue(e.Data); };
            p.BeginErrorReadLine();
            int tokens = 0, state = 0;
            string down = "", up = "";
            int c;
            while ((c = p.StandardOutput.Read()) >= 0)
            {
                if (c != ' ') continue;
                tokens++;
                if (state == 0 && tokens == 20)
                {
                    // Below the smallest plan: every lever to its minimum, the run goes on there.
                    WriteLimit(limit, 60L << 20);
                    down = WaitForLine(err, "budget 1.00 GiB -> 60.0 MiB");
                    WriteLimit(limit, 1L << 30);
                    up = WaitForLine(err, "budget 60.0 MiB -> 1.00 GiB");
                    state = 1;
                }
            }
            Assert.True(p.WaitForExit(TimeSpan.FromMinutes(3)));
            p.WaitForExit(); // the stderr reader has delivered every line
            string log = string.Join("\n", err);
            // Every check names what it looked for and shows the whole stderr: a failure says what happened.
            void Check(bool ok, string what) => Assert.True(ok, $"{what}; {tokens + 1} tokens, exit {p.ExitCode}; stderr:\n{log}");
            Check(p.ExitCode == 0, "exit code 0");
            Check(tokens + 1 == Tokens, $"{Tokens} ids"); // space-separated: the last one has no space after it
            Check(log.Contains("memory: following cgroup:", StringComparison.Ordinal), "the watcher's line");
            Check(down.Contains("kv f16 -> kivi4", StringComparison.Ordinal), "the KV type stepped down");
            Check(down.Contains("-> 0 of 8 layers", StringComparison.Ordinal), "every layer streamed");
            Check(down.Contains("below the smallest plan", StringComparison.Ordinal), "below the smallest plan, said");
            Check(up.Contains("-> 8 of 8 layers", StringComparison.Ordinal), "every layer back");
            Check(up.Contains("kv kivi2 -> f16", StringComparison.Ordinal), "the KV type back");
            Check(log.Contains("stopped: token limit", StringComparison.Ordinal), "stopped at the token limit");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
