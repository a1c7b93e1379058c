using System.Text.Json;
using NUnit.Framework;
using Repa.Runtime;
using Repa.Runtime.Plots;
using Repa.Runtime.Sampling;

namespace Repa.Tests;

/// <summary>
/// `train` leaves samples.png and samples.npz in its run folder (8 per class, the default sampler at 25 steps, --weights
/// auto), or skips them with --sample-grid false. Runs on tiny 8x8 PNG datasets so the grid costs little.
/// </summary>
[TestFixture]
public class TrainSampleGridTests
{
    private string root = "";

    [SetUp]
    public void MakeRoot() => root = Directory.CreateTempSubdirectory("repa-train-grid-").FullName;

    [TearDown]
    public void Clean()
    {
        if (Directory.Exists(root)) Directory.Delete(root, true);
    }

    /// <summary>A PNG folder of 6 colour 8x8 images with EDM2's dataset.json: two classes, or unlabelled.</summary>
    private string Dataset(bool labelled)
    {
        string folder = Path.Combine(root, "data");
        var labels = new List<object[]>();
        for (int i = 0; i < 6; i++)
        {
            var rgb = new byte[8 * 8 * 3];
            for (int p = 0; p < rgb.Length; p++) rgb[p] = (byte)((p * 37 + i * 91) % 256);
            string name = $"img{i}.png";
            Png.Write(Path.Combine(folder, name), 8, 8, rgb);
            labels.Add([name, i % 2]);
        }
        File.WriteAllText(Path.Combine(folder, "dataset.json"),
            JsonSerializer.Serialize(new Dictionary<string, object?> { ["labels"] = labelled ? labels : null }));
        return folder;
    }

    [Test]
    public void TrainingEndsWithEightSamplesOfEveryClassFromTheAutoWeights()
    {
        string run = Path.Combine(root, "run");
        var (code, stdout, stderr) = CliRun.Run("train", "--data", Dataset(labelled: true), "--encoder", "none", "--proj-coeff", "0", "--steps", "2",
            "--batch", "4", "--lr", "1e-3", "--seed", "3", "--out", run, "--threads", "2");
        Assert.That(code, Is.EqualTo(0), stderr);
        var lines = stdout.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        string png = Path.Combine(run, "samples.png"), npz = Path.Combine(run, "samples.npz");
        Assert.That(lines, Does.Contain(
            "note: after 2 steps the EMA (decay 0.9999) is still 100% the initial model, whose output is 0; sampling the raw weights instead (--weights ema forces the EMA)."));
        string where = lines.Single(l => l.StartsWith("samples: ", StringComparison.Ordinal));
        Assert.That(where, Does.StartWith("samples: 16 from the raw weights, SDE Euler-Maruyama 25 steps, no guidance, in ")
            .And.EndWith($" s -> {png} (grid), {npz} (arr_0 uint8 [16, 8, 8, 3]) (--sample-grid false skips this)"));
        Assert.That(stdout, Does.Contain("step 25/25"), "a progress line");

        // The npz holds what the facade draws from the checkpoint with the run's seed, rows 0 and 1 of 8 each.
        using var g = ImageGenerator.Load(run, "cpu", threads: 2);
        var expected = g.Generate(ImageGenerator.RepeatEach([0, 1], 8), 3, new GenerationOptions { Steps = TrainCommand.GridSteps });
        Assert.That(ImageGeneratorTests.ReadNpz(npz)["arr_0"].Data, Is.EqualTo(expected.ToImages()));
        var grid = PlotTests.Decode(png);
        int zoom = 64 / 8, rows = 2;
        Assert.That(grid.Height, Is.EqualTo(8 + 7 + 8 + rows * 8 * zoom + (rows - 1) * 2 + 8), "a title line and two rows");
    }

    [Test]
    public void ModelsOfManyClassesShowSixteenEvenlySpacedRows()
    {
        Assert.That(TrainCommand.GridClasses(10), Is.EqualTo(Enumerable.Range(0, 10)));
        Assert.That(TrainCommand.GridClasses(16), Is.EqualTo(Enumerable.Range(0, 16)));
        Assert.That(TrainCommand.GridClasses(1000), Is.EqualTo(new[] { 0, 62, 125, 187, 250, 312, 375, 437, 500, 562, 625, 687, 750, 812, 875, 937 }));
        Assert.That(TrainCommand.GridClasses(17), Is.EqualTo(Enumerable.Range(0, 16)), "floor(i * 17 / 16) = i for i < 16");
    }

    [Test]
    public void UnlabelledDdpmRunsGetOneUnconditionalRowAndTheFlagSkipsIt()
    {
        string run = Path.Combine(root, "dit");
        string data = Dataset(labelled: false);
        var (code, stdout, stderr) = CliRun.Run("train", "--data", data, "--config", "DiT-T/2", "--objective", "ddpm", "--encoder", "none",
            "--proj-coeff", "0", "--steps", "1", "--batch", "2", "--out", run, "--threads", "2");
        Assert.That(code, Is.EqualTo(0), stderr);
        string where = stdout.Split('\n').Single(l => l.StartsWith("samples: ", StringComparison.Ordinal));
        Assert.That(where, Does.StartWith("samples: 8 from the raw weights, DDPM 25 of 1000 steps, no guidance, in "));
        using var g = ImageGenerator.Load(run, "cpu", threads: 2);
        Assert.That((g.NumClasses, g.Objective), Is.EqualTo((1, "ddpm")));
        var expected = g.Generate(Enumerable.Repeat(g.NullClass, 8).ToArray(), 0, new GenerationOptions { Steps = TrainCommand.GridSteps });
        Assert.That(ImageGeneratorTests.ReadNpz(Path.Combine(run, "samples.npz"))["arr_0"].Data, Is.EqualTo(expected.ToImages()));

        string skipped = Path.Combine(root, "skipped");
        (code, stdout, stderr) = CliRun.Run("train", "--data", data, "--encoder", "none", "--proj-coeff", "0", "--steps", "1", "--batch", "2",
            "--out", skipped, "--threads", "2", "--sample-grid", "false");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Not.Contain("samples: "));
        Assert.That(File.Exists(Path.Combine(skipped, "checkpoint.safetensors")), Is.True);
        Assert.That(File.Exists(Path.Combine(skipped, "samples.png")) || File.Exists(Path.Combine(skipped, "samples.npz")), Is.False);
        (code, _, stderr) = CliRun.Run("train", "--data", data, "--sample-grid", "maybe");
        Assert.That((code, stderr.Trim()), Is.EqualTo((2, "error: --sample-grid must be one of true, false, got 'maybe'.")));
    }
}
