using System.Diagnostics;
using NUnit.Framework;
using Repa.Runtime.Encoders;

namespace Repa.Tests;

/// <summary>
/// The ONNX Runtime encoder with the real ResNet-18 from the NuGet package (restored with Repa.Runtime, so present
/// wherever the solution builds). Two sessions (224 and 128 px) are shared by the fixture to keep it fast.
/// </summary>
[TestFixture]
public sealed class OnnxEncoderTests
{
    private OnnxEncoder _e224 = null!, _e128 = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        _e224 = OnnxEncoder.ResNet18();
        _e128 = OnnxEncoder.ResNet18(inputSize: 128);
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        _e224.Dispose();
        _e128.Dispose();
    }

    /// <summary>Smooth, distinct test images in [-1, 1]: a different pattern per seed.</summary>
    private static float[] Images(int n, int c, int h, int w, int seed)
    {
        var x = new float[n * c * h * w];
        var rng = new Random(seed);
        for (int i = 0; i < n; i++)
        {
            double fx = 0.05 + rng.NextDouble() * 0.4, fy = 0.05 + rng.NextDouble() * 0.4, ph = rng.NextDouble() * 6;
            for (int ch = 0; ch < c; ch++)
            for (int y = 0; y < h; y++)
            for (int xx = 0; xx < w; xx++)
                x[((i * c + ch) * h + y) * w + xx] =
                    (float)Math.Clamp(Math.Sin(fx * xx + ph + ch) * Math.Cos(fy * y) + 0.1 * (rng.NextDouble() - 0.5), -1, 1);
        }
        return x;
    }

    private static void AssertFiniteNonNegative(float[] f)
    {
        Assert.That(f.All(float.IsFinite), "features must be finite");
        Assert.That(f.Min(), Is.GreaterThanOrEqualTo(0f), "stage-3 features come after a ReLU");
        Assert.That(f.Max(), Is.GreaterThan(0f), "features must not be all zero");
    }

    [Test]
    public void Stage3At224Gives196TokensOf256()
    {
        var f = _e224.Encode(Images(2, 3, 32, 32, 1), 2, 3, 32, 32, out int t, out int d);
        Assert.That((t, d), Is.EqualTo((196, 256)));
        Assert.That(f, Has.Length.EqualTo(2 * 196 * 256));
        AssertFiniteNonNegative(f);
    }

    [Test]
    public void Stage3At128Gives64TokensOf256()
    {
        var f = _e128.Encode(Images(3, 1, 28, 28, 2), 3, 1, 28, 28, out int t, out int d);
        Assert.That((t, d), Is.EqualTo((64, 256)));
        Assert.That(f, Has.Length.EqualTo(3 * 64 * 256));
        AssertFiniteNonNegative(f);
    }

    [Test]
    public void DifferentImagesGiveDifferentFeaturesAndSameImageGivesSame()
    {
        var a = Images(1, 3, 28, 28, 3);
        var b = Images(1, 3, 28, 28, 4);
        var batch = a.Concat(b).Concat(a).ToArray();
        var f = _e128.Encode(batch, 3, 3, 28, 28, out int t, out int d);
        int per = t * d;
        var fa = f.AsSpan(0, per);
        var fb = f.AsSpan(per, per);
        var fa2 = f.AsSpan(2 * per, per);
        Assert.That(fa.SequenceEqual(fa2), "the same image in one batch must give identical features");
        double diff = 0, norm = 0;
        for (int i = 0; i < per; i++)
        {
            diff += Math.Abs(fa[i] - fb[i]);
            norm += Math.Abs(fa[i]);
        }
        Assert.That(diff / norm, Is.GreaterThan(0.05), "different images must give clearly different features");

        // Calling again is deterministic.
        var again = _e128.Encode(batch, 3, 3, 28, 28, out _, out _);
        Assert.That(again.AsSpan().SequenceEqual(f), "a repeated call must give identical features");
    }

    [Test]
    public void GreyIsReplicatedToRgb()
    {
        var grey = Images(2, 1, 20, 20, 5);
        var rgb = new float[2 * 3 * 400];
        for (int i = 0; i < 2; i++)
        for (int c = 0; c < 3; c++)
            grey.AsSpan(i * 400, 400).CopyTo(rgb.AsSpan((i * 3 + c) * 400, 400));
        var fg = _e128.Encode(grey, 2, 1, 20, 20, out _, out _);
        var fc = _e128.Encode(rgb, 2, 3, 20, 20, out _, out _);
        Assert.That(fg.AsSpan().SequenceEqual(fc));
    }

    [Test]
    public void RgbBytesAreFedAsBgrMinusTheMeans()
    {
        // Two RGB byte images [2, 3, 24, 24] with distinct channels.
        var bytes = new byte[2 * 3 * 576];
        for (int i = 0; i < bytes.Length; i++) bytes[i] = (byte)((i * 37 + i / 576 * 90) % 256);
        var viaBytes = _e128.Encode(bytes, 2, 3, 24, 24, out int t, out int d);
        var viaFloats = _e128.Encode(bytes.Select(b => (float)(b / 127.5 - 1)).ToArray(), 2, 3, 24, 24, out _, out _);
        Assert.That((t, d), Is.EqualTo((64, 256)));
        Assert.That(viaBytes, Is.EqualTo(viaFloats), "bytes are the [-1, 1] floats the training inputs use");

        // The same network told the image is already BGR (no swap) with the means in that order gives the same features
        // for the channel-reversed image: so ResNet18() feeds B, G, R minus 103.06, 115.90, 123.15.
        var swapped = new byte[bytes.Length];
        for (int i = 0; i < 2; i++)
        for (int c = 0; c < 3; c++)
            bytes.AsSpan((i * 3 + c) * 576, 576).CopyTo(swapped.AsSpan((i * 3 + 2 - c) * 576, 576));
        using var plain = new OnnxEncoder(OnnxEncoder.FindResNet18(), "Input247", "ReLU347_Output_0", 128,
            [103.06f, 115.90f, 123.15f], [1f, 1f, 1f], bgr: false, pixelScale: 255f);
        var direct = plain.Encode(swapped, 2, 3, 24, 24, out _, out _);
        for (int k = 0; k < direct.Length; k++)
            Assert.That(direct[k], Is.EqualTo(viaBytes[k]).Within(1e-4f * Math.Max(1f, Math.Abs(viaBytes[k]))), $"feature {k}");
        Assert.That(_e128.Encode(swapped, 2, 3, 24, 24, out _, out _), Is.Not.EqualTo(viaBytes), "channel order matters");
    }

    [Test]
    public void ManyImagesAreChunkedAndMatchSmallBatches()
    {
        // 19 images cross the 16-image chunk; each must match the same image encoded in a batch of its own.
        const int n = 19;
        var x = Images(n, 1, 28, 28, 6);
        var all = _e128.Encode(x, n, 1, 28, 28, out int t, out int d);
        int per = t * d;
        foreach (int i in new[] { 0, 15, 16, 18 })
        {
            var one = _e128.Encode(x.AsSpan(i * 784, 784), 1, 1, 28, 28, out _, out _);
            float maxDiff = 0, maxAbs = 0;
            for (int k = 0; k < per; k++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(one[k] - all[i * per + k]));
                maxAbs = Math.Max(maxAbs, Math.Abs(one[k]));
            }
            Assert.That(maxDiff, Is.LessThanOrEqualTo(1e-4f * Math.Max(1f, maxAbs)), $"image {i}");
        }
    }

    [Test]
    public void ImageAlreadyAtInputSizeAndNonSquareImagesWork()
    {
        // No resize at all (128 -> 128), then a non-square source (20 x 36) that is stretched to a square.
        var x = Images(1, 3, 128, 128, 7);
        var f = _e128.Encode(x, 1, 3, 128, 128, out int t, out _);
        Assert.That(t, Is.EqualTo(64));
        AssertFiniteNonNegative(f);
        var g = _e128.Encode(Images(2, 3, 20, 36, 9), 2, 3, 20, 36, out t, out _);
        Assert.That(t, Is.EqualTo(64));
        AssertFiniteNonNegative(g);
    }

    [Test]
    public void MissingModelGivesOneClearSentence()
    {
        var ex = Assert.Throws<FileNotFoundException>(() =>
            new OnnxEncoder("/nonexistent/encoder.onnx", "x", "y", 224, [0f, 0f, 0f], [1f, 1f, 1f]));
        Assert.That(ex!.Message, Is.EqualTo("ONNX encoder model file not found: '/nonexistent/encoder.onnx'."));
    }

    [Test]
    public void UnknownLayerIsNamed()
    {
        var ex = Assert.Throws<ArgumentException>(() => OnnxEncoder.ResNet18(layer: "NoSuchLayer_Output_0"));
        Assert.That(ex!.Message, Does.Contain("NoSuchLayer_Output_0"));
    }

    [Test]
    public void BadShapesAreRejected()
    {
        Assert.Throws<ArgumentException>(() => _e128.Encode(new float[2 * 28 * 28], 1, 2, 28, 28, out _, out _));
        Assert.Throws<ArgumentException>(() => _e128.Encode(new float[10], 1, 1, 28, 28, out _, out _));
    }

    [Test, Category("Timing")]
    public void PerImageTime()
    {
        const int n = 16;
        var x = Images(n, 1, 28, 28, 8);
        foreach (var e in new[] { _e224, _e128 })
        {
            e.Encode(x, n, 1, 28, 28, out _, out _); // warm-up
            var sw = Stopwatch.StartNew();
            e.Encode(x, n, 1, 28, 28, out _, out _);
            TestContext.Out.WriteLine(
                $"ResNet-18 stage 3 at {e.InputSize} px: {sw.Elapsed.TotalMilliseconds / n:F1} ms per image " +
                $"(batch {n}, {Environment.ProcessorCount} threads)");
        }
    }
}
