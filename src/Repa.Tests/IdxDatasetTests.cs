using System.Buffers.Binary;
using System.IO.Compression;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Repa.Runtime.Data;

namespace Repa.Tests;

/// <summary>
/// IDX datasets: hand-built tiny files (raw and gzip) check shapes, values and the exact batch layout; every error a
/// user can cause gives one sentence naming the file; the real Fashion-MNIST is checked when it is installed.
/// </summary>
[TestFixture]
public class IdxDatasetTests
{
    private string dir = "";

    [SetUp]
    public void SetUp()
    {
        dir = Path.Combine(Path.GetTempPath(), "repa-idx-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
    }

    [TearDown]
    public void TearDown()
    {
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
    }

    private string PathOf(string name) => Path.Combine(dir, name);

    // ---- building files ----

    private static byte[] Idx(int magic, int[] dims, byte[] data)
    {
        var file = new byte[4 + 4 * dims.Length + data.Length];
        BinaryPrimitives.WriteInt32BigEndian(file, magic);
        for (int d = 0; d < dims.Length; d++) BinaryPrimitives.WriteInt32BigEndian(file.AsSpan(4 + 4 * d), dims[d]);
        data.CopyTo(file, 4 + 4 * dims.Length);
        return file;
    }

    private static byte[] Images(int n, int h, int w, byte[] pixels) => Idx(0x803, [n, h, w], pixels);
    private static byte[] Labels(byte[] labels) => Idx(0x801, [labels.Length], labels);

    private static byte[] Gzip(byte[] raw)
    {
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Optimal, leaveOpen: true)) gz.Write(raw);
        return ms.ToArray();
    }

    private string Write(string name, byte[] bytes)
    {
        string p = PathOf(name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    // 3 images of 3 rows x 2 columns; pixel (i, y, x) = 40*i + 10*y + x, plus one white and one black pixel.
    private const int N = 3, H = 3, W = 2;
    private static readonly byte[] TinyLabels = [2, 0, 4];

    private static byte[] TinyPixels()
    {
        var p = new byte[N * H * W];
        for (int i = 0; i < N; i++)
        for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            p[(i * H + y) * W + x] = (byte)(40 * i + 10 * y + x);
        p[^1] = 255;
        p[1] = 0;
        return p;
    }

    private (string Images, string Labels) WriteTiny(bool gzip, string prefix = "tiny")
    {
        byte[] img = Images(N, H, W, TinyPixels()), lab = Labels(TinyLabels);
        return (Write(prefix + "-images", gzip ? Gzip(img) : img), Write(prefix + "-labels", gzip ? Gzip(lab) : lab));
    }

    private static float Scaled(int x) => (float)(x / 127.5 - 1.0);

    /// <summary>Asserts the message names the file and is a single sentence (one final full stop, no ". X" inside).</summary>
    private static void AssertOneSentence(Exception e, string file)
    {
        TestContext.Out.WriteLine($"{e.GetType().Name}: {e.Message}");
        Assert.That(e.Message, Does.Contain(file), "the message names the file");
        Assert.That(e.Message, Does.EndWith("."));
        Assert.That(Regex.IsMatch(e.Message, @"\.\s+[A-Z]"), Is.False, "one sentence");
        Assert.That(e.Message, Does.Not.Contain("\n"));
    }

    // ---- loading ----

    [TestCase(false)]
    [TestCase(true)]
    public void LoadsShapesPixelsAndLabels(bool gzip)
    {
        var (imgPath, labPath) = WriteTiny(gzip);
        var ds = IdxDataset.Load(imgPath, labPath);
        Assert.Multiple(() =>
        {
            Assert.That(ds.Count, Is.EqualTo(N));
            Assert.That(ds.Channels, Is.EqualTo(1));
            Assert.That(ds.Height, Is.EqualTo(H));
            Assert.That(ds.Width, Is.EqualTo(W));
            Assert.That(ds.NumClasses, Is.EqualTo(5), "max label 4 + 1");
            Assert.That(ds.ImagesPath, Is.EqualTo(imgPath));
            Assert.That(ds.LabelsPath, Is.EqualTo(labPath));
        });
        var pixels = TinyPixels();
        for (int i = 0; i < N; i++)
        {
            Assert.That(ds.Image(i).ToArray(), Is.EqualTo(pixels.AsSpan(i * H * W, H * W).ToArray()), $"image {i}");
            Assert.That(ds.Label(i), Is.EqualTo(TinyLabels[i]), $"label {i}");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => ds.Image(N));
        Assert.Throws<ArgumentOutOfRangeException>(() => ds.Label(-1));
    }

    [Test]
    public void GzipIsDetectedByMagicNotByName()
    {
        // Compressed content under a plain name and raw content under a .gz name both load.
        string img = Write("a-images", Gzip(Images(N, H, W, TinyPixels())));
        string lab = Write("a-labels.gz", Labels(TinyLabels));
        var ds = IdxDataset.Load(img, lab);
        Assert.That(ds.Count, Is.EqualTo(N));
        Assert.That(ds.Image(2)[^1], Is.EqualTo(255));
        Assert.That(ds.Label(2), Is.EqualTo(4));
    }

    [TestCase(true, false)]
    [TestCase(false, false)]
    [TestCase(true, true)]
    [TestCase(false, true)]
    public void LoadFolderFindsStandardNames(bool train, bool gzip)
    {
        string prefix = train ? "train" : "t10k", ext = gzip ? ".gz" : "";
        byte[] img = Images(N, H, W, TinyPixels()), lab = Labels(TinyLabels);
        Write($"{prefix}-images-idx3-ubyte{ext}", gzip ? Gzip(img) : img);
        Write($"{prefix}-labels-idx1-ubyte{ext}", gzip ? Gzip(lab) : lab);
        // The other split holds a single image, so loading the wrong split would show in the count.
        string other = train ? "t10k" : "train";
        Write($"{other}-images-idx3-ubyte", Images(1, H, W, new byte[H * W]));
        Write($"{other}-labels-idx1-ubyte", Labels([1]));

        var ds = IdxDataset.LoadFolder(dir, train);
        Assert.That(ds.Count, Is.EqualTo(N));
        Assert.That(ds.ImagesPath, Is.EqualTo(PathOf($"{prefix}-images-idx3-ubyte{ext}")));
        Assert.That(ds.Label(0), Is.EqualTo(2));
    }

    // ---- batches ----

    [Test]
    public void FillBatchScalesAndCentresExactly()
    {
        var (imgPath, labPath) = WriteTiny(gzip: false);
        var ds = IdxDataset.Load(imgPath, labPath);
        const int pad = 6; // 3x2 in 6x6: top (6-3)/2 = 1, left (6-2)/2 = 2; the odd extra row goes to the bottom
        int[] idx = [2, 0, 2, 1];
        var images = new float[idx.Length * pad * pad];
        var labels = new int[idx.Length];
        images.AsSpan().Fill(float.NaN); // every element must be written
        ds.FillBatch(idx, images, labels, pad);

        Assert.That(labels, Is.EqualTo(new[] { 4, 2, 4, 0 }));
        var pixels = TinyPixels();
        for (int b = 0; b < idx.Length; b++)
        for (int y = 0; y < pad; y++)
        for (int x = 0; x < pad; x++)
        {
            int iy = y - 1, ix = x - 2;
            float expected = iy >= 0 && iy < H && ix >= 0 && ix < W ? Scaled(pixels[(idx[b] * H + iy) * W + ix]) : -1f;
            Assert.That(images[(b * pad + y) * pad + x], Is.EqualTo(expected), $"b={b} y={y} x={x}");
        }
        // Endpoints are exact: black is -1, white is +1; 51 is -0.6.
        Assert.That(images[(0 * pad + 3) * pad + 3], Is.EqualTo(1f), "white pixel of image 2");
        Assert.That(images[(1 * pad + 1) * pad + 3], Is.EqualTo(-1f), "black pixel of image 0");
        Assert.That(Scaled(51), Is.EqualTo(-0.6f));
    }

    [Test]
    public void FillBatchWithoutPaddingIsTheScaledImage()
    {
        var (imgPath, labPath) = WriteTiny(gzip: true);
        var ds = IdxDataset.Load(imgPath, labPath);
        var sq = Images(2, 3, 3, [0, 1, 2, 3, 4, 5, 6, 7, 8, 255, 254, 128, 127, 126, 0, 9, 10, 11]);
        var ds2 = IdxDataset.Load(Write("sq-images", sq), Write("sq-labels", Labels([9, 3])));
        var images = new float[2 * 9];
        var labels = new int[2];
        ds2.FillBatch([1, 0], images, labels, 3);
        Assert.That(labels, Is.EqualTo(new[] { 3, 9 }));
        Assert.That(images.AsSpan(0, 9).ToArray(), Is.EqualTo(ds2.Image(1).ToArray().Select(p => Scaled(p)).ToArray()));
        Assert.That(images.AsSpan(9, 9).ToArray(), Is.EqualTo(ds2.Image(0).ToArray().Select(p => Scaled(p)).ToArray()));
        Assert.That(ds2.NumClasses, Is.EqualTo(10));

        // An empty batch is allowed and writes nothing.
        ds.FillBatch([], Span<float>.Empty, Span<int>.Empty, 4);
    }

    [Test]
    public void FillBatchRejectsBadArguments()
    {
        var (imgPath, labPath) = WriteTiny(gzip: false);
        var ds = IdxDataset.Load(imgPath, labPath);
        var e = Assert.Throws<InvalidDataException>(() => ds.FillBatch([0], new float[2 * 2], new int[1], 2))!;
        AssertOneSentence(e, imgPath);
        Assert.That(e.Message, Does.Contain("3x2"));
        Assert.Throws<ArgumentException>(() => ds.FillBatch([0, 1], new float[36], new int[2], 6));
        Assert.Throws<ArgumentException>(() => ds.FillBatch([0, 1], new float[72], new int[1], 6));
        Assert.Throws<ArgumentOutOfRangeException>(() => ds.FillBatch([0, 3], new float[72], new int[2], 6));
    }

    // ---- errors ----

    [Test]
    public void MissingFileNamesItAndSaysWhatToDo()
    {
        var (imgPath, _) = WriteTiny(gzip: false);
        string missing = PathOf("nope-labels");
        var e = Assert.Throws<FileNotFoundException>(() => IdxDataset.Load(imgPath, missing))!;
        AssertOneSentence(e, missing);
        Assert.That(e.FileName, Is.EqualTo(missing));

        var f = Assert.Throws<FileNotFoundException>(() => IdxDataset.LoadFolder(dir, train: true))!;
        AssertOneSentence(f, PathOf("train-images-idx3-ubyte"));
    }

    [Test]
    public void MissingDefaultFileSuggestsTheDebianPackage()
    {
        string missing = Path.Combine(IdxDataset.DefaultFashionMnistFolder, "no-such-images-idx3-ubyte.gz");
        var e = Assert.Throws<FileNotFoundException>(() => IdxDataset.Load(missing, missing))!;
        AssertOneSentence(e, missing);
        Assert.That(e.Message, Does.Contain("apt-get install dataset-fashion-mnist"));
    }

    [Test]
    public void WrongMagicIsRejected()
    {
        var (imgPath, labPath) = WriteTiny(gzip: false);
        // Swapped arguments: each file is valid IDX but the wrong kind.
        var e = Assert.Throws<InvalidDataException>(() => IdxDataset.Load(labPath, imgPath))!;
        AssertOneSentence(e, labPath);
        Assert.That(e.Message, Does.Contain("label file"));

        string text = Write("notes.txt", "hello, this is not IDX"u8.ToArray());
        var t = Assert.Throws<InvalidDataException>(() => IdxDataset.Load(text, labPath))!;
        AssertOneSentence(t, text);

        string floats = Write("floats-images", Idx(0x0D03, [1, 1, 1], new byte[4]));
        var f = Assert.Throws<InvalidDataException>(() => IdxDataset.Load(floats, labPath))!;
        AssertOneSentence(f, floats);
        Assert.That(f.Message, Does.Contain("0x0d"));

        string empty = Write("empty-images", []);
        AssertOneSentence(Assert.Throws<InvalidDataException>(() => IdxDataset.Load(empty, labPath))!, empty);
    }

    [TestCase(false)]
    [TestCase(true)]
    public void TruncatedDataIsRejected(bool gzip)
    {
        var (_, labPath) = WriteTiny(gzip);
        byte[] full = Images(N, H, W, TinyPixels());
        byte[] cut = full[..^1];
        string img = Write("cut-images", gzip ? Gzip(cut) : cut);
        var e = Assert.Throws<InvalidDataException>(() => IdxDataset.Load(img, labPath))!;
        AssertOneSentence(e, img);
        Assert.That(e.Message, Does.Contain("truncated"));

        byte[] header = full[..10]; // inside the dimensions
        string hdr = Write("hdr-images", gzip ? Gzip(header) : header);
        AssertOneSentence(Assert.Throws<InvalidDataException>(() => IdxDataset.Load(hdr, labPath))!, hdr);

        byte[] longer = [.. full, 7];
        string extra = Write("extra-images", gzip ? Gzip(longer) : longer);
        AssertOneSentence(Assert.Throws<InvalidDataException>(() => IdxDataset.Load(extra, labPath))!, extra);
    }

    [Test]
    public void TruncatedLabelsAndDamagedGzipAreRejected()
    {
        var (imgPath, _) = WriteTiny(gzip: false);
        string labCut = Write("cut-labels", Labels(TinyLabels)[..^1]);
        var e = Assert.Throws<InvalidDataException>(() => IdxDataset.Load(imgPath, labCut))!;
        AssertOneSentence(e, labCut);

        // A gzip stream cut in half: either the decompressor or the length check must name the file.
        byte[] gz = Gzip(Images(N, H, W, TinyPixels()));
        string half = Write("half-images", gz[..(gz.Length / 2)]);
        AssertOneSentence(Assert.Throws<InvalidDataException>(() => IdxDataset.Load(half, imgPath))!, half);

        // Garbage after the gzip magic.
        string bad = Write("bad-images", [0x1f, 0x8b, 0x08, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        AssertOneSentence(Assert.Throws<InvalidDataException>(() => IdxDataset.Load(bad, imgPath))!, bad);
    }

    [Test]
    public void CountMismatchIsRejected()
    {
        var (imgPath, _) = WriteTiny(gzip: false);
        string lab = Write("two-labels", Labels([1, 2]));
        var e = Assert.Throws<InvalidDataException>(() => IdxDataset.Load(imgPath, lab))!;
        AssertOneSentence(e, lab);
        Assert.That(e.Message, Does.Contain(imgPath));
        Assert.That(e.Message, Does.Contain("2 labels").And.Contain("3 images"));
    }

    // ---- the real Fashion-MNIST ----

    private static string RequireFashionMnist()
    {
        string folder = IdxDataset.DefaultFashionMnistFolder;
        if (!Directory.Exists(folder))
        {
            string reason = $"Fashion-MNIST is not installed at {folder}; run scripts/install-data.sh (apt-get install dataset-fashion-mnist) to enable this test.";
            TestContext.Out.WriteLine(reason);
            Assert.Ignore(reason);
        }
        return folder;
    }

    [TestCase(true, 60000)]
    [TestCase(false, 10000)]
    public void RealFashionMnist(bool train, int count)
    {
        var ds = IdxDataset.LoadFolder(RequireFashionMnist(), train);
        Assert.Multiple(() =>
        {
            Assert.That(ds.Count, Is.EqualTo(count));
            Assert.That(ds.Channels, Is.EqualTo(1));
            Assert.That(ds.Height, Is.EqualTo(28));
            Assert.That(ds.Width, Is.EqualTo(28));
            Assert.That(ds.NumClasses, Is.EqualTo(10));
        });
        var perClass = new int[ds.NumClasses];
        for (int i = 0; i < ds.Count; i++) perClass[ds.Label(i)]++;
        Assert.That(perClass, Is.All.EqualTo(count / 10), "Fashion-MNIST is balanced");

        // A padded batch keeps a 2-pixel black border around each 28x28 image.
        int[] idx = [0, count - 1];
        var images = new float[2 * 32 * 32];
        var labels = new int[2];
        ds.FillBatch(idx, images, labels, 32);
        Assert.That(labels, Is.EqualTo(new[] { ds.Label(0), ds.Label(count - 1) }));
        for (int b = 0; b < 2; b++)
        for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++)
        {
            float v = images[(b * 32 + y) * 32 + x];
            bool inside = y >= 2 && y < 30 && x >= 2 && x < 30;
            Assert.That(v, Is.EqualTo(inside ? Scaled(ds.Image(idx[b])[(y - 2) * 28 + x - 2]) : -1f));
        }
        Assert.That(images.Max(), Is.EqualTo(1f).Within(0.05f), "images reach near-white");
    }
}
