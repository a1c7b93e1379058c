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
            c.Text(label, x - TextWidth(label, 1) / 2, bottom + 8, 1, black);
        }
        double yStep = yTicks.Length > 1 ? yTicks[1] - yTicks[0] : 1;
        int widestY = 0;
        foreach (double t in yTicks)
        {
            int y = (int)Math.Round(Py(t));
            c.HLine(left, right, y, grid);
            c.HLine(left - 4, left, y, black);
            string label = LogY ? Math.Pow(10, t).ToString("G3", CultureInfo.InvariantCulture) : FormatTick(t, yStep);
            int w = TextWidth(label, 1);
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

        if (Title.Length > 0) c.Text(Title, (left + right) / 2 - TextWidth(Title, 2) / 2, 12, 2, black);
        if (XLabel.Length > 0) c.Text(XLabel, (left + right) / 2 - TextWidth(XLabel, 1) / 2, bottom + 26, 1, gray);
        if (YLabel.Length > 0)
        {
            int x = Math.Max(2, left - 7 - widestY - 14);
            c.TextUp(YLabel, x, (top + bottom) / 2 + TextWidth(YLabel, 1) / 2, 1, gray);
        }

        // Legend in the top-right corner of the plot area, over the lines on an opaque box.
        var named = series.Where(s => s.Name.Length > 0).ToList();
        if (named.Count > 0)
        {
            const int row = 14, swatch = 22, pad = 6;
            int boxW = pad + swatch + 6 + named.Max(s => TextWidth(s.Name, 1)) + pad;
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

    // ---- drawing ----

    private static int TextWidth(string s, int scale) => s.Length == 0 ? 0 : (s.Length * 6 - 1) * scale;

    private sealed class Canvas(int width, int height)
    {
        public readonly int Width = width, Height = height;
        public readonly byte[] Pixels = CreateWhite(width, height);
        public (int L, int T, int R, int B)? Clip;

        private static byte[] CreateWhite(int w, int h)
        {
            var p = new byte[w * h * 3];
            Array.Fill(p, (byte)255);
            return p;
        }

        public void Set(int x, int y, (byte R, byte G, byte B) c)
        {
            if ((uint)x >= (uint)Width || (uint)y >= (uint)Height) return;
            if (Clip is { } k && (x < k.L || x > k.R || y < k.T || y > k.B)) return;
            int i = (y * Width + x) * 3;
            Pixels[i] = c.R; Pixels[i + 1] = c.G; Pixels[i + 2] = c.B;
        }

        public void HLine(int x0, int x1, int y, (byte, byte, byte) c) { for (int x = x0; x <= x1; x++) Set(x, y, c); }
        public void VLine(int x, int y0, int y1, (byte, byte, byte) c) { for (int y = y0; y <= y1; y++) Set(x, y, c); }

        public void Fill(int x0, int y0, int x1, int y1, (byte, byte, byte) c)
        {
            for (int y = y0; y <= y1; y++) HLine(x0, x1, y, c);
        }

        /// <summary>A thick line: a t x t square stamped along the DDA path between the two points.</summary>
        public void Line(double x0, double y0, double x1, double y1, int t, (byte, byte, byte) c)
        {
            // Keep far off-canvas coordinates from making the walk huge; the clip handles the rest.
            const double lim = 1e5;
            x0 = Math.Clamp(x0, -lim, lim); x1 = Math.Clamp(x1, -lim, lim);
            y0 = Math.Clamp(y0, -lim, lim); y1 = Math.Clamp(y1, -lim, lim);
            int steps = (int)Math.Ceiling(Math.Max(Math.Abs(x1 - x0), Math.Abs(y1 - y0)));
            int off = (t - 1) / 2;
            for (int i = 0; i <= steps; i++)
            {
                double f = steps == 0 ? 0 : (double)i / steps;
                int x = (int)Math.Round(x0 + (x1 - x0) * f) - off, y = (int)Math.Round(y0 + (y1 - y0) * f) - off;
                for (int dy = 0; dy < t; dy++)
                    for (int dx = 0; dx < t; dx++) Set(x + dx, y + dy, c);
            }
        }

        public void Text(string s, int x, int y, int scale, (byte, byte, byte) c)
        {
            foreach (char ch in s)
            {
                var g = Font.Glyph(ch);
                for (int r = 0; r < 7; r++)
                    for (int col = 0; col < 5; col++)
                        if ((g[r] >> (4 - col) & 1) != 0)
                            for (int sy = 0; sy < scale; sy++)
                                for (int sx = 0; sx < scale; sx++) Set(x + col * scale + sx, y + r * scale + sy, c);
                x += 6 * scale;
            }
        }

        /// <summary>Text rotated 90 degrees counter-clockwise, reading bottom to top from (x, y) = its bottom-left.</summary>
        public void TextUp(string s, int x, int y, int scale, (byte, byte, byte) c)
        {
            foreach (char ch in s)
            {
                var g = Font.Glyph(ch);
                for (int r = 0; r < 7; r++)
                    for (int col = 0; col < 5; col++)
                        if ((g[r] >> (4 - col) & 1) != 0)
                            for (int sy = 0; sy < scale; sy++)
                                for (int sx = 0; sx < scale; sx++) Set(x + r * scale + sx, y - col * scale - sy, c);
                y -= 6 * scale;
            }
        }
    }

    /// <summary>A 5x7 bitmap font: each glyph is 7 rows, the low 5 bits of each row, most significant bit leftmost.</summary>
    private static class Font
    {
        private static readonly Dictionary<char, byte[]> Glyphs = Build();

        public static byte[] Glyph(char ch)
        {
            if (Glyphs.TryGetValue(ch, out var g)) return g;
            if (Glyphs.TryGetValue(char.ToUpperInvariant(ch), out g)) return g;
            return Glyphs['?'];
        }

        private static Dictionary<char, byte[]> Build()
        {
            var rows = new Dictionary<char, string>
            {
                ['0'] = "01110 10001 10011 10101 11001 10001 01110",
                ['1'] = "00100 01100 00100 00100 00100 00100 01110",
                ['2'] = "01110 10001 00001 00010 00100 01000 11111",
                ['3'] = "11111 00010 00100 00010 00001 10001 01110",
                ['4'] = "00010 00110 01010 10010 11111 00010 00010",
                ['5'] = "11111 10000 11110 00001 00001 10001 01110",
                ['6'] = "00110 01000 10000 11110 10001 10001 01110",
                ['7'] = "11111 00001 00010 00100 01000 01000 01000",
                ['8'] = "01110 10001 10001 01110 10001 10001 01110",
                ['9'] = "01110 10001 10001 01111 00001 00010 01100",
                ['A'] = "01110 10001 10001 11111 10001 10001 10001",
                ['B'] = "11110 10001 10001 11110 10001 10001 11110",
                ['C'] = "01110 10001 10000 10000 10000 10001 01110",
                ['D'] = "11100 10010 10001 10001 10001 10010 11100",
                ['E'] = "11111 10000 10000 11110 10000 10000 11111",
                ['F'] = "11111 10000 10000 11110 10000 10000 10000",
                ['G'] = "01110 10001 10000 10111 10001 10001 01111",
                ['H'] = "10001 10001 10001 11111 10001 10001 10001",
                ['I'] = "01110 00100 00100 00100 00100 00100 01110",
                ['J'] = "00111 00010 00010 00010 00010 10010 01100",
                ['K'] = "10001 10010 10100 11000 10100 10010 10001",
                ['L'] = "10000 10000 10000 10000 10000 10000 11111",
                ['M'] = "10001 11011 10101 10101 10001 10001 10001",
                ['N'] = "10001 10001 11001 10101 10011 10001 10001",
                ['O'] = "01110 10001 10001 10001 10001 10001 01110",
                ['P'] = "11110 10001 10001 11110 10000 10000 10000",
                ['Q'] = "01110 10001 10001 10001 10101 10010 01101",
                ['R'] = "11110 10001 10001 11110 10100 10010 10001",
                ['S'] = "01111 10000 10000 01110 00001 00001 11110",
                ['T'] = "11111 00100 00100 00100 00100 00100 00100",
                ['U'] = "10001 10001 10001 10001 10001 10001 01110",
                ['V'] = "10001 10001 10001 10001 10001 01010 00100",
                ['W'] = "10001 10001 10001 10101 10101 10101 01010",
                ['X'] = "10001 10001 01010 00100 01010 10001 10001",
                ['Y'] = "10001 10001 10001 01010 00100 00100 00100",
                ['Z'] = "11111 00001 00010 00100 01000 10000 11111",
                ['.'] = "00000 00000 00000 00000 00000 01100 01100",
                ['-'] = "00000 00000 00000 11111 00000 00000 00000",
                ['+'] = "00000 00100 00100 11111 00100 00100 00000",
                ['('] = "00010 00100 01000 01000 01000 00100 00010",
                [')'] = "01000 00100 00010 00010 00010 00100 01000",
                ['/'] = "00000 00001 00010 00100 01000 10000 00000",
                [':'] = "00000 01100 01100 00000 01100 01100 00000",
                ['%'] = "11000 11001 00010 00100 01000 10011 00011",
                [' '] = "00000 00000 00000 00000 00000 00000 00000",
                ['_'] = "00000 00000 00000 00000 00000 00000 11111",
                [','] = "00000 00000 00000 00000 01100 00100 01000",
                ['='] = "00000 00000 11111 00000 11111 00000 00000",
                ['?'] = "01110 10001 00001 00010 00100 00000 00100",
                ['\''] = "00100 00100 01000 00000 00000 00000 00000",
            };
            var d = new Dictionary<char, byte[]>();
            foreach (var (ch, spec) in rows)
                d[ch] = [.. spec.Split(' ').Select(r => Convert.ToByte(r, 2))];
            return d;
        }
    }
}
