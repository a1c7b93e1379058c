namespace Repa.Runtime.Plots;

/// <summary>
/// An RGB raster (row-major, 3 bytes a pixel, white when created) with the few primitives the plots and sample grids
/// draw with: pixels, lines, filled boxes and text in the built-in <see cref="Font"/>. Drawing outside the canvas (or
/// outside <see cref="Clip"/>) is ignored. <see cref="Pixels"/> is what <see cref="Png.Write"/> takes.
/// </summary>
internal sealed class Canvas(int width, int height)
{
    /// <summary>Width in pixels of <paramref name="s"/> drawn by <see cref="Text"/> at <paramref name="scale"/> (5 px glyphs, 1 px gaps).</summary>
    public static int TextWidth(string s, int scale) => s.Length == 0 ? 0 : (s.Length * 6 - 1) * scale;

    /// <summary>Height in pixels of a line of text at <paramref name="scale"/>.</summary>
    public static int TextHeight(int scale) => 7 * scale;

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
internal static class Font
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
            ['['] = "01110 01000 01000 01000 01000 01000 01110",
            [']'] = "01110 00010 00010 00010 00010 00010 01110",
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
