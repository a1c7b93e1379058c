using System.Text.Json;
using NUnit.Framework;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime;
using Repa.Runtime.Data;
using Repa.Runtime.Encoders;
using Repa.Runtime.Plots;
using Repa.Runtime.Training;

namespace Repa.Tests;

/// <summary>
/// The dataset layouts `train --data` accepts, on small synthetic folders written with our own PNG and NPY writers:
/// REPA's images/ + vae-sd/ (latents [8, 4, 4] of 8x8 RGB images), EDM2 PNG folders, IDX; their labels, scaling,
/// crop/resize rule, latent sampling, cache identity, short training runs and one-sentence errors.
/// </summary>
[TestFixture]
public class TrainingDataTests
{
    private const int N = 5, Side = 8, LatentChannels = 4, LatentSide = 4;
    private static readonly int[] Labels = [3, 1, 4, 1, 5];
    private string root = "";

    [SetUp]
    public void MakeFolder() => Directory.CreateDirectory(root = Path.Combine(Path.GetTempPath(), "repa-data-" + Guid.NewGuid().ToString("N")));

    [TearDown]
    public void RemoveFolder()
    {
        if (Directory.Exists(root)) Directory.Delete(root, true);
    }

    /// <summary>Image i: 8x8 RGB, pixel (x, y) channel c = (31 i + 7 x + 13 y + 50 c) mod 256.</summary>
    private static byte[] Rgb(int i, int w = Side, int h = Side)
    {
        var p = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
        for (int c = 0; c < 3; c++)
            p[(y * w + x) * 3 + c] = (byte)((31 * i + 7 * x + 13 * y + 50 * c) % 256);
        return p;
    }

    /// <summary>Posterior of image i: mean then std, [2C, 4, 4] float32; std in (0.05, 1).</summary>
    private static float[] Moments(int i)
    {
        int per = LatentChannels * LatentSide * LatentSide;
        var m = new float[2 * per];
        for (int k = 0; k < per; k++)
        {
            m[k] = (float)Math.Sin(0.37 * k + i);
            m[per + k] = 0.05f + 0.9f * (float)((k * 13 + i * 5) % 17) / 17;
        }
        return m;
    }

    private static string Name(int i) => $"{i / 1000:D5}/img{i:D8}.png";
    private static string LatentName(int i) => $"{i / 1000:D5}/img-mean-std-{i:D8}.npy";

    private static void WriteLabels(string folder, IEnumerable<string> names, int[]? labels)
    {
        object? list = labels == null ? null : names.Select((n, i) => new object[] { n, labels[i] }).ToArray();
        File.WriteAllText(Path.Combine(folder, "dataset.json"), JsonSerializer.Serialize(new Dictionary<string, object?> { ["labels"] = list }));
    }

    /// <summary>ROOT/images (PNGs + dataset.json) and ROOT/vae-sd (npy + dataset.json), as REPA's preprocessing writes them.</summary>
    private string MakeRepaFolder(int[]? labels = null, bool unlabelled = false, bool batchDim = false)
    {
        labels ??= Labels;
        string images = Path.Combine(root, "images"), latents = Path.Combine(root, "vae-sd");
        for (int i = 0; i < labels.Length; i++)
        {
            Png.Write(Path.Combine(images, Name(i)), Side, Side, Rgb(i));
            int[] shape = batchDim ? [1, 2 * LatentChannels, LatentSide, LatentSide] : [2 * LatentChannels, LatentSide, LatentSide];
            Npy.Write(Path.Combine(latents, LatentName(i)), NpyArray.FromFloats(Moments(i), shape));
        }
        WriteLabels(images, Enumerable.Range(0, labels.Length).Select(Name), unlabelled ? null : labels);
        WriteLabels(latents, Enumerable.Range(0, labels.Length).Select(LatentName), unlabelled ? null : labels);
        return root;
    }

    // ---- the REPA latent layout ----

    [Test]
    public void RepaFolderTrainsOnLatentsWithLabelsFromVaeSd()
    {
        var data = TrainingData.Open(MakeRepaFolder());
        Assert.That(data, Is.InstanceOf<LatentFolderData>());
        Assert.That((data.Count, data.Channels, data.Size, data.NumClasses), Is.EqualTo((N, LatentChannels, LatentSide, 6)));
        Assert.That((data.ImageChannels, data.ImageHeight, data.ImageWidth), Is.EqualTo((3, Side, Side)));
        var labels = new int[3];
        data.FillBatch([4, 0, 2], new float[3 * 64], labels, 0, 1);
        Assert.That(labels, Is.EqualTo(new[] { 5, 3, 4 }));
        Assert.That(data.Description, Does.Contain("REPA folder").And.Contain("4x4x4").And.Contain("6 classes"));
    }

    [Test]
    public void LatentsAreSampledFromThePosteriorWithPhiloxNoiseByStep([Values(false, true)] bool batchDim)
    {
        var data = TrainingData.Open(MakeRepaFolder(batchDim: batchDim));
        int[] indices = [2, 0, 2];
        const ulong seed = 11, step = 7;
        int per = LatentChannels * LatentSide * LatentSide;
        var z = new float[indices.Length * per];
        data.FillBatch(indices, z, new int[3], seed, step);

        // Independently: eps for batch position b is element b * per + k of Philox stream (step << 4) | 8.
        var eps = new double[indices.Length * per];
        Philox.Normal(seed, (step << 4) | 8, 0, eps);
        for (int b = 0; b < indices.Length; b++)
        {
            var m = Moments(indices[b]);
            for (int k = 0; k < per; k++)
                Assert.That(z[b * per + k], Is.EqualTo((float)(((double)m[k] + (double)m[per + k] * eps[b * per + k]) * 0.18215)), $"z[{b}, {k}]");
        }
        Assert.That(z.AsSpan(0, per).SequenceEqual(z.AsSpan(2 * per, per)), Is.False, "the same image twice in a batch gets two draws");

        var again = new float[z.Length];
        data.FillBatch(indices, again, new int[3], seed, step);
        Assert.That(again, Is.EqualTo(z), "a pure function of (seed, step, indices): resume redraws the same latents");
        data.FillBatch(indices, again, new int[3], seed, step + 1);
        Assert.That(again, Is.Not.EqualTo(z), "the next step draws anew");
    }

    [Test]
    public void TheEncoderSeesThePngsOfALatentFolder()
    {
        var data = TrainingData.Open(MakeRepaFolder());
        var images = new byte[2 * 3 * Side * Side];
        data.FillImages([3, 1], images);
        for (int b = 0; b < 2; b++)
        {
            var rgb = Rgb(b == 0 ? 3 : 1);
            for (int c = 0; c < 3; c++)
            for (int p = 0; p < Side * Side; p++)
                Assert.That(images[(b * 3 + c) * Side * Side + p], Is.EqualTo(rgb[p * 3 + c]));
        }
    }

    [Test]
    public void UnlabelledFoldersTrainWithOneClass()
    {
        var data = (LatentFolderData)TrainingData.Open(MakeRepaFolder(unlabelled: true));
        Assert.That(data.Conditional, Is.False);
        Assert.That(data.NumClasses, Is.EqualTo(1));
        var labels = new int[] { 9, 9 };
        data.FillBatch([1, 4], new float[2 * 64], labels, 0, 1);
        Assert.That(labels, Is.EqualTo(new[] { 0, 0 }));
        Assert.That(data.Description, Does.Contain("unlabelled"));
    }

    [Test]
    public void ImageSizeMustNotContradictTheLatents()
    {
        MakeRepaFolder();
        Assert.That(TrainingData.Open(root, LatentSide).Size, Is.EqualTo(LatentSide));
        var e = Assert.Throws<ArgumentException>(() => TrainingData.Open(root, 32))!;
        Assert.That(e.Message, Does.Contain("--image-size 32").And.Contain("4x4x4").And.Contain("pass 4"));
        var (code, _, stderr) = CliRun.Run("train", "--data", root, "--image-size", "32", "--encoder", "none", "--proj-coeff", "0");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1));
        Assert.That(stderr, Does.Contain("--image-size 32 contradicts"));
    }

    // ---- PNG folders (pixel space) ----

    private string MakePngFolder(string folder, int count, Func<int, (int w, int h, byte[] rgb)> image, int[]? labels)
    {
        for (int i = 0; i < count; i++)
        {
            var (w, h, rgb) = image(i);
            Png.Write(Path.Combine(folder, Name(i)), w, h, rgb);
        }
        WriteLabels(folder, Enumerable.Range(0, count).Select(Name), labels);
        return folder;
    }

    [Test]
    public void PngFolderPixelsAreScaledToPlusMinusOneExactly()
    {
        MakePngFolder(root, 3, i => (Side, Side, Rgb(i)), [0, 2, 1]);
        var data = TrainingData.Open(root);
        Assert.That(data, Is.InstanceOf<ImageFolderData>());
        Assert.That((data.Count, data.Channels, data.Size, data.NumClasses), Is.EqualTo((3, 3, Side, 3)), "default size: the images' own");
        var x = new float[2 * 3 * Side * Side];
        var labels = new int[2];
        data.FillBatch([2, 0], x, labels, 0, 1);
        Assert.That(labels, Is.EqualTo(new[] { 1, 0 }));
        for (int b = 0; b < 2; b++)
        {
            var rgb = Rgb(b == 0 ? 2 : 0);
            for (int c = 0; c < 3; c++)
            for (int p = 0; p < Side * Side; p++)
                Assert.That(x[(b * 3 + c) * Side * Side + p], Is.EqualTo((float)(rgb[p * 3 + c] / 127.5 - 1)));
        }
        // Black and white land exactly on -1 and +1.
        Assert.That((TrainingData.PixelToUnit[0], TrainingData.PixelToUnit[255]), Is.EqualTo((-1f, 1f)));
    }

    /// <summary>
    /// The reference for crop + area resize: centre crop (offsets (W - side) / 2, (H - side) / 2), then blow each source
    /// pixel up to a size x size block and average side x side blocks of that grid, rounded half up.
    /// </summary>
    private static byte[] Reference(byte[] rgb, int w, int h, int size)
    {
        int side = Math.Min(w, h), top = (h - side) / 2, left = (w - side) / 2;
        var result = new byte[3 * size * size];
        for (int c = 0; c < 3; c++)
        for (int oy = 0; oy < size; oy++)
        for (int ox = 0; ox < size; ox++)
        {
            long sum = 0;
            for (int gy = oy * side; gy < (oy + 1) * side; gy++)
            for (int gx = ox * side; gx < (ox + 1) * side; gx++)
                sum += rgb[((top + gy / size) * w + left + gx / size) * 3 + c];
            long count = (long)side * side;
            result[(c * size + oy) * size + ox] = (byte)((2 * sum + count) / (2 * count));
        }
        return result;
    }

    [TestCase(10, 6, 0)]  // crop 6x6 from the middle columns, no resize
    [TestCase(10, 6, 3)]  // crop, then halve: plain 2x2 means
    [TestCase(6, 10, 4)]  // tall: crop rows; 6 -> 4 is a fractional box
    [TestCase(7, 7, 5)]   // odd fractional box
    [TestCase(4, 5, 6)]   // enlarge 4 -> 6: each output pixel takes the source area it covers
    public void PngFoldersAreCentreCroppedAndAreaResized(int w, int h, int size)
    {
        var rgb = new byte[w * h * 3];
        new Random(w * 100 + h * 10 + size).NextBytes(rgb);
        MakePngFolder(root, 1, _ => (w, h, rgb), [0]);
        var data = TrainingData.Open(root, size);
        int s = size > 0 ? size : Math.Min(w, h);
        Assert.That(data.Size, Is.EqualTo(s));
        var images = new byte[3 * s * s];
        data.FillImages([0], images);
        Assert.That(images, Is.EqualTo(Reference(rgb, w, h, s)));
        var x = new float[3 * s * s];
        data.FillBatch([0], x, new int[1], 0, 1);
        Assert.That(x, Is.EqualTo(images.Select(b => (float)(b / 127.5 - 1)).ToArray()), "the model sees what the encoder sees");
    }

    [Test]
    public void GreyPngFoldersHaveOneChannel()
    {
        var grey = Enumerable.Range(0, 36).Select(i => (byte)(i * 7)).ToArray();
        TestPng.Write(Path.Combine(root, "a.png"), 6, 6, 0, grey, filter: 4);
        TestPng.Write(Path.Combine(root, "b.png"), 6, 6, 4, grey.SelectMany(g => new byte[] { g, 128 }).ToArray()); // grey + alpha
        WriteLabels(root, ["a.png", "b.png"], null);
        var data = TrainingData.Open(root);
        Assert.That((data.Channels, data.ImageChannels, data.NumClasses), Is.EqualTo((1, 1, 1)));
        var x = new byte[2 * 36];
        data.FillImages([0, 1], x);
        Assert.That(x, Is.EqualTo(grey.Concat(grey).ToArray()), "alpha is dropped");

        Png.Write(Path.Combine(root, "c.png"), 6, 6, Rgb(0, 6, 6));
        WriteLabels(root, ["a.png", "b.png", "c.png"], null);
        var mixed = TrainingData.Open(root);
        var e = Assert.Throws<InvalidDataException>(() => mixed.FillImages([2], new byte[36]))!;
        Assert.That(e.Message, Does.Contain("c.png").And.Contain("colour image but this dataset is grey"));
    }

    [Test]
    public void AnImagesFolderWithoutLatentsTrainsOnPixels()
    {
        MakePngFolder(Path.Combine(root, "images"), 2, i => (Side, Side, Rgb(i)), [0, 1]);
        var data = TrainingData.Open(root);
        Assert.That(data, Is.InstanceOf<ImageFolderData>());
        Assert.That(data.Description, Does.Contain("PNG folder").And.Contain("images"));
    }

    // ---- cache identity ----

    [Test]
    public void TheCacheIdentityFollowsTheImages()
    {
        MakeRepaFolder();
        string Id() => TrainingData.Open(root).Identity;
        string first = Id();
        Assert.That(Id(), Is.EqualTo(first), "stable");
        File.SetLastWriteTimeUtc(Path.Combine(root, "images", Name(2)), new DateTime(2020, 1, 1, 0, 0, 0, DateTimeKind.Utc));
        string touched = Id();
        Assert.That(touched, Is.Not.EqualTo(first), "a rewritten image");
        Png.Write(Path.Combine(root, "images", Name(5)), Side, Side, Rgb(5));
        Npy.Write(Path.Combine(root, "vae-sd", LatentName(5)), NpyArray.FromFloats(Moments(5), 2 * LatentChannels, LatentSide, LatentSide));
        WriteLabels(Path.Combine(root, "vae-sd"), Enumerable.Range(0, 6).Select(LatentName), [.. Labels, 0]);
        Assert.That(Id(), Is.Not.EqualTo(touched), "one more image");

        string pngs = Path.Combine(root, "png");
        MakePngFolder(pngs, 2, i => (Side, Side, Rgb(i)), [0, 1]);
        Assert.That(TrainingData.Open(pngs, 4).Identity, Is.Not.EqualTo(TrainingData.Open(pngs, 8).Identity), "another resize");
    }

    [Test]
    public void EncoderTargetsOfALatentFolderComeFromItsImagesAndFollowThem()
    {
        MakeRepaFolder();
        string cache = Path.Combine(root, "cache");
        using var encoder = OnnxEncoder.ResNet18(inputSize: 32); // stage 3 at 32 px: a 2x2 grid, SiT-T/2's on 4x4 latents
        var data = TrainingData.Open(root);
        string path;
        using (var targets = new EncoderTargets(data, encoder, "resnet18", cache))
        {
            Assert.That((targets.Tokens, targets.Dim), Is.EqualTo((4, 256)));
            using var be = new CpuBackend(1);
            var cached = targets.Targets([3], be, DType.F32).ToFloatArray();
            var planes = new byte[3 * Side * Side];
            data.FillImages([3], planes);
            var exact = encoder.Encode(planes, 1, 3, Side, Side, out _, out _);
            for (int i = 0; i < exact.Length; i++) Assert.That(cached[i], Is.EqualTo(exact[i]).Within(1e-3 * Math.Max(1, Math.Abs(exact[i]))));
            path = targets.CachePath;
        }
        File.SetLastWriteTimeUtc(Path.Combine(root, "images", Name(0)), new DateTime(2020, 1, 1, 0, 0, 0, DateTimeKind.Utc));
        using var changed = new EncoderTargets(TrainingData.Open(root), encoder, "resnet18", cache);
        Assert.That(changed.CachePath, Is.Not.EqualTo(path), "changed images are a new cache");
    }

    // ---- training runs ----

    [Test]
    public void TrainsTwoStepsOnLatentsWithoutAndWithTheEncoder()
    {
        MakeRepaFolder();
        string run = Path.Combine(root, "run");
        var (code, stdout, stderr) = CliRun.Run("train", "--data", root, "--encoder", "none", "--proj-coeff", "0", "--steps", "2", "--batch", "4",
            "--out", run, "--threads", "2");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("REPA folder").And.Contain("done: 2 steps"));
        using (var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "config.json"))))
        {
            Assert.That(config.RootElement.GetProperty("in_channels").GetInt32(), Is.EqualTo(LatentChannels));
            Assert.That(config.RootElement.GetProperty("input_size").GetInt32(), Is.EqualTo(LatentSide));
            Assert.That(config.RootElement.GetProperty("num_classes").GetInt32(), Is.EqualTo(6));
        }

        (code, stdout, stderr) = CliRun.Run("train", "--data", root, "--steps", "2", "--batch", "4", "--out", Path.Combine(root, "repa"),
            "--cache-dir", Path.Combine(root, "cache"), "--threads", "2");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("targets: ResNet-18").And.Contain("done: 2 steps"));
        var proj = System.Text.RegularExpressions.Regex.Matches(stdout, @"proj (-?[0-9.]+)").Select(m => double.Parse(m.Groups[1].Value)).ToArray();
        Assert.That(proj, Has.Length.EqualTo(2));
        Assert.That(proj.All(p => p != 0 && Math.Abs(p) <= 1), Is.True, "a negative cosine against real encoder features: " + string.Join(", ", proj));
    }

    /// <summary>Targets that depend only on the index: the trainer asks for exactly the step's images.</summary>
    private sealed class FakeTargets(int tokens, int dim) : ITargetProvider
    {
        public List<int> Asked { get; } = [];
        public int Tokens => tokens;
        public int Dim => dim;
        public string Description => "fake";

        public Autograd.Tensor Targets(ReadOnlySpan<int> indices, IBackend backend, DType dtype)
        {
            Asked.AddRange(indices.ToArray());
            var v = new float[indices.Length * tokens * dim];
            for (int b = 0; b < indices.Length; b++)
            for (int k = 0; k < tokens * dim; k++)
                v[(b * tokens) * dim + k] = (float)Math.Cos(indices[b] + 0.1 * k);
            return Autograd.Tensor.FromArray(backend, v, indices.Length, tokens, dim);
        }
    }

    [Test]
    public void ResumeOnLatentsContinuesTheExactRun()
    {
        var data = TrainingData.Open(MakeRepaFolder());
        var options = new TrainOptions { Model = "SiT-T/2", Steps = 4, Batch = 4, LearningRate = 1e-3, ImageSize = LatentSide, Seed = 3 };
        IReadOnlyList<StepMetrics> Train(TrainOptions o, string folder, FakeTargets targets)
        {
            using var be = new CpuBackend(2);
            using var trainer = new Trainer(be, o with { OutputFolder = folder }, data, targets);
            return trainer.Run(TextWriter.Null);
        }
        string a = Path.Combine(root, "a"), b = Path.Combine(root, "b");
        var fake = new FakeTargets(4, 16);
        var straight = Train(options, a, fake);
        Assert.That(fake.Asked, Has.Count.EqualTo(16));
        var half = Train(options with { Steps = 2 }, b, new FakeTargets(4, 16));
        var rest = Train(options with { Resume = b }, b, new FakeTargets(4, 16));
        Assert.That(half.Concat(rest).Select(m => m.Loss), Is.EqualTo(straight.Select(m => m.Loss)));
        Assert.That(straight.All(m => m.Proj != 0 && Math.Abs(m.Proj) <= 1), Is.True, "the fake targets reach the projection loss");
        using var one = new CpuBackend(1);
        var e = Assert.Throws<ArgumentException>(() => new Trainer(one, options with { ImageSize = 8 }, data, fake))!;
        Assert.That(e.Message, Does.Contain("--image-size 8 does not match the dataset's model input size 4"));
    }

    [Test]
    public void MnistFromNpmTrainsTwoSteps()
    {
        string folder = TrainingData.MnistFolder;
        if (!File.Exists(Path.Combine(folder, "train-images-idx3-ubyte")))
            Assert.Ignore($"MNIST is not in {folder}; scripts/install-data.sh puts it there when npm is available.");
        string run = Path.Combine(root, "mnist");
        var (code, stdout, stderr) = CliRun.Run("train", "--data", folder, "--encoder", "none", "--proj-coeff", "0", "--steps", "2", "--batch", "4",
            "--out", run, "--threads", "2", "--sample-grid", "false");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("60000 grey 28x28 images centred on a black 32x32 square, 10 classes").And.Contain("done: 2 steps"));
        Assert.That(File.Exists(Path.Combine(run, "checkpoint.safetensors")));
    }

    // ---- layouts and errors ----

    [Test]
    public void IdxFoldersArePaddedAsBefore()
    {
        var data = TrainerTests.Data();
        var padded = TrainingData.Open(IdxDataset.DefaultFashionMnistFolder);
        Assert.That(padded, Is.InstanceOf<IdxTrainingData>());
        Assert.That((padded.Count, padded.Channels, padded.Size, padded.NumClasses), Is.EqualTo((60000, 1, 32, 10)));
        var viaData = new float[2 * 1024];
        var direct = new float[2 * 1024];
        padded.FillBatch([7, 123], viaData, new int[2], 5, 9);
        data.FillBatch([7, 123], direct, new int[2], 32);
        Assert.That(viaData, Is.EqualTo(direct));
        var bytes = new byte[2 * 1024];
        padded.FillImages([7, 123], bytes);
        Assert.That(bytes.Select(b => TrainingData.PixelToUnit[b]).ToArray(), Is.EqualTo(direct), "the encoder's bytes are the padded image");
        Assert.That(TrainingData.Open(IdxDataset.DefaultFashionMnistFolder, 36).Size, Is.EqualTo(36));
        Assert.Throws<InvalidDataException>(() => TrainingData.Open(IdxDataset.DefaultFashionMnistFolder, 20));
    }

    private void ExpectError<T>(string contains, int imageSize = 0) where T : Exception
    {
        var e = Assert.Throws(Is.InstanceOf<T>(), () => TrainingData.Open(root, imageSize).FillImages([0], new byte[3 * Side * Side]))!;
        Assert.That(e.Message, Does.Contain(contains));
        Assert.That(e.Message, Does.Not.Contain("\n"));
    }

    [Test]
    public void MissingDatasetJsonIsNamed()
    {
        Png.Write(Path.Combine(root, "00000", "img00000000.png"), Side, Side, Rgb(0));
        ExpectError<FileNotFoundException>("has no dataset.json");
        MakeRepaFolder();
        File.Delete(Path.Combine(root, "vae-sd", "dataset.json"));
        ExpectError<FileNotFoundException>($"latent folder '{Path.Combine(root, "vae-sd")}' has no dataset.json");
    }

    [Test]
    public void MismatchedCountsAndMissingFilesAreNamed()
    {
        MakeRepaFolder();
        File.Delete(Path.Combine(root, "vae-sd", LatentName(4)));
        ExpectError<InvalidDataException>("has 5 PNGs in images/ but 4 .npy files in vae-sd/");
        File.Delete(Path.Combine(root, "images", Name(4)));
        ExpectError<FileNotFoundException>($"labels 1 file(s) missing from '{Path.Combine(root, "vae-sd")}', e.g. '{LatentName(4)}'");
        WriteLabels(Path.Combine(root, "vae-sd"), Enumerable.Range(0, 3).Select(LatentName), [1, 2, 3]);
        ExpectError<InvalidDataException>($"'{Path.Combine(root, "vae-sd", LatentName(3))}' has no label in");
        Directory.Delete(Path.Combine(root, "images"), true);
        ExpectError<DirectoryNotFoundException>("has vae-sd/ but no images/");
    }

    [Test]
    public void BadLatentFilesAreNamed()
    {
        MakeRepaFolder();
        string first = Path.Combine(root, "vae-sd", LatentName(0));
        File.WriteAllBytes(first, "not numpy at all"u8.ToArray());
        ExpectError<InvalidDataException>($"NPY file '{first}' does not start with the NPY magic");
        Npy.Write(first, NpyArray.FromFloats(new float[8 * 4 * 2], 8, 4, 2));
        ExpectError<InvalidDataException>("H = W");

        MakeRepaFolder();
        string third = Path.Combine(root, "vae-sd", LatentName(2));
        Npy.Write(third, NpyArray.FromFloats(new float[8 * 2 * 2], 8, 2, 2));
        var data = TrainingData.Open(root);
        var e = Assert.Throws<InvalidDataException>(() => data.FillBatch([1, 2], new float[2 * 64], new int[2], 0, 1))!;
        Assert.That(e.Message, Does.Contain(third).And.Contain("float32 (8, 2, 2)"));
    }

    [Test]
    public void FoldersThatHoldNoDatasetAreNamed()
    {
        ExpectError<InvalidDataException>($"'{root}' holds no dataset");
        var (code, _, stderr) = CliRun.Run("train", "--data", Path.Combine(root, "nowhere"), "--encoder", "none", "--proj-coeff", "0");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stderr, Does.Contain($"dataset folder '{Path.Combine(root, "nowhere")}' does not exist"));
        File.WriteAllText(Path.Combine(root, "dataset.json"), "{\"labels\": [[\"a.png\", 1.5]]}");
        Png.Write(Path.Combine(root, "a.png"), 2, 2, new byte[12]);
        ExpectError<InvalidDataException>("the label of 'a.png' is 1.5, not a non-negative integer class");
        File.WriteAllText(Path.Combine(root, "dataset.json"), "{\"labels\": [[\"a.png\", 1]]}");
        File.WriteAllBytes(Path.Combine(root, "b.jpg"), [0xFF, 0xD8]);
        ExpectError<InvalidDataException>("is a JPG image");
    }
}
