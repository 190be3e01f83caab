using System.Globalization;
using System.Security;
using System.Text;

namespace FitLM.Evaluation;

/// <summary>
/// A small SVG plot writer for the measurements in docs/: x/y axes with "nice" ticks (linear or log10),
/// axis labels, a title, a legend, and series of points drawn as markers, lines or both, each point optionally
/// labelled. <see cref="Write"/> writes atomically (temp file, then rename), so a reader never sees half a plot.
/// </summary>
public sealed class SvgPlot
{
    public sealed record Point(double X, double Y, string? Label = null);

    public sealed class Series(string name, string color)
    {
        public string Name { get; } = name;
        public string Color { get; } = color;
        public List<Point> Points { get; } = [];
        public bool Lines { get; init; }
        public bool Markers { get; init; } = true;
        public Series Add(double x, double y, string? label = null) { Points.Add(new Point(x, y, label)); return this; }
    }

    public string Title { get; init; } = "";
    public string XLabel { get; init; } = "";
    public string YLabel { get; init; } = "";
    public bool LogX { get; init; }
    public bool LogY { get; init; }
    public int Width { get; init; } = 760;
    public int Height { get; init; } = 480;
    /// <summary>Optional fixed axis ranges (else fitted to the data with a margin).</summary>
    public (double Min, double Max)? XRange { get; init; }
    public (double Min, double Max)? YRange { get; init; }
    public List<Series> AllSeries { get; } = [];

    /// <summary>A palette that stays readable in print and for common colour-vision deficiencies.</summary>
    public static readonly string[] Palette = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"];

    public Series AddSeries(string name, bool lines = false, bool markers = true, string? color = null)
    {
        var s = new Series(name, color ?? Palette[AllSeries.Count % Palette.Length]) { Lines = lines, Markers = markers };
        AllSeries.Add(s);
        return s;
    }

    private const int Left = 78, Right = 24, Top = 44, Bottom = 58;

    /// <summary>The SVG document.</summary>
    public string Render()
    {
        var pts = AllSeries.SelectMany(s => s.Points).ToList();
        var (x0, x1) = XRange ?? Fit(pts.Select(p => p.X), LogX);
        var (y0, y1) = YRange ?? Fit(pts.Select(p => p.Y), LogY);
        double pw = Width - Left - Right, ph = Height - Top - Bottom;
        double Tx(double v) => LogX ? Math.Log10(v) : v;
        double Ty(double v) => LogY ? Math.Log10(v) : v;
        double Px(double v) => Left + (Tx(v) - Tx(x0)) / (Tx(x1) - Tx(x0)) * pw;
        double Py(double v) => Top + ph - (Ty(v) - Ty(y0)) / (Ty(y1) - Ty(y0)) * ph;

        var sb = new StringBuilder();
        sb.Append($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{Height}\" viewBox=\"0 0 {Width} {Height}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        sb.Append($"<rect width=\"{Width}\" height=\"{Height}\" fill=\"white\"/>\n");
        if (Title.Length > 0) sb.Append($"<text x=\"{F(Width / 2.0)}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{E(Title)}</text>\n");
        // Grid and ticks.
        foreach (var t in Ticks(x0, x1, LogX))
        {
            double px = Px(t);
            sb.Append($"<line x1=\"{F(px)}\" y1=\"{Top}\" x2=\"{F(px)}\" y2=\"{F(Top + ph)}\" stroke=\"#e5e5e5\"/>\n");
            sb.Append($"<text x=\"{F(px)}\" y=\"{F(Top + ph + 16)}\" text-anchor=\"middle\">{E(Label(t))}</text>\n");
        }
        foreach (var t in Ticks(y0, y1, LogY))
        {
            double py = Py(t);
            sb.Append($"<line x1=\"{Left}\" y1=\"{F(py)}\" x2=\"{F(Left + pw)}\" y2=\"{F(py)}\" stroke=\"#e5e5e5\"/>\n");
            sb.Append($"<text x=\"{Left - 6}\" y=\"{F(py + 4)}\" text-anchor=\"end\">{E(Label(t))}</text>\n");
        }
        sb.Append($"<rect x=\"{Left}\" y=\"{Top}\" width=\"{F(pw)}\" height=\"{F(ph)}\" fill=\"none\" stroke=\"#333\"/>\n");
        if (XLabel.Length > 0) sb.Append($"<text x=\"{F(Left + pw / 2)}\" y=\"{Height - 14}\" text-anchor=\"middle\">{E(XLabel)}</text>\n");
        if (YLabel.Length > 0) sb.Append($"<text transform=\"translate(18,{F(Top + ph / 2)}) rotate(-90)\" text-anchor=\"middle\">{E(YLabel)}</text>\n");
        // Series.
        foreach (var s in AllSeries)
        {
            var inside = s.Points.Where(p => In(p.X, x0, x1, LogX) && In(p.Y, y0, y1, LogY)).ToList();
            if (s.Lines && inside.Count > 1)
                sb.Append($"<polyline fill=\"none\" stroke=\"{s.Color}\" stroke-width=\"1.8\" points=\"{string.Join(' ', inside.Select(p => $"{F(Px(p.X))},{F(Py(p.Y))}"))}\"/>\n");
            foreach (var p in inside)
            {
                if (s.Markers) sb.Append($"<circle cx=\"{F(Px(p.X))}\" cy=\"{F(Py(p.Y))}\" r=\"4\" fill=\"{s.Color}\"><title>{E($"{s.Name}: {p.Label ?? ""} ({Label(p.X)}, {Label(p.Y)})")}</title></circle>\n");
                if (p.Label != null) sb.Append($"<text x=\"{F(Px(p.X) + 6)}\" y=\"{F(Py(p.Y) - 6)}\" font-size=\"11\" fill=\"{s.Color}\">{E(p.Label)}</text>\n");
            }
        }
        // Legend, top right inside the plot.
        double ly = Top + 10;
        double lx = Left + pw - 10 - 8 * AllSeries.Select(s => s.Name.Length).DefaultIfEmpty(0).Max() - 24;
        if (AllSeries.Count > 0)
            sb.Append($"<rect x=\"{F(lx - 8)}\" y=\"{F(ly - 4)}\" width=\"{F(Left + pw - lx)}\" height=\"{18 * AllSeries.Count + 6}\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#bbb\"/>\n");
        foreach (var s in AllSeries)
        {
            if (s.Lines) sb.Append($"<line x1=\"{F(lx)}\" y1=\"{F(ly + 7)}\" x2=\"{F(lx + 16)}\" y2=\"{F(ly + 7)}\" stroke=\"{s.Color}\" stroke-width=\"1.8\"/>\n");
            if (s.Markers) sb.Append($"<circle cx=\"{F(lx + 8)}\" cy=\"{F(ly + 7)}\" r=\"4\" fill=\"{s.Color}\"/>\n");
            sb.Append($"<text x=\"{F(lx + 22)}\" y=\"{F(ly + 11)}\">{E(s.Name)}</text>\n");
            ly += 18;
        }
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    /// <summary>Writes the plot to <paramref name="path"/> atomically: a temporary file beside it, then a rename.</summary>
    public void Write(string path) =>
        Storage.OutputFile.WriteAtomically(path, temp => File.WriteAllText(temp, Render(), new UTF8Encoding(false)));

    private static bool In(double v, double lo, double hi, bool log) =>
        double.IsFinite(v) && (!log || v > 0) && v >= lo - 1e-12 * Math.Abs(lo) && v <= hi + 1e-12 * Math.Abs(hi);

    private static (double, double) Fit(IEnumerable<double> values, bool log)
    {
        var v = values.Where(x => double.IsFinite(x) && (!log || x > 0)).ToList();
        if (v.Count == 0) return log ? (1, 10) : (0, 1);
        double lo = v.Min(), hi = v.Max();
        if (log)
        {
            double a = Math.Floor(Math.Log10(lo) * 4) / 4, b = Math.Ceiling(Math.Log10(hi) * 4) / 4;
            if (b <= a) b = a + 1;
            return (Math.Pow(10, a), Math.Pow(10, b));
        }
        if (hi == lo) { lo -= 0.5; hi += 0.5; }
        double margin = (hi - lo) * 0.08;
        double step = NiceStep((hi - lo + 2 * margin) / 6);
        return (Math.Floor((lo - margin) / step) * step, Math.Ceiling((hi + margin) / step) * step);
    }

    /// <summary>1, 2 or 5 times a power of ten, near <paramref name="rough"/>.</summary>
    public static double NiceStep(double rough)
    {
        double p = Math.Pow(10, Math.Floor(Math.Log10(rough))), f = rough / p;
        return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
    }

    /// <summary>Tick positions: multiples of a nice step (linear), or 1-2-5 per decade (log).</summary>
    public static IEnumerable<double> Ticks(double lo, double hi, bool log)
    {
        if (!log)
        {
            double step = NiceStep((hi - lo) / 6);
            for (double t = Math.Ceiling(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) yield return Math.Abs(t) < step * 1e-9 ? 0 : t;
            yield break;
        }
        for (int e = (int)Math.Floor(Math.Log10(lo)); e <= (int)Math.Ceiling(Math.Log10(hi)); e++)
            foreach (var m in new[] { 1, 2, 5 })
            {
                double t = m * Math.Pow(10, e);
                if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) yield return t;
            }
    }

    private static string Label(double v) => Math.Abs(v) >= 1e5 || (v != 0 && Math.Abs(v) < 1e-3)
        ? v.ToString("0.##E+0", CultureInfo.InvariantCulture)
        : v.ToString("0.####", CultureInfo.InvariantCulture);

    private static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);
    private static string E(string s) => SecurityElement.Escape(s) ?? "";
}
