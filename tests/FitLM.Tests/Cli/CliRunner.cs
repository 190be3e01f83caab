using System.Globalization;
using System.Diagnostics;

namespace FitLM.Tests.Cli;

/// <summary>Runs the real `fitlm` program (fitlm.dll beside the tests) as a child process.</summary>
public static class CliRunner
{
    public sealed record Result(int ExitCode, string StdOut, string StdErr)
    {
        /// <summary>
        /// stderr's lines but the one that says where the model runs (`device: cpu (no CUDA driver ...)` on a machine
        /// without a GPU, since --device defaults to auto): what an error test expects to be the single error line.
        /// </summary>
        public string[] ErrorLines => StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("device: ", StringComparison.Ordinal)).ToArray();
    }

    public static Result RunWithInput(string? stdin, params string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "fitlm.dll");
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (stdin != null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            p.Kill(true);
            throw new TimeoutException($"fitlm {string.Join(' ', args)} did not finish in 3 minutes");
        }
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    public static Result Run(params string[] args) => RunWithInput(null, args);

    /// <summary>Runs fitlm and sends it SIGINT (Ctrl-C) once a stdout line starts with <paramref name="afterLine"/>.</summary>
    public static (int Exit, string StdOut, string StdErr) RunAndInterrupt(string[] args, string afterLine)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "fitlm.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var sb = new System.Text.StringBuilder();
        bool sent = false;
        while (p.StandardOutput.ReadLine() is { } line)
        {
            sb.AppendLine(line);
            if (!sent && line.StartsWith(afterLine, StringComparison.Ordinal))
            {
                using var kill = Process.Start("kill", ["-INT", p.Id.ToString(CultureInfo.InvariantCulture)]);
                kill.WaitForExit();
                sent = true;
            }
        }
        if (!p.WaitForExit(TimeSpan.FromMinutes(3))) { p.Kill(true); throw new TimeoutException("fitlm finetune did not stop"); }
        return (p.ExitCode, sb.ToString(), stderr.Result);
    }
}
