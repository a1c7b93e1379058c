using NUnit.Framework;
using Repa.Kernels.Cpu;
using Repa.Runtime;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Data;
using Repa.Runtime.Encoders;
using Repa.Runtime.Training;

namespace Repa.Tests;

/// <summary>Short real training runs on Fashion-MNIST: the loss falls, runs are reproducible, the checkpoint is complete.</summary>
[TestFixture]
public class TrainerTests
{
    private static readonly string Cache = Path.Combine(Path.GetTempPath(), "repa-test-cache-" + Guid.NewGuid().ToString("N"));

    [OneTimeTearDown]
    public void RemoveCache()
    {
        if (Directory.Exists(Cache)) Directory.Delete(Cache, true);
    }

    [Test]
    public void TargetsAreCachedOnDiskAndTheKeyFollowsTheInputs()
    {
        var data = Data();
        var padded = new IdxTrainingData(data, 32);
        string folder = Path.Combine(Cache, "own");
        using var be = new CpuBackend(1);
        using var encoder = OnnxEncoder.ResNet18(inputSize: 128);
        float[] first;
        string path;
        using (var targets = new EncoderTargets(padded, encoder, "resnet18", folder))
        {
            Assert.That((targets.Tokens, targets.Dim), Is.EqualTo((64, 256)));
            targets.Precompute([5, 9, 5], null);
            Assert.That(targets.Cached, Is.EqualTo(3), "image 0 (the probe), 5 and 9");
            first = targets.Targets([9, 5], be, Kernels.DType.F32).ToFloatArray();
            path = targets.CachePath;
        }
        using (var again = new EncoderTargets(padded, encoder, "resnet18", folder))
        {
            Assert.That(again.CachePath, Is.EqualTo(path));
            Assert.That(again.Cached, Is.EqualTo(3), "the cache survives across runs");
            Assert.That(again.Targets([9, 5], be, Kernels.DType.F32).ToFloatArray(), Is.EqualTo(first));
        }
        // The cache is fp16: within half precision of the encoder's own output.
        var images = new float[32 * 32];
        data.FillBatch([9], images, new int[1], 32);
        var exact = encoder.Encode(images, 1, 1, 32, 32, out _, out _);
        for (int i = 0; i < exact.Length; i += 97) Assert.That(first[i], Is.EqualTo(exact[i]).Within(1e-3 * Math.Max(1, Math.Abs(exact[i]))));
        using var other = new EncoderTargets(new IdxTrainingData(data, 28), encoder, "resnet18", folder);
        Assert.That(other.CachePath, Is.Not.EqualTo(path), "another image size is another cache");
    }

    /// <summary>The Fashion-MNIST training set, or the test is ignored with the reason printed.</summary>
    internal static IdxDataset Data()
    {
        if (!File.Exists(Path.Combine(IdxDataset.DefaultFashionMnistFolder, "train-images-idx3-ubyte.gz")))
            Assert.Ignore("Fashion-MNIST is not installed; run scripts/install-data.sh (the test script does) to enable this test.");
        return IdxDataset.LoadFolder(IdxDataset.DefaultFashionMnistFolder, train: true);
    }

    private static IReadOnlyList<StepMetrics> Train(TrainOptions options, bool repa, string folder)
    {
        var data = new IdxTrainingData(Data(), options.ImageSize);
        using var backend = new CpuBackend(2);
        using var encoder = repa ? OnnxEncoder.ResNet18(inputSize: 16 * (options.ImageSize / 4)) : null;
        using var targets = repa ? new EncoderTargets(data, encoder!, "resnet18", Cache) : null;
        using var trainer = new Trainer(backend, options with { OutputFolder = folder }, data, targets);
        return trainer.Run(TextWriter.Null);
    }

    // SiT-T with patch 4 keeps the test to seconds: 64 tokens, ResNet-18 stage 3 at 128 px gives the matching 8x8 grid.
    private static readonly TrainOptions Small = new()
    {
        Model = "SiT-T/4", Steps = 12, Batch = 8, LearningRate = 1e-3, ImageSize = 32, Seed = 7,
    };

    [Test]
    public void RepaTrainingLowersBothLossesAndWritesACompleteCheckpoint()
    {
        string folder = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            var h = Train(Small, repa: true, folder);
            Assert.That(h, Has.Count.EqualTo(12));
            Assert.That(h.All(m => double.IsFinite(m.Loss) && double.IsFinite(m.GradNorm)), Is.True);
            double Early(Func<StepMetrics, double> f) => h.Take(3).Average(f);
            double Late(Func<StepMetrics, double> f) => h.Skip(9).Average(f);
            Assert.That(Late(m => m.Loss), Is.LessThan(Early(m => m.Loss)), "total loss should fall");
            Assert.That(Late(m => m.Proj), Is.LessThan(Early(m => m.Proj)), "the projection loss (negative cosine) should fall");
            Assert.That(File.ReadAllLines(Path.Combine(folder, "metrics.jsonl")), Has.Length.EqualTo(12));
            Assert.That(File.ReadAllText(Path.Combine(folder, "config.json")), Does.Contain("\"encoder_depth\"").And.Contain("\"proj_coeff\": 0.5"));
            using var file = SafeTensors.Read(Path.Combine(folder, "checkpoint.safetensors"), new CpuBackend(1));
            Assert.That(file.Tensors.Keys, Does.Contain("blocks.0.attn.qkv.weight").And.Contain("projectors.0.0.weight")
                .And.Contain("ema.final_layer.linear.weight").And.Contain("optimizer.v.blocks.0.mlp.fc1.weight"));
            Assert.That(file.Tensors.Keys, Does.Not.Contain("optimizer.m.pos_embed"), "pos_embed is frozen");
            Assert.That(file.Metadata["optimizer.step"], Is.EqualTo("12"));
            Assert.That(Directory.GetFiles(folder, "*.tmp"), Is.Empty);
            Assert.That(File.ReadAllBytes(Path.Combine(folder, "loss.png")).Take(4), Is.EqualTo(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }));
        }
        finally
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, true);
        }
    }

    [Test]
    public void FlopsPerImageCountsPerTokenAndPerImageWorkSeparately()
    {
        // SiT-T/2, vanilla (no projector): per token 6 blocks x 12 D^2 + patch and final linear (2 x 4 x 192);
        // per image 6 x 6 D^2 (adaLN) + 2 D^2 (final adaLN) + 256 D + D^2 (timestep MLP); attention 6 x 4 T^2 D.
        using var be = new CpuBackend(1);
        using var trainer = new Trainer(be, new TrainOptions { Model = "SiT-T/2", Objective = new ObjectiveConfig(ProjCoeff: 0) }, new IdxTrainingData(Data(), 32), null);
        double d = 192, t = 256;
        double forward = 2 * ((6 * 12 * d * d + 2 * 4 * d) * t + 6 * 6 * d * d + 2 * d * d + 256 * d + d * d) + 6 * 4 * t * t * d;
        Assert.That(trainer.FlopsPerImage, Is.EqualTo(3 * forward).Within(1e-6).Percent);
    }

    [Test]
    public void GradientAccumulationMatchesTheWholeBatch()
    {
        var options = Small with { Steps = 3 };
        string a = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        string b = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            var whole = Train(options, repa: true, a);
            var accumulated = Train(options with { GradientAccumulation = 4 }, repa: true, b);
            for (int i = 0; i < whole.Count; i++)
            {
                Assert.That(accumulated[i].Loss, Is.EqualTo(whole[i].Loss).Within(1e-5), $"loss at step {i + 1}");
                Assert.That(accumulated[i].Proj, Is.EqualTo(whole[i].Proj).Within(1e-5), $"proj at step {i + 1}");
                Assert.That(accumulated[i].GradNorm, Is.EqualTo(whole[i].GradNorm).Within(1e-4 * whole[i].GradNorm), $"grad norm at step {i + 1}");
            }
            using var be = new CpuBackend(1);
            using var x = SafeTensors.Read(Path.Combine(a, "checkpoint.safetensors"), be);
            using var y = SafeTensors.Read(Path.Combine(b, "checkpoint.safetensors"), be);
            foreach (var name in new[] { "blocks.0.attn.qkv.weight", "final_layer.linear.weight", "projectors.0.4.weight" })
                Assert.That(y[name].ToFloatArray(), Is.EqualTo(x[name].ToFloatArray()).Within(1e-5), name);
        }
        finally
        {
            foreach (var d in new[] { a, b }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }

    [Test]
    public void TheSameSeedGivesTheSameRun()
    {
        var options = Small with { Steps = 3, Objective = new ObjectiveConfig(ProjCoeff: 0) }; // vanilla SiT
        string a = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        string b = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            var first = Train(options, repa: false, a).Select(m => m.Loss).ToArray();
            var second = Train(options, repa: false, b).Select(m => m.Loss).ToArray();
            var other = Train(options with { Seed = 8 }, repa: false, b).Select(m => m.Loss).ToArray();
            Assert.That(second, Is.EqualTo(first));
            Assert.That(other, Is.Not.EqualTo(first));
        }
        finally
        {
            foreach (var d in new[] { a, b }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }

    [Test]
    public void ResumeContinuesTheExactRun()
    {
        var options = Small with { Steps = 6, Objective = new ObjectiveConfig(ProjCoeff: 0.5) };
        string a = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        string b = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            var straight = Train(options, repa: true, a);
            var firstHalf = Train(options with { Steps = 3 }, repa: true, b);
            var secondHalf = Train(options with { Resume = b }, repa: true, b);
            Assert.That(firstHalf.Select(m => m.Loss), Is.EqualTo(straight.Take(3).Select(m => m.Loss)));
            Assert.That(secondHalf.Select(m => m.Step), Is.EqualTo(new[] { 4, 5, 6 }));
            Assert.That(secondHalf.Select(m => m.Loss), Is.EqualTo(straight.Skip(3).Select(m => m.Loss)), "losses after resume");
            Assert.That(File.ReadAllLines(Path.Combine(b, "metrics.jsonl")), Has.Length.EqualTo(6));
            using var be = new CpuBackend(1);
            using var x = SafeTensors.Read(Path.Combine(a, "checkpoint.safetensors"), be);
            using var y = SafeTensors.Read(Path.Combine(b, "checkpoint.safetensors"), be);
            Assert.That(y.Tensors.Keys, Is.EqualTo(x.Tensors.Keys));
            foreach (var name in x.Tensors.Keys)
                Assert.That(y[name].ToFloatArray(), Is.EqualTo(x[name].ToFloatArray()), name);
        }
        finally
        {
            foreach (var d in new[] { a, b }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }

    [TestCase(new[] { "train", "--resume", "/nonexistent/run" }, "checkpoint '/nonexistent/run")]
    [TestCase(new[] { "train", "--config", "SiT-Q/2" }, "--config must be one of")]
    [TestCase(new[] { "train", "--data", "/nonexistent/folder" }, "/nonexistent/folder")]
    [TestCase(new[] { "train", "--proj-coeff", "0.5", "--encoder", "none" }, "needs an encoder")]
    [TestCase(new[] { "train", "--lr", "fast" }, "--lr must be a number")]
    [TestCase(new[] { "train", "--batch", "6", "--grad-accum", "4", "--proj-coeff", "0" }, "--grad-accum 4 must be at least 1 and divide --batch 6")]
    [TestCase(new[] { "train", "--device", "cpu", "--mixed-precision", "bf16", "--proj-coeff", "0" }, "use --mixed-precision no")]
    [TestCase(new[] { "train", "--mixed-precision", "fp16", "--proj-coeff", "0" }, "needs loss scaling")]
    public void BadTrainInputEndsInOneSentence(string[] args, string message)
    {
        CliRun.AssertOneSentenceError(args, message);
    }
}
