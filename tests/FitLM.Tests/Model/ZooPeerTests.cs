using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using FitLM.Tests.Cli;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Model;

/// <summary>
/// Every zoo architecture llama.cpp loads, converted by `fitlm convert --type f16`: llama.cpp's llama-perplexity and
/// `fitlm perplexity` on the same GGUF and text agree within 0.1% (measured: 0.00–0.03%). Three folders llama.cpp
/// cannot load are left out: tiny-olmoe (its loader sizes k_norm by the embedding, so grouped KV heads are refused),
/// tiny-qwen2moe (its loader requires output.weight, so a tied head is refused) and tiny-phi3 (its vocabulary
/// loader throws out_of_range on this 8192-token BPE vocabulary). Skipped without ../shared or its llama.cpp peer.
/// </summary>
public sealed partial class ZooPeerTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-zoopeer-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [GeneratedRegex(@"Final estimate: PPL = ([0-9.]+)")]
    private static partial Regex FinalPpl();

    private static double Ppl(string log, string who) =>
        FinalPpl().Match(log) is { Success: true } m ? double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)
            : throw new Xunit.Sdk.XunitException($"{who} printed no perplexity:\n{log[^Math.Min(log.Length, 2000)..]}");

    [Theory]
    [InlineData("tiny-llama3")]
    [InlineData("tiny-mistral")]
    [InlineData("tiny-qwen2")]
    [InlineData("tiny-qwen3")]
    [InlineData("tiny-gemma2")]
    [InlineData("tiny-gemma3")]
    [InlineData("tiny-mixtral")]
    [InlineData("tiny-qwen3moe")]
    public void ConvertedGgufHasLlamaCppsPerplexity(string name)
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent"); return; }
        string llama = Path.Combine(shared, "peers", "llama.cpp", "llama-perplexity");
        string folder = Path.Combine(shared, "models", "zoo", name), text = Path.Combine(shared, "data", "pycode-dev.txt");
        if (!File.Exists(llama) || !Directory.Exists(folder)) { output.WriteLine($"{llama} or {folder} is absent: nothing to compare against"); return; }

        // The first 40,000 characters (about 12,000 tokens) hold the 4 chunks: tokenizing all 1 MB took most of each run.
        string head = Path.Combine(_dir, "text.txt");
        File.WriteAllText(head, File.ReadAllText(text)[..40_000]);
        text = head;
        string gguf = Path.Combine(_dir, name + ".f16.gguf");
        var convert = CliRunner.Run("convert", "-m", folder, "-o", gguf, "--type", "f16");
        Assert.True(convert.ExitCode == 0, convert.StdErr);
        string[] protocol = ["-f", text, "-c", "512", "--chunks", "4", "-t", "2"];

        var ours = CliRunner.Run(["perplexity", "-m", gguf, .. protocol]);
        Assert.True(ours.ExitCode == 0, ours.StdErr);
        var psi = new ProcessStartInfo(llama) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in (string[])["-m", gguf, .. protocol]) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(3)), "llama-perplexity did not finish in 3 minutes");

        double fitlm = Ppl(ours.StdOut + ours.StdErr, "fitlm"), theirs = Ppl(so.Result + se.Result, "llama-perplexity");
        double rel = Math.Abs(fitlm - theirs) / theirs;
        output.WriteLine($"{name}: fitlm {fitlm:F4}, llama.cpp {theirs:F4}, {rel:P3} apart");
        Assert.True(rel <= 1e-3, $"{name}: fitlm's perplexity {fitlm} and llama.cpp's {theirs} are {rel:P3} apart");
    }
}
