using System.Buffers.Binary;
using System.IO.Compression;
using NUnit.Framework;
using Repa.Runtime.Plots;

namespace Repa.Tests;

/// <summary>
/// A PNG encoder written for the tests, independent of the reader: any colour type and bit depth, a chosen filter per
/// row (the forward filters of the PNG spec), optional palette and tRNS, IDAT split into several chunks.
/// </summary>
internal static class TestPng
{
    /// <param name="samples">Per row, the packed sample bytes (stride = ceil(width * channels * depth / 8)).</param>
    public static byte[] Encode(int width, int height, int colorType, int depth, byte[] samples, Func<int, int> filterOfRow,
        byte[]? palette = null, byte[]? trns = null, int idatChunks = 1, int interlace = 0)
    {
        int channels = colorType switch { 0 => 1, 2 => 3, 3 => 1, 4 => 2, _ => 4 };
        int stride = (width * channels * depth + 7) / 8, bpp = Math.Max(1, channels * depth / 8);
        Assert.That(samples, Has.Length.EqualTo(stride * height), "test image size");
        var filtered = new MemoryStream();
        var prev = new byte[stride];
        for (int y = 0; y < height; y++)
        {
            var cur = samples.AsSpan(y * stride, stride).ToArray();
            int f = filterOfRow(y);
            filtered.WriteByte((byte)f);
            for (int i = 0; i < stride; i++)
            {
                int a = i >= bpp ? cur[i - bpp] : 0, b = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
                int predictor = f switch
                {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => (a + b) / 2,
                    _ => Paeth(a, b, c),
                };
                filtered.WriteByte((byte)(cur[i] - predictor));
            }
            prev = cur;
        }
        var z = new MemoryStream();
        using (var zs = new ZLibStream(z, CompressionLevel.Optimal, leaveOpen: true)) zs.Write(filtered.ToArray());
        var compressed = z.ToArray();

        var file = new MemoryStream();
        file.Write([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = (byte)depth;
        ihdr[9] = (byte)colorType;
        ihdr[12] = (byte)interlace;
        Chunk(file, "IHDR", ihdr);
        Chunk(file, "tEXt", "Comment\0made by the tests"u8.ToArray()); // an ancillary chunk the reader must skip
        if (palette != null) Chunk(file, "PLTE", palette);
        if (trns != null) Chunk(file, "tRNS", trns);
        int part = (compressed.Length + idatChunks - 1) / idatChunks;
        for (int start = 0; start < compressed.Length; start += part)
            Chunk(file, "IDAT", compressed.AsSpan(start, Math.Min(part, compressed.Length - start)).ToArray());
        Chunk(file, "IEND", []);
        return file.ToArray();
    }

    /// <summary>An 8-bit image with interleaved channels, every row filtered with <paramref name="filter"/>.</summary>
    public static void Write(string path, int width, int height, int colorType, byte[] pixels, int filter = 0) =>
        File.WriteAllBytes(path, Encode(width, height, colorType, 8, pixels, _ => filter));

    private static int Paeth(int a, int b, int c)
    {
        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        var word = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(word, data.Length);
        s.Write(word);
        var t = System.Text.Encoding.ASCII.GetBytes(type);
        s.Write(t);
        s.Write(data);
        BinaryPrimitives.WriteUInt32BigEndian(word, Png.Crc32(data, Png.Crc32(t)));
        s.Write(word);
    }
}

/// <summary>The PNG reader: our writer's files, hand-made files of every colour type and filter, and damaged files.</summary>
[TestFixture]
public class PngReaderTests
{
    private string folder = "";

    [SetUp]
    public void MakeFolder() => Directory.CreateDirectory(folder = Path.Combine(Path.GetTempPath(), "repa-png-" + Guid.NewGuid().ToString("N")));

    [TearDown]
    public void RemoveFolder() => Directory.Delete(folder, true);

    private static byte[] Noise(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Test]
    public void ReadsWhatOurWriterWrites()
    {
        string path = Path.Combine(folder, "w.png");
        var rgb = Noise(7 * 5 * 3, 1);
        Png.Write(path, 7, 5, rgb);
        var image = Png.Read(path);
        Assert.That((image.Width, image.Height, image.Channels), Is.EqualTo((7, 5, 3)));
        Assert.That(image.Pixels, Is.EqualTo(rgb));
        Assert.That(Png.ReadInfo(path), Is.EqualTo(new PngInfo(7, 5, 8, 2)));
    }

    // Colour types 0 (grey), 2 (RGB), 4 (grey + alpha), 6 (RGBA); filter 5 = each row a different filter (y % 5).
    [Test]
    public void DecodesEveryFilterTypeForEveryEightBitFormat([Values(0, 2, 4, 6)] int colorType, [Values(0, 1, 2, 3, 4, 5)] int filter)
    {
        int channels = colorType switch { 0 => 1, 2 => 3, 4 => 2, _ => 4 };
        const int w = 9, h = 6;
        // Smooth plus noise: the predictors see both flat and jumpy neighbourhoods (and byte wrap-around).
        var pixels = new byte[w * h * channels];
        var rng = new Random(colorType * 10 + filter);
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (byte)(i * 7 % 256 ^ rng.Next(0, 4) * 60);
        string path = Path.Combine(folder, "f.png");
        File.WriteAllBytes(path, TestPng.Encode(w, h, colorType, 8, pixels, y => filter == 5 ? y % 5 : filter, idatChunks: 3));
        var image = Png.Read(path);
        Assert.That((image.Width, image.Height, image.Channels), Is.EqualTo((w, h, channels)));
        Assert.That(image.Pixels, Is.EqualTo(pixels));
    }

    [TestCase(8)]
    [TestCase(4)]
    [TestCase(2)]
    [TestCase(1)]
    public void PaletteImagesAreExpandedToRgb(int depth)
    {
        const int w = 5, h = 3; // 5 is not a multiple of 8 / depth: rows end mid-byte
        int entries = 1 << Math.Min(depth, 2);
        var palette = new byte[entries * 3];
        for (int i = 0; i < palette.Length; i++) palette[i] = (byte)(17 * i + 3);
        var index = new int[w * h];
        for (int i = 0; i < index.Length; i++) index[i] = (i * 3 + 1) % entries;
        int stride = (w * depth + 7) / 8;
        var packed = new byte[stride * h];
        for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
        {
            int bit = x * depth;
            packed[y * stride + bit / 8] |= (byte)(index[y * w + x] << (8 - depth - bit % 8));
        }
        string path = Path.Combine(folder, "p.png");
        File.WriteAllBytes(path, TestPng.Encode(w, h, 3, depth, packed, y => y % 5, palette));
        var image = Png.Read(path);
        Assert.That(image.Channels, Is.EqualTo(3));
        var expected = index.SelectMany(i => new[] { palette[3 * i], palette[3 * i + 1], palette[3 * i + 2] }).ToArray();
        Assert.That(image.Pixels, Is.EqualTo(expected));

        // With tRNS the palette entries get alphas; entries past the tRNS list are opaque.
        File.WriteAllBytes(path, TestPng.Encode(w, h, 3, depth, packed, _ => 0, palette, trns: [10]));
        var rgba = Png.Read(path);
        Assert.That(rgba.Channels, Is.EqualTo(4));
        for (int i = 0; i < index.Length; i++)
            Assert.That(rgba.Pixels[4 * i + 3], Is.EqualTo(index[i] == 0 ? 10 : 255), $"alpha of pixel {i}");
    }

    [Test]
    public void LowBitGreyIsScaledToTheFullRange()
    {
        // 2-bit grey levels 0, 1, 2, 3 are 0, 85, 170, 255; a row of 5 pixels ends mid-byte.
        var packed = new byte[] { 0b00_01_10_11, 0b11_000000 };
        string path = Path.Combine(folder, "g.png");
        File.WriteAllBytes(path, TestPng.Encode(5, 1, 0, 2, packed, _ => 1));
        Assert.That(Png.Read(path).Pixels, Is.EqualTo(new byte[] { 0, 85, 170, 255, 255 }));
        File.WriteAllBytes(path, TestPng.Encode(3, 1, 0, 1, [0b101_00000], _ => 0));
        Assert.That(Png.Read(path).Pixels, Is.EqualTo(new byte[] { 255, 0, 255 }));
    }

    [Test]
    public void DamagedFilesAreNamedInOneSentence()
    {
        string path = Path.Combine(folder, "bad.png");
        var good = TestPng.Encode(4, 4, 2, 8, Noise(48, 3), _ => 4);

        void Expect(byte[] bytes, string why)
        {
            File.WriteAllBytes(path, bytes);
            var e = Assert.Throws<InvalidDataException>(() => Png.Read(path))!;
            Assert.That(e.Message, Does.Contain(path).And.Contain(why));
            Assert.That(e.Message, Does.Not.Contain("\n"));
        }

        var crc = (byte[])good.Clone();
        crc[45] ^= 1; // inside the tEXt chunk's data: its CRC no longer matches
        Expect(crc, "CRC");
        Expect(good[..^12], "IEND");                    // IEND cut off
        Expect(good[..60], "truncated");                 // cut inside a chunk
        Expect("GIF89a-not-a-png"u8.ToArray(), "not a PNG");
        Expect(TestPng.Encode(2, 2, 0, 16, new byte[8], _ => 0), "16 bits");
        Expect(TestPng.Encode(2, 2, 2, 8, new byte[12], _ => 0, interlace: 1), "interlaced");
        Expect(TestPng.Encode(2, 1, 3, 8, [0, 2], _ => 0, palette: [1, 2, 3, 4, 5, 6]), "palette entry 2");
        Expect(TestPng.Encode(2, 1, 3, 8, [0, 1], _ => 0), "PLTE");
        var filter = TestPng.Encode(2, 2, 0, 8, new byte[4], y => y == 1 ? 7 : 0); // the encoder writes the byte as given
        Expect(filter, "filter type 7");
        Assert.Throws<FileNotFoundException>(() => Png.Read(Path.Combine(folder, "none.png")));
    }
}
