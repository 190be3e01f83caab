using System.Diagnostics;
using System.Text.RegularExpressions;

namespace FitLM.Tests.Cli;

/// <summary>
/// Runs the real `fitlm` as a child process and measures its peak RSS from outside: the kernel's high-water mark
/// (VmHWM in /proc/PID/status, what /usr/bin/time -v reports as maximum resident set size), sampled every few
/// milliseconds until the process exits. VmHWM only grows, so the last sample is the peak up to a few ms before exit.
/// </summary>
public static partial class PeakRssRunner
{
    public sealed record Result(int ExitCode, string StdOut, string StdErr, long SampledPeakBytes)
    {
        /// <summary>The last "peak RSS: X" the program printed about itself, in bytes, or -1.</summary>
        public long ReportedPeakBytes => LastReportedPeak(StdErr + StdOut);
    }

    public static bool Supported => File.Exists("/proc/self/status");

    public static Result Run(params string[] args) => Run(null, args);

    /// <summary>Runs fitlm with <paramref name="args"/>; <paramref name="whileRunning"/> (if given) is called with the process once it runs and may end it.</summary>
    public static Result Run(Action<Process>? whileRunning, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "fitlm.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        // With a callback, it reads standard output first (serve's address line); the rest is read after it.
        var stdout = whileRunning == null ? p.StandardOutput.ReadToEndAsync() : null;
        var stderr = p.StandardError.ReadToEndAsync();
        long peak = 0;
        using var stop = new CancellationTokenSource();
        // A thread of its own, not a pool task: with the test run's parallel tests holding the pool, a task once started
        // after a short bench had exited and sampled nothing ("no VmHWM was sampled", 1 of 1460 on 2 cores).
        var sampler = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                long hwm = ReadHwm(p.Id);
                if (hwm > peak) peak = hwm;
                Thread.Sleep(2);
            }
        }) { IsBackground = true, Priority = ThreadPriority.AboveNormal, Name = "VmHWM sampler" };
        sampler.Start();
        try
        {
            whileRunning?.Invoke(p);
            stdout ??= p.StandardOutput.ReadToEndAsync();
            if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
            {
                p.Kill(true);
                throw new TimeoutException($"fitlm {string.Join(' ', args)} did not finish in 3 minutes");
            }
        }
        finally
        {
            stop.Cancel();
            sampler.Join();
        }
        return new Result(p.ExitCode, stdout.Result, stderr.Result, peak);
    }

    /// <summary>VmHWM of process <paramref name="pid"/> in bytes; 0 once it has exited.</summary>
    public static long ReadHwm(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line.AsSpan(6).Trim().TrimEnd("kB").Trim()) * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        return 0;
    }

    [GeneratedRegex(@"peak RSS:? ([\d.]+) (B|KiB|MiB|GiB)")]
    private static partial Regex PeakLine();

    private static long LastReportedPeak(string text)
    {
        var m = PeakLine().Matches(text);
        if (m.Count == 0) return -1;
        var last = m[^1];
        double v = double.Parse(last.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        return (long)(v * last.Groups[2].Value switch { "KiB" => 1024, "MiB" => 1 << 20, "GiB" => 1 << 30, _ => 1 });
    }
}
