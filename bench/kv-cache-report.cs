#:project ../src/FitLM/FitLM.csproj
// Turns bench/kv-cache.sh's measurements into docs/kv-cache.md's table and plot.
// usage: dotnet run bench/kv-cache-report.cs -- MODEL PERPLEXITY.tsv SPEED.tsv OUT.svg
//   PERPLEXITY.tsv: spec <tab> keep (0: no eviction) <tab> ppl <tab> ± ; SPEED.tsv: spec <tab> ms per token
// Prints the markdown tables; writes the SVG plot (perplexity against KV bytes per token).
using System.Globalization;
using FitLM.Evaluation;
using FitLM.KvCache;
using FitLM.Model;

var inv = CultureInfo.InvariantCulture;
string model = args[0], pplPath = args[1], speedPath = args[2], svgPath = args[3];
ModelConfig config;
using (var src = ModelSource.Open(model)) config = src.Config;

KvCacheOptions Options(string spec, int keep) => keep > 0
    ? KvCacheOptions.Parse(spec) with { Evict = KvEviction.H2O, Keep = keep }
    : KvCacheOptions.Parse(spec);

var rows = File.ReadAllLines(pplPath).Where(l => l.Length > 0).Select(l => l.Split('\t'))
    .Select(f => (Spec: f[0], Keep: int.Parse(f[1], inv), Ppl: double.Parse(f[2], inv), Err: double.Parse(f[3], inv))).ToList();
var f16 = rows.First(r => r.Spec == "f16" && r.Keep == 0);
double f16Bytes = KvStoreFactory.BytesPerToken(config, new KvCacheOptions { Type = KvType.F16 }, 512);
string Label((string Spec, int Keep, double Ppl, double Err) r) => r.Keep > 0 ? $"{r.Spec} h2o {r.Keep}" : r.Spec;

Console.WriteLine($"| --kv | KV bytes/token (512 ctx) | vs f16 | marginal bytes/token | perplexity | change vs f16 |");
Console.WriteLine("| --- | ---: | ---: | ---: | ---: | ---: |");
var plot = new SvgPlot
{
    Title = "pycoder-29m: perplexity (c 512, 100 chunks) against KV bytes per token",
    XLabel = "KV bytes per token, averaged over a 512-token context (log scale)",
    YLabel = "perplexity",
    LogX = true,
    Width = 960,
    Height = 640,
};
var series = new Dictionary<string, SvgPlot.Series>();
SvgPlot.Series Series(string name) => series.TryGetValue(name, out var s) ? s : series[name] = plot.AddSeries(name);
foreach (var r in rows)
{
    var o = Options(r.Spec, r.Keep);
    double bytes = KvStoreFactory.BytesPerToken(config, o, 512);
    // Marginal: what one more token costs in a long sequence (no basis, no window, whole pages).
    double marginal = (KvStoreFactory.Bytes(config, o, 65536) - KvStoreFactory.Bytes(config, o, 65536 - 1024)) / 1024.0;
    if (r.Keep > 0) marginal = 0;
    Console.WriteLine($"| `{(r.Keep > 0 ? $"{r.Spec} --kv-evict h2o --kv-keep {r.Keep}" : r.Spec)}` | {bytes.ToString("F1", inv)} | {(f16Bytes / bytes).ToString("F2", inv)}× | " +
        $"{(r.Keep > 0 ? "fixed" : marginal.ToString("F1", inv))} | {r.Ppl.ToString("F4", inv)} ± {r.Err.ToString("F4", inv)} | {(100 * (r.Ppl / f16.Ppl - 1)).ToString("+0.00;-0.00", inv)}% |");
    string group = r.Keep > 0 ? "H2O + 4 sinks (f16)"
        : o.IsKivi ? "KIVI" : o.IsXQuant || o.Type == KvType.XQuantCl ? "XQuant" : "plain";
    if (r.Spec.Contains(':')) group += " (variants)";
    Series(group).Add(bytes, r.Ppl, Label(r));
}
plot.AddSeries("f16 perplexity + 1%", lines: true, markers: false, color: "#999999")
    .Add(f16Bytes / 40, f16.Ppl * 1.01).Add(f16Bytes * 4, f16.Ppl * 1.01);
plot.AddSeries("8× fewer bytes than f16", lines: true, markers: false, color: "#bbbbbb")
    .Add(f16Bytes / 8, rows.Min(r => r.Ppl)).Add(f16Bytes / 8, rows.Max(r => r.Ppl));
plot.Write(svgPath);

if (File.Exists(speedPath))
{
    var speed = File.ReadAllLines(speedPath).Where(l => l.Length > 0).Select(l => l.Split('\t'))
        .Select(f => (Spec: f[0], Ms: double.Parse(f[1], inv))).ToList();
    double baseMs = speed.First(s => s.Spec == "f16").Ms;
    Console.WriteLine();
    Console.WriteLine("| --kv | ms per token at 2048 | tokens/s | speed vs f16 |");
    Console.WriteLine("| --- | ---: | ---: | ---: |");
    foreach (var s in speed)
        Console.WriteLine($"| `{s.Spec}` | {s.Ms.ToString("F2", inv)} | {(1000 / s.Ms).ToString("F1", inv)} | {(baseMs / s.Ms).ToString("F2", inv)}× |");
}
