using System.Xml.Linq;
using FitLM.Evaluation;
using FitLM.Tests.Cli;
using Xunit;

namespace FitLM.Tests.KvCache;

/// <summary>The KV flags on the commands, `fitlm info`'s table, and the SVG plot writer.</summary>
public class KvCliAndPlotTests
{
    [Theory]
    [InlineData("--kv", "q8", "unknown KV type 'q8'")]
    [InlineData("--kv-evict", "lru", "unknown KV eviction 'lru'")]
    [InlineData("--kv-evict", "h2o", "needs --kv-keep")]
    [InlineData("--kv-keep", "64", "--kv-keep needs --kv-evict h2o")]
    [InlineData("--kv", "kivi2:x", "unknown modifier")]
    public void BadKvFlagsGiveOneLineError(string flag, string value, string message)
    {
        var r = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "x", "-n", "1", flag, value);
        Assert.Equal(1, r.ExitCode);
        var line = Assert.Single(r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error:", line);
        Assert.Contains(message, line);
    }

    [Fact]
    public void H2OWithAQuantizedTypeIsRefused()
    {
        var r = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "x", "-n", "1", "--kv", "kivi2", "--kv-evict", "h2o", "--kv-keep", "64");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("works with --kv f32 or f16", r.StdErr);
    }

    [Fact]
    public void RunAndPerplexityAcceptEveryKvType()
    {
        string text = Path.Combine(Path.GetTempPath(), $"fitlm-kv-{Environment.ProcessId}.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("def add(a, b):\n    return a + b\n\n", 60)));
        try
        {
            var run = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "def f(x):", "-n", "4", "--temp", "0", "--kv", "xquant-cl", "-t", "2");
            Assert.True(run.ExitCode == 0, run.StdErr);
            var ppl = CliRunner.Run("perplexity", "-m", TestPaths.DemoModel, "-f", text, "-c", "64", "--chunks", "2", "--kv", "f16", "--kv-evict", "h2o", "--kv-keep", "32", "-t", "2");
            Assert.True(ppl.ExitCode == 0, ppl.StdErr);
            Assert.Contains("Final estimate: PPL = ", ppl.StdOut);
        }
        finally { File.Delete(text); }
    }

    [Fact]
    public void InfoShowsBytesPerTokenOfEveryType()
    {
        var r = CliRunner.Run("info", "-m", TestPaths.DemoModel);
        Assert.Equal(0, r.ExitCode);
        foreach (var t in FitLM.KvCache.KvCacheOptions.AllTypes)
            Assert.Matches($@"\n  {System.Text.RegularExpressions.Regex.Escape(FitLM.KvCache.KvCacheOptions.Name(t))} +\d+\.\d +\d+\.\d\dx", r.StdOut);
        Assert.Contains("\n  f16              4096.0    1.00x", r.StdOut);
    }

    [Fact]
    public void SvgPlotIsWellFormedAndWrittenAtomically()
    {
        string dir = Directory.CreateTempSubdirectory("fitlm-plot-").FullName;
        try
        {
            var plot = new SvgPlot { Title = "perplexity <vs> bytes", XLabel = "KV bytes per token", YLabel = "perplexity", LogX = true };
            plot.AddSeries("quantized").Add(4096, 4.72, "f16").Add(1280, 4.73, "kivi4").Add(768, 5.1, "kivi2 & co");
            plot.AddSeries("h2o", lines: true).Add(2112, 5.0).Add(1056, 5.9);
            string path = Path.Combine(dir, "plot.svg");
            plot.Write(path);
            plot.Write(path); // replaces
            var doc = XDocument.Load(path);
            XNamespace svg = "http://www.w3.org/2000/svg";
            Assert.Equal(svg + "svg", doc.Root!.Name);
            Assert.Equal(5, doc.Descendants(svg + "circle").Count(c => c.Element(svg + "title") != null));
            Assert.Contains(doc.Descendants(svg + "text"), t => t.Value == "kivi2 & co");
            Assert.Single(doc.Descendants(svg + "polyline"));
            Assert.Equal(["plot.svg"], Directory.GetFiles(dir).Select(Path.GetFileName));
            Assert.Equal([1000, 2000, 5000], SvgPlot.Ticks(700, 5000, log: true).ToArray());
            Assert.Equal([0, 0.5, 1, 1.5, 2], SvgPlot.Ticks(0, 2, log: false).ToArray());
        }
        finally { Directory.Delete(dir, true); }
    }
}
