using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using NUnit.Framework;
using Repa.Runtime.Plots;

namespace Repa.Tests;

/// <summary>The PNG writer (structure, CRCs, pixels) and the line plot built on it.</summary>
[TestFixture]
public class PlotTests
{
    private string folder = "";

    [SetUp]
    public void SetUp()
    {
        folder = Path.Combine(Path.GetTempPath(), "repa-plot-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
    }

    [TearDown]
    public void TearDown()
    {
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
    }

    /// <summary>A reference bitwise CRC-32, independent of the writer's table.</summary>
    private static uint ReferenceCrc(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (uint)-(int)(c & 1));
        }
        return ~c;
    }

    internal sealed record Decoded(int Width, int Height, byte[] Raw, List<string> ChunkTypes)
    {
        /// <summary>Pixel (x, y) from the filter-0 scanlines.</summary>
        public (byte R, byte G, byte B) At(int x, int y)
        {
            int i = y * (1 + 3 * Width) + 1 + 3 * x;
            return (Raw[i], Raw[i + 1], Raw[i + 2]);
        }
    }

    /// <summary>Parses the file, checking the signature, every chunk's CRC and the IHDR fields, and inflates IDAT.</summary>
    internal static Decoded Decode(string path)
    {
        byte[] f = File.ReadAllBytes(path);
        Assert.That(f.AsSpan(0, 8).ToArray(), Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }));
        int pos = 8, width = 0, height = 0;
        var types = new List<string>();
        var idat = new MemoryStream();
        while (pos < f.Length)
        {
            int len = BinaryPrimitives.ReadInt32BigEndian(f.AsSpan(pos));
            string type = Encoding.ASCII.GetString(f, pos + 4, 4);
            var body = f.AsSpan(pos + 8, len);
            uint crc = BinaryPrimitives.ReadUInt32BigEndian(f.AsSpan(pos + 8 + len));
            Assert.That(crc, Is.EqualTo(ReferenceCrc(f.AsSpan(pos + 4, 4 + len))), $"CRC of {type}");
            types.Add(type);
            if (type == "IHDR")
            {
                Assert.That(len, Is.EqualTo(13));
                width = BinaryPrimitives.ReadInt32BigEndian(body);
                height = BinaryPrimitives.ReadInt32BigEndian(body[4..]);
                Assert.That(body[8..].ToArray(), Is.EqualTo(new byte[] { 8, 2, 0, 0, 0 }), "depth 8, RGB, deflate, filter 0, no interlace");
            }
            else if (type == "IDAT") idat.Write(body);
            pos += 12 + len;
        }
        Assert.That(pos, Is.EqualTo(f.Length));
        Assert.That(types[0], Is.EqualTo("IHDR"));
        Assert.That(types[^1], Is.EqualTo("IEND"));
        idat.Position = 0;
        using var z = new ZLibStream(idat, CompressionMode.Decompress);
        var raw = new MemoryStream();
        z.CopyTo(raw);
        return new Decoded(width, height, raw.ToArray(), types);
    }

    [Test]
    public void CrcMatchesTheStandardCheckValue()
    {
        Assert.That(Png.Crc32("123456789"u8), Is.EqualTo(0xCBF43926u));
        Assert.That(Png.Crc32("IEND"u8), Is.EqualTo(0xAE426082u)); // the well-known IEND chunk CRC
    }

    [Test]
    public void WritesAValidPngWithTheGivenPixels()
    {
        const int w = 7, h = 3;
        var rgb = new byte[w * h * 3];
        for (int i = 0; i < rgb.Length; i++) rgb[i] = (byte)(i * 37 + 11);
        string path = Path.Combine(folder, "sub", "raw.png");
        Png.Write(path, w, h, rgb);
        var d = Decode(path);
        Assert.That((d.Width, d.Height), Is.EqualTo((w, h)));
        Assert.That(d.Raw, Has.Length.EqualTo(h * (1 + 3 * w)));
        for (int y = 0; y < h; y++)
        {
            Assert.That(d.Raw[y * (1 + 3 * w)], Is.EqualTo(0), "filter byte");
            Assert.That(d.Raw.AsSpan(y * (1 + 3 * w) + 1, 3 * w).ToArray(), Is.EqualTo(rgb.AsSpan(y * 3 * w, 3 * w).ToArray()));
        }
        Assert.That(Directory.GetFiles(Path.Combine(folder, "sub")), Has.Length.EqualTo(1), "no temp file left behind");
    }

    [Test]
    public void RejectsAWrongPixelCount()
    {
        Assert.Throws<ArgumentException>(() => Png.Write(Path.Combine(folder, "x.png"), 2, 2, new byte[11]));
    }

    [Test]
    public void PlotHasAWhiteCornerAndTheSeriesColourInsideTheAxes()
    {
        var plot = new LinePlot { Title = "test (a/b): 5%", XLabel = "step", YLabel = "value" };
        var pts = Enumerable.Range(0, 50).Select(i => ((double)i, Math.Sin(i * 0.2) + 1e-3 * i)).ToList();
        pts.Insert(10, (10.5, double.NaN));
        pts.Add((double.PositiveInfinity, 1));
        plot.AddSeries("sin", pts, (200, 30, 40));
        plot.AddSeries("flat", [(0, 0.5), (49, 0.5)], (10, 120, 200));
        string path = Path.Combine(folder, "plot.png");
        plot.Save(path, 640, 400);

        var d = Decode(path);
        Assert.That((d.Width, d.Height), Is.EqualTo((640, 400)));
        Assert.That(d.Raw, Has.Length.EqualTo(400 * (1 + 3 * 640)));
        Assert.That(d.At(0, 0), Is.EqualTo(((byte)255, (byte)255, (byte)255)));
        Assert.That(d.At(639, 399), Is.EqualTo(((byte)255, (byte)255, (byte)255)));

        var (l, t, r, b) = LinePlot.PlotArea(640, 400);
        int Count((byte, byte, byte) c)
        {
            int n = 0;
            for (int y = t + 1; y < b; y++)
                for (int x = l + 1; x < r; x++)
                    if (d.At(x, y) == c) n++;
            return n;
        }
        Assert.That(Count((200, 30, 40)), Is.GreaterThan(300), "the 2 px sine line is drawn inside the axes");
        Assert.That(Count((10, 120, 200)), Is.GreaterThan(300), "the flat line is drawn inside the axes");
        // Nothing of the series colour outside the plot area except the legend swatch (which is inside too).
        int outside = 0;
        for (int y = 0; y < 400; y++)
            for (int x = 0; x < 640; x++)
                if ((x < l || x > r || y < t || y > b) && d.At(x, y) == (200, 30, 40)) outside++;
        Assert.That(outside, Is.EqualTo(0), "lines are clipped to the axes");
    }

    [Test]
    public void LogYPlotSkipsNonPositiveValues()
    {
        var plot = new LinePlot { Title = "log", LogY = true };
        plot.AddSeries("decay", Enumerable.Range(0, 30).Select(i => ((double)i, i == 5 ? -1.0 : Math.Pow(10, -i / 10.0))).ToList(), (0, 0, 255));
        string path = Path.Combine(folder, "log.png");
        plot.Save(path);
        var d = Decode(path);
        Assert.That((d.Width, d.Height), Is.EqualTo((800, 500)));
        Assert.That(d.At(1, 498), Is.EqualTo(((byte)255, (byte)255, (byte)255)));
    }

    [Test]
    public void EmptyPlotStillRenders()
    {
        string path = Path.Combine(folder, "empty.png");
        new LinePlot().Save(path);
        Assert.That(Decode(path).Width, Is.EqualTo(800));
    }

    [TestCase(0.0, 0.2, ExpectedResult = "0.0")]
    [TestCase(0.4, 0.2, ExpectedResult = "0.4")]
    [TestCase(1500.0, 500.0, ExpectedResult = "1500")]
    [TestCase(2e-4, 1e-4, ExpectedResult = "2E-4")]
    [TestCase(-0.05, 0.05, ExpectedResult = "-0.05")]
    public string TickLabels(double v, double step) => LinePlot.FormatTick(v, step);

    [Test]
    public void NiceTicksCoverTheRangeWithRoundSteps()
    {
        var (lo, hi, ticks) = LinePlot.NiceTicks(0.13, 9.7, 6);
        Assert.That(lo, Is.LessThanOrEqualTo(0.13));
        Assert.That(hi, Is.GreaterThanOrEqualTo(9.7));
        Assert.That(ticks.Length, Is.InRange(4, 8));
        Assert.That(ticks[1] - ticks[0], Is.EqualTo(2).Within(1e-12));
    }

    [Test]
    public void SaveLossCurvesWritesAPlot()
    {
        string metrics = Path.Combine(folder, "metrics.jsonl");
        var lines = new List<string>();
        for (int s = 1; s <= 60; s++)
        {
            double denoise = 1.0 / Math.Sqrt(s) + 0.05 * Math.Sin(s), proj = -0.3 - 0.5 * (1 - Math.Exp(-s / 20.0));
            lines.Add(FormattableString.Invariant(
                $"{{\"Step\":{s},\"Loss\":{denoise + 0.5 * proj},\"Denoise\":{denoise},\"Proj\":{proj},\"GradNorm\":1.5,\"ImagesPerSecond\":100,\"Seconds\":0.1}}"));
        }
        lines.Add("{\"Step\":61,\"Loss\":\"NaN\",\"Denoise\":\"NaN\",\"Proj\":0}");
        lines.Add("{\"Step\":62,\"Lo"); // a line cut short by a crash
        File.WriteAllLines(metrics, lines);

        string png = Path.Combine(folder, "loss.png");
        LinePlot.SaveLossCurves(metrics, png);
        Assert.That(File.Exists(png), Is.True);
        var d = Decode(png);
        Assert.That((d.Width, d.Height), Is.EqualTo((800, 500)));
        Assert.That(d.At(0, 0), Is.EqualTo(((byte)255, (byte)255, (byte)255)));

        if (Environment.GetEnvironmentVariable("REPA_KEEP_PLOT") is { Length: > 0 } keep) File.Copy(png, keep, overwrite: true);
    }
}
