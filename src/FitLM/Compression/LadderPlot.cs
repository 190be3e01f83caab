using System.Globalization;
using System.Text;

namespace FitLM.Compression;

/// <summary>
/// A small SVG line/point chart for the BitStack size ladder: perplexity against model bytes, a line for the
/// stack and labelled points for other files. Self-contained (no fonts or scripts), readable in any browser.
/// </summary>
public static class LadderPlot
{
    public sealed record Series(string Name, string Color, IReadOnlyList<(double X, double Y, string? Label)> Points, bool Line);

    /// <summary>
    /// The chart; with <paramref name="yMax"/> the y axis stops there and higher points sit on the top edge as
    /// triangles labelled with their value (so a few very small sizes do not flatten the rest).
    /// </summary>
    public static string Svg(string title, string xLabel, string yLabel, IReadOnlyList<Series> series, double? reference = null,
        string? referenceLabel = null, double? yMax = null)
    {
        const int width = 820, height = 520, left = 70, right = 30, top = 50, bottom = 60;
        var all = series.SelectMany(s => s.Points).ToList();
        if (all.Count == 0) throw new FitLMException("nothing to plot");
        double x0 = all.Min(p => p.X), x1 = all.Max(p => p.X);
        double y0 = all.Min(p => p.Y), y1 = all.Max(p => p.Y);
        if (reference is double r) { y0 = Math.Min(y0, r); y1 = Math.Max(y1, r); }
        bool clipped = yMax is double cap && cap < y1 && cap > y0;
        if (clipped) y1 = yMax!.Value;
        (x0, x1) = Pad(x0, x1);
        (y0, y1) = Pad(y0, y1);
        if (clipped) y1 = yMax!.Value;
        double Px(double x) => left + (x - x0) / (x1 - x0) * (width - left - right);
        double Py(double y) => top + (y1 - y) / (y1 - y0) * (height - top - bottom);
        static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);
        static string Esc(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");

        var sb = new StringBuilder();
        sb.AppendLine($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">");
        sb.AppendLine($"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>");
        sb.AppendLine($"<text x=\"{width / 2}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{Esc(title)}</text>");
        foreach (var t in Ticks(x0, x1))
        {
            sb.AppendLine($"<line x1=\"{F(Px(t))}\" y1=\"{top}\" x2=\"{F(Px(t))}\" y2=\"{height - bottom}\" stroke=\"#e4e4e4\"/>");
            sb.AppendLine($"<text x=\"{F(Px(t))}\" y=\"{height - bottom + 16}\" text-anchor=\"middle\">{F(t)}</text>");
        }
        foreach (var t in Ticks(y0, y1))
        {
            sb.AppendLine($"<line x1=\"{left}\" y1=\"{F(Py(t))}\" x2=\"{width - right}\" y2=\"{F(Py(t))}\" stroke=\"#e4e4e4\"/>");
            sb.AppendLine($"<text x=\"{left - 6}\" y=\"{F(Py(t) + 4)}\" text-anchor=\"end\">{F(t)}</text>");
        }
        sb.AppendLine($"<rect x=\"{left}\" y=\"{top}\" width=\"{width - left - right}\" height=\"{height - top - bottom}\" fill=\"none\" stroke=\"#444\"/>");
        sb.AppendLine($"<text x=\"{(left + width - right) / 2}\" y=\"{height - 18}\" text-anchor=\"middle\">{Esc(xLabel)}</text>");
        sb.AppendLine($"<text transform=\"translate(18 {(top + height - bottom) / 2}) rotate(-90)\" text-anchor=\"middle\">{Esc(yLabel)}</text>");
        if (reference is double rv)
        {
            sb.AppendLine($"<line x1=\"{left}\" y1=\"{F(Py(rv))}\" x2=\"{width - right}\" y2=\"{F(Py(rv))}\" stroke=\"#888\" stroke-dasharray=\"6 4\"/>");
            if (referenceLabel != null) sb.AppendLine($"<text x=\"{width - right - 4}\" y=\"{F(Py(rv) - 5)}\" text-anchor=\"end\" fill=\"#666\">{Esc(referenceLabel)}</text>");
        }
        int legendY = top + 16;
        foreach (var s in series)
        {
            var pts = s.Points.OrderBy(p => p.X).ToList();
            double Cy(double y) => Py(Math.Min(y, y1));
            if (s.Line && pts.Count > 1)
                sb.AppendLine($"<polyline fill=\"none\" stroke=\"{s.Color}\" stroke-width=\"2\" points=\"{string.Join(' ', pts.Select(p => $"{F(Px(p.X))},{F(Cy(p.Y))}"))}\"/>");
            foreach (var p in pts)
            {
                if (p.Y > y1)
                {
                    double cx = Px(p.X), cy = Py(y1);
                    sb.AppendLine($"<path d=\"M{F(cx - 5)},{F(cy + 8)} L{F(cx + 5)},{F(cy + 8)} L{F(cx)},{F(cy)} Z\" fill=\"{s.Color}\"/>");
                    sb.AppendLine($"<text x=\"{F(cx + 7)}\" y=\"{F(cy + 14)}\" fill=\"{s.Color}\">{F(p.Y)}</text>");
                    continue;
                }
                sb.AppendLine(s.Line
                    ? $"<circle cx=\"{F(Px(p.X))}\" cy=\"{F(Py(p.Y))}\" r=\"3.5\" fill=\"{s.Color}\"/>"
                    : $"<rect x=\"{F(Px(p.X) - 5)}\" y=\"{F(Py(p.Y) - 5)}\" width=\"10\" height=\"10\" fill=\"{s.Color}\"/>");
                if (p.Label != null) sb.AppendLine($"<text x=\"{F(Px(p.X) + 8)}\" y=\"{F(Py(p.Y) - 8)}\" fill=\"{s.Color}\">{Esc(p.Label)}</text>");
            }
            sb.AppendLine(s.Line
                ? $"<line x1=\"{width - right - 190}\" y1=\"{legendY - 4}\" x2=\"{width - right - 166}\" y2=\"{legendY - 4}\" stroke=\"{s.Color}\" stroke-width=\"2\"/>"
                : $"<rect x=\"{width - right - 183}\" y=\"{legendY - 9}\" width=\"10\" height=\"10\" fill=\"{s.Color}\"/>");
            sb.AppendLine($"<text x=\"{width - right - 160}\" y=\"{legendY}\">{Esc(s.Name)}</text>");
            legendY += 18;
        }
        sb.AppendLine("</svg>");
        return sb.ToString();
    }

    private static (double, double) Pad(double a, double b)
    {
        if (b - a < 1e-9) { a -= 1; b += 1; }
        double p = (b - a) * 0.06;
        return (a - p, b + p);
    }

    private static IEnumerable<double> Ticks(double a, double b)
    {
        double raw = (b - a) / 8;
        double mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1, 2, 2.5, 5, 10 }.Select(m => m * mag).First(s => s >= raw);
        for (double t = Math.Ceiling(a / step) * step; t <= b + 1e-12; t += step) yield return Math.Round(t, 10);
    }
}
