using System.Text.Json;
using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Models;
using Repa.Runtime.Optim;
using Repa.Runtime.Plots;
using Repa.Runtime.Sampling;

namespace Repa.Tests;

/// <summary>`sample` end to end on a two-step SiT-T/2 run: the grid holds exactly the library's samples; bad input is one sentence.</summary>
[TestFixture]
public class SampleCommandTests
{
    private string root = "", run = "";

    [OneTimeSetUp]
    public void TrainTwoSteps()
    {
        TrainerTests.Data(); // ignores the fixture when Fashion-MNIST is not installed
        root = Path.Combine(Path.GetTempPath(), "repa-sample-" + Guid.NewGuid().ToString("N"));
        run = Path.Combine(root, "run");
        var (code, _, stderr) = CliRun.Run(["train", "--config", "SiT-T/2", "--steps", "2", "--batch", "4", "--encoder", "none", "--proj-coeff", "0",
            "--lr", "1e-3", "--out", run, "--threads", "2", "--sample-grid", "false"]);
        Assert.That(code, Is.EqualTo(0), stderr);
    }

    [OneTimeTearDown]
    public void Clean()
    {
        if (Directory.Exists(root)) Directory.Delete(root, true);
    }

    /// <summary>
    /// The grid at <paramref name="png"/> has the documented layout (rows of 64 px cells for 32 px images, 2 px gaps,
    /// 8 px margins, a title line, labels at the left) and its cells are exactly the samples the library draws in-process.
    /// </summary>
    private void AssertGridHolds(string png, int[] rowClasses, int perClass, SamplerOptions options, SamplingWeights weights, string[]? rowLabels = null)
    {
        var grid = PlotTests.Decode(png);
        rowLabels ??= [.. rowClasses.Select(k => FashionMnist[k])];
        int rows = rowClasses.Length, cell = 64, labelWidth = 2 * (rowLabels.Max(l => l.Length) * 6 - 1);
        int left = 8 + labelWidth + 8, top = 8 + 7 + 8;
        Assert.That(grid.Height, Is.EqualTo(top + rows * cell + (rows - 1) * 2 + 8), "height");
        Assert.That(grid.Width, Is.GreaterThanOrEqualTo(left + perClass * cell + (perClass - 1) * 2 + 8), "width");

        using var backend = new CpuBackend(2);
        var loaded = SiTSampling.Load(run, backend, weights);
        using var model = loaded.Model;
        int[] labels = [.. rowClasses.SelectMany(k => Enumerable.Repeat(k, perClass))];
        var samples = SiTSampling.Generate(model, labels, options with { PathType = loaded.Objective.PathType }, modelBatch: 5);
        var bytes = SampleImages.ToNhwcBytes(samples, labels.Length, 1, 32, 32);
        for (int i = 0; i < labels.Length; i++)
        {
            int x0 = left + i % perClass * (cell + 2), y0 = top + i / perClass * (cell + 2);
            for (int y = 0; y < cell; y++)
                for (int x = 0; x < cell; x++)
                {
                    byte v = bytes[i * 1024 + y / 2 * 32 + x / 2];
                    if (grid.At(x0 + x, y0 + y) != (v, v, v))
                        Assert.Fail($"image {i} pixel ({x}, {y}) is {grid.At(x0 + x, y0 + y)} in the grid, {v} in-process");
                }
        }
        // The labels are drawn in black in the left column, and nothing of the grid lies left of it.
        for (int r = 0; r < rows; r++)
        {
            bool dark = false;
            for (int y = top + r * (cell + 2); y < top + r * (cell + 2) + cell && !dark; y++)
                for (int x = 8; x < left - 8 && !dark; x++) dark = grid.At(x, y) == (0, 0, 0);
            Assert.That(dark, Is.True, $"row {r} has its label");
        }
    }

    private static readonly string[] FashionMnist = [.. Repa.Runtime.Data.ClassNames.FashionMnist];

    [Test]
    public void SdeSamplesFillTheLabelledGridAndTheNpz()
    {
        string output = Path.Combine(root, "sde");
        var (code, stdout, stderr) = CliRun.Run(["sample", "--checkpoint", run, "--labels", "0,3,7", "--per-class", "2", "--steps", "3", "--seed", "4",
            "--batch", "4", "--out", output, "--threads", "2"]);
        Assert.That(code, Is.EqualTo(0), stderr);
        string png = Path.Combine(output, "samples.png"), npz = Path.Combine(output, "samples.npz");
        // --weights auto: after 2 steps the EMA is the initial model, so the raw weights are sampled, with one note.
        Assert.That(stdout, Does.Contain("raw weights of step 2").And.Contain("SDE Euler-Maruyama 3 steps, no guidance, seed 4")
            .And.Contain("] 100% step 3/3 | t = 0.000").And.Contain("ETA 0:00:00")
            .And.Contain("device: cpu: 2 thread(s)").And.Contain("auto chose the CPU: CUDA is unavailable: "));
        Assert.That(stdout.Split('\n').Where(l => l.StartsWith("note: ")).ToArray(), Is.EqualTo(new[]
        {
            "note: after 2 steps the EMA (decay 0.9999) is still 100% the initial model, whose output is 0; sampling the raw weights instead (--weights ema forces the EMA).",
        }));
        string last = stdout.TrimEnd().Split('\n')[^1];
        Assert.That(last, Does.StartWith("sample: 6 images in ").And.Contain($"-> {png} (grid), {npz} (arr_0 uint8 [6, 32, 32, 1])"));
        var options = new SamplerOptions { Mode = SamplerMode.Sde, Steps = 3, Seed = 4 };
        AssertGridHolds(png, [0, 3, 7], 2, options, SamplingWeights.Raw);

        // arr_0 is exactly the grid's images: uint8 NHWC.
        var arrays = ImageGeneratorTests.ReadNpz(npz);
        Assert.That(arrays.Keys, Is.EquivalentTo(new[] { "arr_0" }));
        Assert.That((arrays["arr_0"].Type, arrays["arr_0"].Shape), Is.EqualTo((Repa.Runtime.Data.NpyType.UInt8, new[] { 6, 32, 32, 1 })));
        using var backend = new CpuBackend(2);
        using var model = SiTSampling.Load(run, backend, SamplingWeights.Raw).Model;
        var samples = SiTSampling.Generate(model, [0, 0, 3, 3, 7, 7], options, modelBatch: 5);
        Assert.That(arrays["arr_0"].Data, Is.EqualTo(SampleImages.ToNhwcBytes(samples, 6, 1, 32, 32)));
    }

    [Test]
    public void GuidedHeunEmaSamplesGoBesideTheCheckpointByDefault()
    {
        var (code, stdout, stderr) = CliRun.Run(["sample", "--checkpoint", Path.Combine(run, "checkpoint.safetensors"), "--labels", "5", "--per-class", "3",
            "--mode", "ode", "--heun", "--steps", "3", "--cfg", "2.5", "--guidance-high", "0.7", "--weights", "ema", "--device", "cpu", "--threads", "2"]);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("EMA weights of step 2").And.Contain("ODE Heun 3 steps, cfg 2.5 for t in [0, 0.7]")
            .And.Contain("note: after 2 steps the EMA (decay 0.9999) is still 100% the initial model, whose output is 0; --weights raw samples the trained weights.")
            .And.Not.Contain("auto chose"));
        var options = new SamplerOptions { Mode = SamplerMode.Ode, Heun = true, Steps = 3, CfgScale = 2.5, GuidanceHigh = 0.7 };
        AssertGridHolds(Path.Combine(run, "samples.png"), [5], 3, options, SamplingWeights.Ema);
        Assert.That(File.Exists(Path.Combine(run, "samples.npz")), Is.True);
    }

    [Test]
    public void ByDefaultEveryClassIsARowNamedAfterItsFashionMnistClass()
    {
        // The run's config.json records data_dir = /usr/share/datasets/fashion-mnist: rows carry the class names.
        string output = Path.Combine(root, "names");
        var (code, stdout, stderr) = CliRun.Run(["sample", "--checkpoint", run, "--per-class", "1", "--steps", "2", "--mode", "ode", "--weights", "raw",
            "--out", output, "--threads", "2"]);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("raw weights of step 2").And.Not.Contain("note:"), "forced raw weights need no note");
        AssertGridHolds(Path.Combine(output, "samples.png"), [.. Enumerable.Range(0, 10)], 1, new SamplerOptions { Mode = SamplerMode.Ode, Steps = 2 },
            SamplingWeights.Raw);
        using var backend = new CpuBackend(1);
        using var raw = SiTSampling.Load(run, backend, SamplingWeights.Raw).Model;
        using var averaged = SiTSampling.Load(run, backend, SamplingWeights.Ema).Model;
        Assert.That(raw["final_layer.linear.weight"].ToFloatArray(), Is.Not.EqualTo(averaged["final_layer.linear.weight"].ToFloatArray()));
    }

    private static void AssertOneSentence((int Code, string Stdout, string Stderr) result, string message)
    {
        Assert.That(result.Code, Is.EqualTo(2), result.Stdout + result.Stderr);
        Assert.That(result.Stderr.Trim().Split('\n'), Has.Length.EqualTo(1), result.Stderr);
        Assert.That(result.Stderr, Does.StartWith("error: ").And.Contain(message));
    }

    [Test]
    public void BadCheckpointsAreOneSentence()
    {
        AssertOneSentence(CliRun.Run(["sample", "--checkpoint", Path.Combine(root, "nowhere")]), "does not exist");

        string garbage = Path.Combine(root, "garbage");
        Directory.CreateDirectory(garbage);
        File.Copy(Path.Combine(run, "config.json"), Path.Combine(garbage, "config.json"));
        File.WriteAllText(Path.Combine(garbage, "checkpoint.safetensors"), "this is not a checkpoint");
        AssertOneSentence(CliRun.Run(["sample", "--checkpoint", garbage]), Path.Combine(garbage, "checkpoint.safetensors"));

        string noConfig = Path.Combine(root, "noconfig");
        Directory.CreateDirectory(noConfig);
        File.Copy(Path.Combine(run, "checkpoint.safetensors"), Path.Combine(noConfig, "checkpoint.safetensors"));
        AssertOneSentence(CliRun.Run(["sample", "--checkpoint", noConfig]), "config.json");

        string noEma = Path.Combine(root, "noema");
        Directory.CreateDirectory(noEma);
        File.Copy(Path.Combine(run, "config.json"), Path.Combine(noEma, "config.json"));
        using (var backend = new CpuBackend(1))
        using (var state = SafeTensors.Read(Path.Combine(run, "checkpoint.safetensors"), backend))
        {
            var plain = state.Tensors.Where(kv => !kv.Key.StartsWith(Ema.Prefix)).Select(kv => (kv.Key, kv.Value)).ToList();
            SafeTensors.Write(Path.Combine(noEma, "checkpoint.safetensors"), plain);
        }
        AssertOneSentence(CliRun.Run(["sample", "--checkpoint", noEma, "--weights", "ema"]), "has no EMA weights");
        // auto takes the raw weights of such a checkpoint and says so.
        var (code, stdout, stderr) = CliRun.Run(["sample", "--checkpoint", noEma, "--per-class", "1", "--labels", "2", "--steps", "1", "--threads", "1"]);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain($"note: checkpoint '{Path.Combine(noEma, "checkpoint.safetensors")}' holds no EMA weights; sampling its raw weights.")
            .And.Contain("(raw weights, linear path)"), "its metadata has no step");
    }

    [TestCase(new[] { "--labels", "3,x" }, "--labels must list class numbers 0..9")]
    [TestCase(new[] { "--labels", "10" }, "got '10'")]
    [TestCase(new[] { "--labels", "1,1" }, "names class 1 twice")]
    [TestCase(new[] { "--unconditional", "--labels", "1" }, "exclude each other")]
    [TestCase(new[] { "--unconditional", "--cfg", "2" }, "needs class labels")]
    [TestCase(new[] { "--heun" }, "--mode ode")]
    [TestCase(new[] { "--heun", "yes" }, "--heun takes no value")]
    [TestCase(new[] { "--mode", "fast" }, "--mode must be one of sde, ode, ddpm, ddim")]
    [TestCase(new[] { "--mode", "ddpm" }, "--mode ddpm is DiT's sampler, but SiT-T/2 was trained with the SiT velocity objective; use --mode sde or ode.")]
    [TestCase(new[] { "--mode", "ddim" }, "--mode ddim is DiT's sampler")]
    [TestCase(new[] { "--device", "cuda" }, "--device cuda: ")]
    [TestCase(new[] { "--device", "ilgpu" }, "--device ilgpu: ILGPU found no CUDA or OpenCL GPU")]
    [TestCase(new[] { "--device", "tpu" }, "--device must be one of auto, cpu, cuda, ilgpu, got 'tpu'")]
    [TestCase(new[] { "--cfg", "0.5" }, "--cfg must be a number >= 1")]
    [TestCase(new[] { "--guidance-low", "0.8", "--guidance-high", "0.2" }, "--guidance-low")]
    [TestCase(new[] { "--per-class", "0" }, "--per-class must be an integer >= 1")]
    [TestCase(new[] { "--weights", "best" }, "--weights must be one of auto, ema, raw")]
    public void BadFlagsAreOneSentence(string[] flags, string message)
    {
        AssertOneSentence(CliRun.Run(["sample", "--checkpoint", run, .. flags]), message);
    }

    [Test]
    public void MissingCheckpointFlagIsOneSentence()
    {
        AssertOneSentence(CliRun.Run(["sample", "--steps", "3"]), "sample needs --checkpoint");
    }

    [Test]
    public void HelpListsTheSampleFlags()
    {
        var (code, stdout, _) = CliRun.Run(["--help"]);
        Assert.That(code, Is.EqualTo(0));
        foreach (var flag in new[] { "--checkpoint", "--labels", "--per-class", "--unconditional", "--mode", "--steps", "--heun", "--cfg",
                     "--guidance-low", "--guidance-high", "--seed", "--batch", "--out", "--weights", "--device", "ddim", "min(3, C) eps channels",
                     "samples.npz", "auto|ema|raw" })
            Assert.That(stdout, Does.Contain(flag));
        Assert.That(stdout, Does.Contain("sample --checkpoint C"));
    }

    [Test]
    public void LatentModelsWriteTheirLatentsAndSaySo()
    {
        // A 4-channel model in the shape of an SD-VAE latent SiT, with a checkpoint and config.json as `train` writes them.
        string folder = Path.Combine(root, "latent");
        Directory.CreateDirectory(folder);
        var config = SiTConfig.Tiny with { Name = "SiT-T/4", InChannels = 4, InputSize = 8, PatchSize = 4, Depth = 1, EncoderDepth = 1, ZDims = [] };
        using (var backend = new CpuBackend(1))
        using (var model = new SiT(backend, DType.F32, config, 1))
        using (var ema = new Ema(model.NamedParameters()))
        {
            var tensors = new List<(string, Tensor)>(model.StateDict());
            tensors.AddRange(ema.StateTensors());
            SafeTensors.Write(Path.Combine(folder, "checkpoint.safetensors"), tensors, new Dictionary<string, string> { [AdamW.StepKey] = "0" });
        }
        var json = new Dictionary<string, object>
        {
            ["model"] = config.Name, ["input_size"] = 8, ["patch_size"] = 4, ["in_channels"] = 4, ["hidden_size"] = config.HiddenSize,
            ["depth"] = 1, ["num_heads"] = config.NumHeads, ["mlp_ratio"] = 4.0, ["num_classes"] = 10, ["encoder_depth"] = 1,
            ["z_dims"] = Array.Empty<int>(), ["projector_dim"] = config.ProjectorDim, ["qk_norm"] = false, ["path_type"] = "cosine",
            ["weighting"] = "uniform", ["proj_coeff"] = 0.0,
        };
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(json));

        var (code, stdout, stderr) = CliRun.Run(["sample", "--checkpoint", folder, "--unconditional", "--per-class", "2", "--steps", "2", "--threads", "1"]);
        Assert.That(code, Is.EqualTo(0), stderr);
        string last = stdout.TrimEnd().Split('\n')[^1];
        Assert.That(last, Does.StartWith("sample: 20 samples in ").And.Contain("samples.safetensors")
            .And.Contain("no image was written: these are 4-channel SD-VAE latents, not images, and Repa has no VAE decoder"));
        Assert.That(File.Exists(Path.Combine(folder, "samples.png")), Is.False, "no fake image");
        using var be = new CpuBackend(1);
        using var file = SafeTensors.Read(Path.Combine(folder, "samples.safetensors"), be);
        Assert.That(file["samples"].Shape, Is.EqualTo(new[] { 20, 4, 8, 8 }));
        Assert.That(file["labels"].ToIntArray(), Is.All.EqualTo(10), "unconditional = the null class");
        // A fresh SiT outputs exactly 0: the file holds what the sampler gives for a zero velocity, in float32.
        var expected = FlowSampler.Sample((_, _, _, v) => v.Clear(), new int[20], 10, 256, new SamplerOptions { Steps = 2, PathType = "cosine" });
        Assert.That(file["samples"].ToFloatArray(), Is.EqualTo(expected.Select(v => (float)v)));
    }
}
