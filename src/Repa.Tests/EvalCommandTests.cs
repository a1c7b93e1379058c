using System.Text.Json;
using NUnit.Framework;
using Repa.Runtime;
using Repa.Runtime.Plots;

namespace Repa.Tests;

/// <summary>`eval` and `study` end to end at toy sizes: reports hold the measured figures, runs are reproducible, bad input is one sentence.</summary>
[TestFixture]
public class EvalCommandTests
{
    private string root = "", run = "";

    // Toy evaluation: a dozen images, two sampler steps, k 3.
    private static readonly string[] Tiny = ["--num", "12", "--sample-steps", "2", "--probe-train", "12", "--k", "3", "--threads", "2"];

    [OneTimeSetUp]
    public void TrainTwoSteps()
    {
        TrainerTests.Data(); // ignores the fixture when Fashion-MNIST is not installed
        root = Path.Combine(Path.GetTempPath(), "repa-eval-" + Guid.NewGuid().ToString("N"));
        run = Path.Combine(root, "run");
        var (code, _, stderr) = CliRun.Run(["train", "--config", "SiT-T/4", "--steps", "2", "--batch", "4", "--encoder", "none", "--proj-coeff", "0",
            "--lr", "1e-3", "--out", run, "--threads", "2"]);
        Assert.That(code, Is.EqualTo(0), stderr);
    }

    [OneTimeTearDown]
    public void Clean()
    {
        if (Directory.Exists(root)) Directory.Delete(root, true);
    }

    private static JsonElement Report(string file) => JsonDocument.Parse(File.ReadAllText(file)).RootElement.GetProperty("report");

    [Test]
    public void EvalWritesAReproducibleReport()
    {
        string first = Path.Combine(root, "a.json"), second = Path.Combine(root, "b.json");
        var (code, stdout, stderr) = CliRun.Run(["eval", "--checkpoint", run, "--weights", "raw", "--out", first, .. Tiny]);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("eval: FD ").And.Contain("CKNNA").And.Contain("linear probe"));
        Assert.That(stdout, Does.Contain("held-out test split"), "Fashion-MNIST's t10k images are the real set");
        var r = Report(first);
        Assert.That(r.GetProperty("fd").GetDouble(), Is.GreaterThan(0).And.LessThan(1e6));
        Assert.That(r.GetProperty("fd_train_vs_real").GetDouble(), Is.GreaterThan(0).And.LessThan(r.GetProperty("fd").GetDouble()),
            "real training images are closer to the test images than a 2-step model's samples");
        Assert.That(r.GetProperty("cknna").GetDouble(), Is.InRange(-1.0, 1.0));
        Assert.That(r.GetProperty("probe_accuracy").GetDouble(), Is.InRange(0.0, 1.0));
        Assert.That(r.GetProperty("generated").GetInt32(), Is.EqualTo(12));
        Assert.That(r.GetProperty("cknna_k").GetInt32(), Is.EqualTo(3));
        Assert.That(r.GetProperty("layer").GetInt32(), Is.EqualTo(2), "SiT-T's encoder_depth");
        Assert.That(r.GetProperty("fd_encoder").GetString(), Does.Contain("ResNet-18"));

        Assert.That(CliRun.Run(["eval", "--checkpoint", run, "--weights", "raw", "--out", second, .. Tiny]).Code, Is.EqualTo(0));
        var again = Report(second);
        foreach (var name in new[] { "fd", "cknna", "probe_accuracy" })
            Assert.That(again.GetProperty(name).GetDouble(), Is.EqualTo(r.GetProperty(name).GetDouble()), name);
    }

    [Test]
    public void EvalDefaultsToTheRunFolder()
    {
        var (code, _, stderr) = CliRun.Run(["eval", "--checkpoint", Path.Combine(run, "checkpoint.safetensors"), .. Tiny]);
        Assert.That(code, Is.EqualTo(0), stderr);
        var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, EvalCommand.ReportFile))).RootElement;
        Assert.That(doc.GetProperty("weights").GetString(), Is.EqualTo("raw"), "auto: after 2 steps the EMA is still the initial model");
        Assert.That(doc.GetProperty("step").GetInt32(), Is.EqualTo(2));
        Assert.That(doc.GetProperty("data").GetString(), Is.EqualTo(Repa.Runtime.Data.IdxDataset.DefaultFashionMnistFolder), "from config.json");
    }

    [Test]
    public void EvalCoversDdpmCheckpoints()
    {
        string dit = Path.Combine(root, "dit");
        var (code, _, stderr) = CliRun.Run(["train", "--config", "DiT-T/4", "--objective", "ddpm", "--steps", "2", "--batch", "4", "--encoder", "none",
            "--proj-coeff", "0", "--out", dit, "--sample-grid", "false", "--threads", "2"]);
        Assert.That(code, Is.EqualTo(0), stderr);
        string file = Path.Combine(dit, "eval-ddim.json");
        (code, _, stderr) = CliRun.Run(["eval", "--checkpoint", dit, "--mode", "ddim", "--out", file, .. Tiny]);
        Assert.That(code, Is.EqualTo(0), stderr);
        var doc = JsonDocument.Parse(File.ReadAllText(file)).RootElement;
        Assert.That(doc.GetProperty("objective").GetString(), Is.EqualTo("ddpm"));
        var r = doc.GetProperty("report");
        Assert.That(r.GetProperty("sampler").GetString(), Does.StartWith("DDIM 2 steps"));
        Assert.That(r.GetProperty("fd").GetDouble(), Is.GreaterThan(0));
        Assert.That(r.GetProperty("probe_accuracy").GetDouble(), Is.InRange(0.0, 1.0));
        // A SiT sampler on a DDPM checkpoint is one sentence.
        (code, _, stderr) = CliRun.Run(["eval", "--checkpoint", dit, "--mode", "sde", .. Tiny]);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stderr, Does.StartWith("error: ").And.Contain("--mode sde"));
    }

    private static IEnumerable<TestCaseData> BadEval()
    {
        yield return new TestCaseData(new[] { "eval" }, "needs --checkpoint").SetName("EvalWithoutCheckpoint");
        yield return new TestCaseData(new[] { "eval", "--checkpoint", "/nonexistent/run" }, "does not exist").SetName("EvalMissingCheckpoint");
        yield return new TestCaseData(new[] { "eval", "--checkpoint", "RUN", "--num", "5", "--k", "5" }, "k (5)").SetName("EvalKNotBelowNum");
        yield return new TestCaseData(new[] { "eval", "--checkpoint", "RUN", "--eval-encoder-size", "48" }, "multiple of 32").SetName("EvalEncoderSize");
        yield return new TestCaseData(new[] { "eval", "--checkpoint", "RUN", "--probe-t", "1" }, "--probe-t").SetName("EvalProbeTime");
        yield return new TestCaseData(new[] { "eval", "--checkpoint", "RUN", "--num", "20000" }, "lower --num").SetName("EvalMoreThanTheRealImages");
        yield return new TestCaseData(new[] { "study", "--proj-coeff", "0" }, "--proj-coeff must be above 0").SetName("StudyWithoutRepa");
    }

    [TestCaseSource(nameof(BadEval))]
    public void BadInputEndsInOneSentence(string[] args, string message)
    {
        var (code, _, stderr) = CliRun.Run([.. args.Select(a => a == "RUN" ? run : a)]);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stderr.Trim(), Does.StartWith("error: ").And.Contain(message));
        Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1), "one sentence, no stack trace");
    }

    [Test]
    public void StudyTrainsBothArmsOnTheSameDrawsAndWritesTableAndPlot()
    {
        string folder = Path.Combine(root, "study");
        var (code, stdout, stderr) = CliRun.Run(["study", "--config", "SiT-T/4", "--steps", "2", "--eval-every", "1", "--batch", "4", "--out", folder, .. Tiny]);
        Assert.That(code, Is.EqualTo(0), stderr);
        string table = File.ReadAllText(Path.Combine(folder, "study.md"));
        foreach (var row in new[] { "| 1 | SiT |", "| 1 | SiT + REPA |", "| 2 | SiT |", "| 2 | SiT + REPA |" })
            Assert.That(table, Does.Contain(row));
        Assert.That(table, Does.Contain("Repa.Runtime study --config SiT-T/4 --steps 2"), "the exact command");
        var points = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "study.json"))).RootElement.GetProperty("points");
        Assert.That(points.GetArrayLength(), Is.EqualTo(4));
        var plot = Png.Read(Path.Combine(folder, "study-fd.png"));
        Assert.That((plot.Width, plot.Height), Is.EqualTo((800, 500)));

        // Same seed and budget: the first step sees the same images, times and noise, so the denoising losses agree
        // exactly, while REPA adds its (negative) alignment term.
        JsonElement FirstStep(string arm) => JsonDocument.Parse(File.ReadLines(Path.Combine(folder, arm, "metrics.jsonl")).First()).RootElement;
        var vanilla = FirstStep("vanilla");
        var repa = FirstStep("repa");
        Assert.That(repa.GetProperty("Denoise").GetDouble(), Is.EqualTo(vanilla.GetProperty("Denoise").GetDouble()));
        Assert.That(vanilla.GetProperty("Proj").GetDouble(), Is.EqualTo(0));
        Assert.That(repa.GetProperty("Proj").GetDouble(), Is.LessThan(0));
        Assert.That(stdout, Does.Contain("study: done"));
    }
}
