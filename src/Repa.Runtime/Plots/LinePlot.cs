using System.Globalization;
using System.Text.Json;

namespace Repa.Runtime.Plots;

/// <summary>
/// A small dependency-free line plot rendered to PNG: white background, axes with nice ticks, title, axis labels,
/// a legend and 2 px lines. Text uses a built-in 5x7 bitmap font (lower case is drawn with the upper case glyphs).
/// Non-finite points (and non-positive ones when <see cref="LogY"/>) are skipped.
/// </summary>
public sealed class LinePlot
{
    private sealed record Series(string Name, (double X, double Y)[] Points, (byte R, byte G, byte B) Color, int Thickness);

    private readonly List<Series> series = [];

    public string Title { get; set; } = "";
    public string XLabel { get; set; } = "";
    public string YLabel { get; set; } = "";
    public bool LogY { get; set; }

    /// <summary>Adds one line; the points are copied, drawn in the given order, with the given width in pixels.</summary>
    public void AddSeries(string name, IReadOnlyList<(double X, double Y)> points, (byte R, byte G, byte B) color, int thickness = 2)
    {
        ArgumentNullException.ThrowIfNull(points);
        if (thickness < 1) throw new ArgumentOutOfRangeException(nameof(thickness), thickness, "plot: line thickness must be >= 1.");
        series.Add(new Series(name ?? "", [.. points], color, thickness));
    }

    /// <summary>Renders the plot and writes it as a PNG (atomically).</summary>
    public void Save(string path, int width = 800, int height = 500)
    {
        if (width < 200 || height < 150) throw new ArgumentOutOfRangeException(nameof(width), $"plot: size must be at least 200x150, got {width}x{height}.");
        var c = new Canvas(width, height);
        Render(c);
        Png.Write(path, width, height, c.Pixels);
    }

    /// <summary>The plot area (left, top, right, bottom) in pixels for a given image size; tests use it to look inside the axes.</summary>
    public static (int Left, int Top, int Right, int Bottom) PlotArea(int width, int height) => (80, 44, width - 24, height - 56);

    private bool Usable((double X, double Y) p) => double.IsFinite(p.X) && double.IsFinite(p.Y) && (!LogY || p.Y > 0);

    private double MapY(double y) => LogY ? Math.Log10(y) : y;

    private void Render(Canvas c)
    {
        var (left, top, right, bottom) = PlotArea(c.Width, c.Height);
        (byte, byte, byte) black = (0, 0, 0), grid = (225, 225, 225), gray = (90, 90, 90);

        double xMin = double.PositiveInfinity, xMax = double.NegativeInfinity, yMin = double.PositiveInfinity, yMax = double.NegativeInfinity;
        foreach (var s in series)
            foreach (var p in s.Points)
            {
                if (!Usable(p)) continue;
                double y = MapY(p.Y);
                xMin = Math.Min(xMin, p.X); xMax = Math.Max(xMax, p.X);
                yMin = Math.Min(yMin, y); yMax = Math.Max(yMax, y);
            }
        if (!(xMin <= xMax)) (xMin, xMax) = (0, 1);
        if (!(yMin <= yMax)) (yMin, yMax) = LogY ? (0, 1) : (0, 1);

        var (xLo, xHi, xTicks) = NiceTicks(xMin, xMax, 6);
        if (xMax > xMin)
        {
            // The x axis spans exactly the data (steps rarely end on a round number, and widening wastes the right side).
            (xLo, xHi) = (xMin, xMax);
            xTicks = [.. xTicks.Where(t => t >= xMin - 1e-9 * (xMax - xMin) && t <= xMax + 1e-9 * (xMax - xMin))];
        }
        var (yLo, yHi, yTicks) = LogY ? LogTicks(yMin, yMax) : NiceTicks(yMin, yMax, 6);

        double Px(double x) => left + (x - xLo) / (xHi - xLo) * (right - left);
        double Py(double y) => bottom - (y - yLo) / (yHi - yLo) * (bottom - top);

        // Grid and tick labels first so the data lines sit on top.
        double xStep = xTicks.Length > 1 ? xTicks[1] - xTicks[0] : Math.Max(Math.Abs(xHi - xLo), 1);
        foreach (double t in xTicks)
        {
            int x = (int)Math.Round(Px(t));
            c.VLine(x, top, bottom, grid);
            c.VLine(x, bottom, bottom + 4, black);
            string label = FormatTick(t, xStep);
            c.Text(label, x - Canvas.TextWidth(label, 1) / 2, bottom + 8, 1, black);
        }
        double yStep = yTicks.Length > 1 ? yTicks[1] - yTicks[0] : 1;
        int widestY = 0;
        foreach (double t in yTicks)
        {
            int y = (int)Math.Round(Py(t));
            c.HLine(left, right, y, grid);
            c.HLine(left - 4, left, y, black);
            string label = LogY ? Math.Pow(10, t).ToString("G3", CultureInfo.InvariantCulture) : FormatTick(t, yStep);
            int w = Canvas.TextWidth(label, 1);
            widestY = Math.Max(widestY, w);
            c.Text(label, left - 7 - w, y - 3, 1, black);
        }

        c.Clip = (left, top, right, bottom);
        foreach (var s in series)
        {
            (double X, double Y)? prev = null;
            foreach (var p in s.Points)
            {
                if (!Usable(p)) { prev = null; continue; } // a gap, not a jump across the skipped point
                var q = (X: Px(p.X), Y: Py(MapY(p.Y)));
                if (prev is { } a) c.Line(a.X, a.Y, q.X, q.Y, s.Thickness, s.Color);
                else c.Line(q.X, q.Y, q.X, q.Y, s.Thickness, s.Color);
                prev = q;
            }
        }
        c.Clip = null;

        // Axes box.
        c.HLine(left, right, bottom, black); c.HLine(left, right, top, black);
        c.VLine(left, top, bottom, black); c.VLine(right, top, bottom, black);

        if (Title.Length > 0) c.Text(Title, (left + right) / 2 - Canvas.TextWidth(Title, 2) / 2, 12, 2, black);
        if (XLabel.Length > 0) c.Text(XLabel, (left + right) / 2 - Canvas.TextWidth(XLabel, 1) / 2, bottom + 26, 1, gray);
        if (YLabel.Length > 0)
        {
            int x = Math.Max(2, left - 7 - widestY - 14);
            c.TextUp(YLabel, x, (top + bottom) / 2 + Canvas.TextWidth(YLabel, 1) / 2, 1, gray);
        }

        // Legend in the top-right corner of the plot area, over the lines on an opaque box.
        var named = series.Where(s => s.Name.Length > 0).ToList();
        if (named.Count > 0)
        {
            const int row = 14, swatch = 22, pad = 6;
            int boxW = pad + swatch + 6 + named.Max(s => Canvas.TextWidth(s.Name, 1)) + pad;
            int boxH = pad + named.Count * row - (row - 7) + pad;
            int bx1 = right - 8, bx0 = bx1 - boxW, by0 = top + 8, by1 = by0 + boxH;
            c.Fill(bx0, by0, bx1, by1, (255, 255, 255));
            c.HLine(bx0, bx1, by0, gray); c.HLine(bx0, bx1, by1, gray);
            c.VLine(bx0, by0, by1, gray); c.VLine(bx1, by0, by1, gray);
            for (int i = 0; i < named.Count; i++)
            {
                int ty = by0 + pad + i * row;
                c.Line(bx0 + pad, ty + 3, bx0 + pad + swatch, ty + 3, Math.Min(named[i].Thickness, 5), named[i].Color);
                c.Text(named[i].Name, bx0 + pad + swatch + 6, ty, 1, black);
            }
        }
    }

    /// <summary>
    /// Reads a metrics.jsonl (one JSON object per line: Step, Loss, Denoise, Proj, ...) and plots Loss, Denoise and Proj
    /// against Step, plus a trailing 10-step moving average of Loss as a thicker line. Unparseable lines are skipped.
    /// </summary>
    public static void SaveLossCurves(string metricsJsonlPath, string pngPath)
    {
        var loss = new List<(double, double)>();
        var denoise = new List<(double, double)>();
        var proj = new List<(double, double)>();
        foreach (string line in File.ReadLines(metricsJsonlPath))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonDocument doc;
            try { doc = JsonDocument.Parse(line); }
            catch (JsonException) { continue; } // a line cut short by a crash mid-write should not lose the whole plot
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object) continue;
                double step = Read(doc.RootElement, "Step");
                if (!double.IsFinite(step)) continue;
                loss.Add((step, Read(doc.RootElement, "Loss")));
                denoise.Add((step, Read(doc.RootElement, "Denoise")));
                proj.Add((step, Read(doc.RootElement, "Proj")));
            }
        }

        var avg = new List<(double, double)>(loss.Count);
        var window = new Queue<double>();
        double sum = 0;
        foreach (var (x, y) in loss)
        {
            if (!double.IsFinite(y)) continue;
            window.Enqueue(y); sum += y;
            if (window.Count > 10) sum -= window.Dequeue();
            avg.Add((x, sum / window.Count));
        }

        var plot = new LinePlot { Title = "training loss", XLabel = "step", YLabel = "loss" };
        static bool Any(List<(double, double)> s) => s.Exists(p => double.IsFinite(p.Item2));
        if (Any(loss)) plot.AddSeries("loss", loss, (150, 180, 230));
        if (Any(denoise)) plot.AddSeries("denoise", denoise, (230, 120, 30));
        if (Any(proj)) plot.AddSeries("proj", proj, (40, 160, 60));
        if (avg.Count > 0) plot.AddSeries("loss (avg 10)", avg, (20, 50, 160), thickness: 4);
        plot.Save(pngPath);
    }

    /// <summary>A number property, matched case-insensitively; "NaN"/"Infinity" strings are accepted; missing is NaN.</summary>
    private static double Read(JsonElement obj, string name)
    {
        foreach (var p in obj.EnumerateObject())
        {
            if (!p.Name.Equals(name, StringComparison.OrdinalIgnoreCase)) continue;
            if (p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetDouble(out double d)) return d;
            if (p.Value.ValueKind == JsonValueKind.String &&
                double.TryParse(p.Value.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out double s)) return s;
            return double.NaN;
        }
        return double.NaN;
    }

    // ---- ticks ----

    private static double NiceNumber(double x, bool round)
    {
        double exp = Math.Floor(Math.Log10(x)), f = x / Math.Pow(10, exp);
        double nf = round ? (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) : (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10);
        return nf * Math.Pow(10, exp);
    }

    /// <summary>Heckbert's nice labels: the axis is widened to whole steps of 1, 2 or 5 times a power of ten.</summary>
    internal static (double Lo, double Hi, double[] Ticks) NiceTicks(double min, double max, int count)
    {
        if (max - min < 1e-12 * Math.Max(1, Math.Abs(max)))
        {
            double pad = min == 0 ? 1 : Math.Abs(min) * 0.1;
            min -= pad; max += pad;
        }
        double step = NiceNumber(NiceNumber(max - min, false) / (count - 1), true);
        double lo = Math.Floor(min / step) * step, hi = Math.Ceiling(max / step) * step;
        int n = (int)Math.Round((hi - lo) / step);
        var ticks = new double[n + 1];
        for (int i = 0; i <= n; i++) ticks[i] = lo + i * step;
        return (lo, hi, ticks);
    }

    /// <summary>Log axis in log10 units: whole decades, thinned when there are many, or plain nice ticks within a decade.</summary>
    private static (double Lo, double Hi, double[] Ticks) LogTicks(double min, double max)
    {
        double lo = Math.Floor(min), hi = Math.Ceiling(max);
        if (hi - lo < 2) return NiceTicks(min, max, 5); // under two decades whole powers alone would give too few labels
        int every = (int)Math.Ceiling((hi - lo) / 8);
        var ticks = new List<double>();
        for (double t = lo; t <= hi + 1e-9; t += every) ticks.Add(t);
        return (lo, hi, [.. ticks]);
    }

    internal static string FormatTick(double v, double step)
    {
        if (Math.Abs(v) < Math.Abs(step) * 1e-9) v = 0;
        double mag = Math.Max(Math.Abs(v), Math.Abs(step));
        if (v != 0 && (mag >= 1e5 || mag < 1e-3))
            return v.ToString("0.##E+0", CultureInfo.InvariantCulture);
        int decimals = Math.Clamp(-(int)Math.Floor(Math.Log10(Math.Abs(step)) + 1e-9), 0, 6);
        return v.ToString("F" + decimals, CultureInfo.InvariantCulture);
    }
}
