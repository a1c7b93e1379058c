using System.Globalization;
using System.IO.Compression;
using System.Text.Json;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Repa.Kernels.Cpu;
using Repa.Runtime;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Data;
using Repa.Runtime.Diffusion;
using Repa.Runtime.Optim;
using Repa.Runtime.Sampling;

namespace Repa.Tests;

/// <summary>
/// The embedding facade <see cref="ImageGenerator"/> on two-step runs: the auto/ema/raw weights rule, DiT checkpoints
/// routed to DDPM/DDIM with guidance on min(3, C) eps channels, the npz holding the grid's pixels, devices, class names.
/// </summary>
[TestFixture]
public class ImageGeneratorTests
{
    private string root = "", sit = "", dit = "";

    [OneTimeSetUp]
    public void TrainTwoStepRuns()
    {
        TrainerTests.Data(); // ignores the fixture when Fashion-MNIST is not installed
        root = Path.Combine(Path.GetTempPath(), "repa-generator-" + Guid.NewGuid().ToString("N"));
        sit = Path.Combine(root, "sit");
        dit = Path.Combine(root, "dit");
        string[] common = ["--steps", "2", "--batch", "4", "--encoder", "none", "--proj-coeff", "0", "--lr", "1e-3", "--threads", "2", "--sample-grid", "false"];
        string[][] runs = [["train", "--config", "SiT-T/2", "--out", sit, .. common], ["train", "--config", "DiT-T/2", "--objective", "ddpm", "--out", dit, .. common]];
        foreach (var args in runs)
        {
            var e = new StringWriter();
            Assert.That(Cli.Run(args, TextWriter.Null, e), Is.EqualTo(0), e.ToString());
        }
    }

    [OneTimeTearDown]
    public void Clean()
    {
        if (Directory.Exists(root)) Directory.Delete(root, true);
    }

    /// <summary>Every array of an .npz (a zip of NAME.npy members, as numpy.savez writes).</summary>
    internal static Dictionary<string, NpyArray> ReadNpz(string path)
    {
        using var zip = ZipFile.OpenRead(path);
        var arrays = new Dictionary<string, NpyArray>();
        foreach (var entry in zip.Entries)
        {
            Assert.That(entry.FullName, Does.EndWith(".npy"));
            using var s = entry.Open();
            var bytes = new MemoryStream();
            s.CopyTo(bytes);
            arrays[entry.FullName[..^4]] = Npy.Parse(bytes.ToArray(), entry.FullName);
        }
        return arrays;
    }

    /// <summary>A copy of the SiT run whose config.json records <paramref name="decay"/> as its EMA decay.</summary>
    private string RunWithDecay(double decay)
    {
        string folder = Path.Combine(root, "decay-" + decay.ToString(CultureInfo.InvariantCulture));
        Directory.CreateDirectory(folder);
        File.Copy(Path.Combine(sit, "checkpoint.safetensors"), Path.Combine(folder, "checkpoint.safetensors"), overwrite: true);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(sit, "config.json")))!;
        config["ema_decay"] = decay;
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        return folder;
    }

    private static float[] Weight(ImageGenerator g) => g.Model["final_layer.linear.weight"].ToFloatArray();

    private float[] Stored(string name)
    {
        using var backend = new CpuBackend(1);
        using var file = SafeTensors.Read(Path.Combine(sit, "checkpoint.safetensors"), backend);
        return file[name].ToFloatArray();
    }

    [Test]
    public void AutoWeightsAreTheEmaOnlyOnceItIsMostlyTrained()
    {
        float[] raw = Stored("final_layer.linear.weight"), ema = Stored(Ema.Prefix + "final_layer.linear.weight");
        Assert.That(raw, Is.Not.EqualTo(ema), "two steps move the raw weights away from the EMA");

        // decay^steps after 2 steps: 0.9999 -> 0.9998 and 0.8 -> 0.64 (> 0.5: raw, with a note); 0.7 -> 0.49 (the EMA).
        foreach (var (decay, share) in new[] { (0.9999, 100), (0.8, 64) })
        {
            using var g = ImageGenerator.Load(RunWithDecay(decay), "cpu", SamplingWeights.Auto, threads: 1);
            Assert.That((g.UsesEma, g.Step, g.EmaDecay), Is.EqualTo((false, (int?)2, decay)));
            Assert.That(Weight(g), Is.EqualTo(raw));
            Assert.That(g.WeightsNote, Is.EqualTo(string.Create(CultureInfo.InvariantCulture,
                $"note: after 2 steps the EMA (decay {decay}) is still {share}% the initial model, whose output is 0; sampling the raw weights instead (--weights ema forces the EMA).")));
        }
        using (var g = ImageGenerator.Load(RunWithDecay(0.7), "cpu", SamplingWeights.Auto, threads: 1))
        {
            Assert.That((g.UsesEma, g.WeightsNote), Is.EqualTo((true, (string?)null)));
            Assert.That(Weight(g), Is.EqualTo(ema));
        }
        // Forced choices: the EMA with a warning when it is mostly the initial model; raw silently.
        using (var g = ImageGenerator.Load(sit, "cpu", SamplingWeights.Ema, threads: 1))
        {
            Assert.That(g.UsesEma, Is.True);
            Assert.That(Weight(g), Is.EqualTo(ema));
            Assert.That(g.WeightsNote, Is.EqualTo("note: after 2 steps the EMA (decay 0.9999) is still 100% the initial model, whose output is 0; --weights raw samples the trained weights."));
        }
        using (var g = ImageGenerator.Load(RunWithDecay(0.7), "cpu", SamplingWeights.Ema, threads: 1)) Assert.That(g.WeightsNote, Is.Null);
        using (var g = ImageGenerator.Load(sit, "cpu", SamplingWeights.Raw, threads: 1))
        {
            Assert.That((g.UsesEma, g.WeightsNote), Is.EqualTo((false, (string?)null)));
            Assert.That(Weight(g), Is.EqualTo(raw));
        }
        // The frozen pos_embed comes from the state_dict either way.
        using (var g = ImageGenerator.Load(sit, "cpu", SamplingWeights.Ema, threads: 1))
            Assert.That(g.Model["pos_embed"].ToFloatArray(), Is.EqualTo(Stored("pos_embed")));
    }

    [Test]
    public void AutoWeightsWithoutAStepAreTheEma()
    {
        // A checkpoint whose metadata lacks the step (e.g. converted from PyTorch): nothing says the EMA is young.
        string folder = Path.Combine(root, "nostep");
        Directory.CreateDirectory(folder);
        File.Copy(Path.Combine(sit, "config.json"), Path.Combine(folder, "config.json"), overwrite: true);
        using (var backend = new CpuBackend(1))
        using (var file = SafeTensors.Read(Path.Combine(sit, "checkpoint.safetensors"), backend))
            SafeTensors.Write(Path.Combine(folder, "checkpoint.safetensors"), [.. file.Tensors.Select(kv => (kv.Key, kv.Value))]);
        using var g = ImageGenerator.Load(folder, "cpu", threads: 1);
        Assert.That((g.UsesEma, g.Step, g.WeightsNote), Is.EqualTo((true, (int?)null, (string?)null)));
    }

    [Test]
    public void DdpmCheckpointsSampleWithDdpmOrDdimAndGuideOnlyTheEpsChannel()
    {
        using var g = ImageGenerator.Load(dit, "cpu", SamplingWeights.Raw, threads: 2);
        Assert.That((g.Objective, g.Channels, g.Size, g.NumClasses, g.NullClass, g.GuidedEpsChannels), Is.EqualTo(("ddpm", 1, 32, 10, 10, 1)));
        var defaults = g.Resolve();
        Assert.That((defaults.Method, defaults.Steps), Is.EqualTo((SamplingMethod.Ddpm, 250)), "DiT's sample.py: 250 respaced DDPM steps");
        var ddim = g.Resolve(new GenerationOptions { Method = SamplingMethod.Ddim });
        Assert.That((ddim.Method, ddim.Steps), Is.EqualTo((SamplingMethod.Ddim, 50)));
        Assert.That(g.Describe(new GenerationOptions { Steps = 4, CfgScale = 2 }), Is.EqualTo("DDPM 4 of 1000 steps, cfg 2 on eps channels 0"));

        int[] labels = [1, 7, 10];
        var net = DiffusionModels.FromSiT(g.Model);
        int[] shape = [3, 1, 32, 32];

        // DDPM on the "4" respacing, guided: uncond + 2 (cond - uncond) on eps channel 0 only (C = 1 < 3).
        var progress = new List<SamplerProgress>();
        var guided = g.Generate(labels, 5, new GenerationOptions { Steps = 4, CfgScale = 2 }, progress.Add);
        var expected = GaussianDiffusion.Create("4").PSampleLoop(DiffusionModels.WithGuidance(net, 1, 2, 10, guidedChannels: 1), shape, labels, 5);
        Assert.That(guided.Values, Is.EqualTo(expected));
        Assert.That(guided.Labels, Is.EqualTo(labels));
        Assert.That(progress.Select(p => (p.Step, p.Steps)), Is.EqualTo(Enumerable.Range(1, 4).Select(k => (k, 4))));
        Assert.That(progress.Select(p => p.Time), Is.EqualTo(new[] { 0.75, 0.5, 0.25, 0.0 }));
        // DiT's literal 3 guided channels would reach the variance channel of a 1-channel model: that gives other samples.
        var intoVariance = GaussianDiffusion.Create("4").PSampleLoop(DiffusionModels.WithGuidance(net, 1, 2, 10, guidedChannels: 3), shape, labels, 5);
        Assert.That(intoVariance, Is.Not.EqualTo(guided.Values));

        // DDIM (eta 0) on "ddim5", one image per model call: the same as one batch (each sample's noise is its own).
        var viaDdim = g.Generate(labels, 6, new GenerationOptions { Method = SamplingMethod.Ddim, Steps = 5, ModelBatch = 1 });
        var ddimExpected = GaussianDiffusion.Create("ddim5").DdimSampleLoop(net, shape, labels, 6);
        Assert.That(viaDdim.Values, Is.EqualTo(ddimExpected).Within(1e-5));
        Assert.That(viaDdim.Values, Is.Not.EqualTo(g.Generate(labels, 6, new GenerationOptions { Steps = 5 }).Values), "DDPM is not DDIM");
    }

    [TestCase(SamplingMethod.Sde, 0, false, 1.0, "--mode sde is a SiT sampler, but DiT-T/2 was trained with the DDPM objective; use --mode ddpm or ddim.")]
    [TestCase(SamplingMethod.Ode, 0, false, 1.0, "--mode ode is a SiT sampler")]
    [TestCase(SamplingMethod.Ddim, 999, false, 1.0, "--steps 999 cannot be DDIM steps: no integer stride of the 1000 diffusion steps gives exactly 999")]
    [TestCase(SamplingMethod.Ddpm, 1001, false, 1.0, "--steps 1001 cannot be DDPM steps")]
    [TestCase(SamplingMethod.Ddpm, 0, true, 1.0, "the Heun correction applies to the ODE sampler only")]
    [TestCase(SamplingMethod.Ddpm, 0, false, 0.7, "the guidance interval (--guidance-low, --guidance-high) belongs to REPA's SiT samplers")]
    public void DdpmCheckpointsRefuseSettingsOfTheOtherSamplers(SamplingMethod method, int steps, bool heun, double high, string message)
    {
        using var g = ImageGenerator.Load(dit, "cpu", threads: 1);
        var e = Assert.Throws<ArgumentException>(() => g.Resolve(new GenerationOptions { Method = method, Steps = steps, Heun = heun, GuidanceHigh = high }))!;
        Assert.That(e.Message, Does.StartWith(message));
        Assert.That(e.Message.TrimEnd('.'), Does.Not.Contain(". "), "one sentence");
    }

    [Test]
    public void SampleCommandRoutesDdpmCheckpoints()
    {
        string output = Path.Combine(root, "dit-cli");
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Cli.Run(["sample", "--checkpoint", dit, "--labels", "1,7", "--per-class", "2", "--steps", "3", "--cfg", "1.5", "--seed", "2",
            "--out", output, "--threads", "2"], o, e);
        Assert.That(code, Is.EqualTo(0), e.ToString());
        Assert.That(o.ToString(), Does.Contain("DDPM objective").And.Contain("DDPM 3 of 1000 steps, cfg 1.5 on eps channels 0, seed 2")
            .And.Contain("step 3/3"));
        using var g = ImageGenerator.Load(dit, "cpu", threads: 2);
        var samples = g.Generate([1, 1, 7, 7], 2, new GenerationOptions { Steps = 3, CfgScale = 1.5 });
        Assert.That(ReadNpz(Path.Combine(output, "samples.npz"))["arr_0"].Data, Is.EqualTo(samples.ToImages()));

        o = new StringWriter();
        e = new StringWriter();
        Assert.That(Cli.Run(["sample", "--checkpoint", dit, "--mode", "ode"], o, e), Is.EqualTo(2));
        Assert.That(e.ToString().Trim(), Is.EqualTo("error: --mode ode is a SiT sampler, but DiT-T/2 was trained with the DDPM objective; use --mode ddpm or ddim."));
    }

    [Test]
    public void NpzHoldsExactlyTheGridsPixels()
    {
        using var g = ImageGenerator.Load(sit, "cpu", threads: 2);
        var samples = g.Generate(ImageGenerator.RepeatEach([2, 9], 3), 11, new GenerationOptions { Method = SamplingMethod.Ode, Steps = 2 });
        string png = Path.Combine(root, "grid", "g.png"), npz = Path.Combine(root, "grid", "g.npz");
        samples.SaveGrid(png, columns: 3);
        samples.SaveNpz(npz);
        var images = ReadNpz(npz)["arr_0"];
        Assert.That(images.Type, Is.EqualTo(NpyType.UInt8));
        Assert.That(images.Shape, Is.EqualTo(new[] { 6, 32, 32, 1 }));
        Assert.That(images.Data, Is.EqualTo(samples.ToImages()));
        Assert.That(images.Data, Is.EqualTo(SampleImages.ToNhwcBytes(samples.Values, 6, 1, 32, 32)));

        // The grid: no title, rows labelled PULLOVER and ANKLE BOOT (the default row labels), 64 px cells 2 px apart.
        var grid = PlotTests.Decode(png);
        int left = 8 + 2 * ("Ankle boot".Length * 6 - 1) + 8, top = 8;
        Assert.That((grid.Width, grid.Height), Is.EqualTo((left + 3 * 64 + 2 * 2 + 8, top + 2 * 64 + 2 + 8)));
        for (int i = 0; i < 6; i++)
            for (int y = 0; y < 64; y++)
                for (int x = 0; x < 64; x++)
                {
                    byte v = images.Data[i * 1024 + y / 2 * 32 + x / 2];
                    var pixel = grid.At(left + i % 3 * 66 + x, top + i / 3 * 66 + y);
                    if (pixel != (v, v, v)) Assert.Fail($"image {i} pixel ({x}, {y}) is {pixel} in the grid, {v} in arr_0");
                }
    }

    [Test]
    public void DevicesOtherThanTheCpuAreOneSentence()
    {
        // cuda: the probe's sentence (no driver here) or, once this process chose the emulator, the missing op families;
        // ComputeDeviceTests checks both sentences exactly.
        string cudaRefusal = Assert.Throws<NotSupportedException>(() => ComputeDevice.Check("cuda"))!.Message;
        Assert.That(cudaRefusal, Does.StartWith("--device cuda: ").And.EndWith("; use --device cpu or auto."));
        var e = Assert.Throws<NotSupportedException>(() => ImageGenerator.Load(sit, "cuda"))!;
        Assert.That(e.Message, Is.EqualTo(cudaRefusal));
        if (Repa.Kernels.Ilgpu.IlgpuBackend.ProbeGpu(out _) == null)
        {
            // No GPU for ILGPU here: its refusal (ComputeDeviceTests checks the sentence exactly).
            e = Assert.Throws<NotSupportedException>(() => ImageGenerator.Load(sit, "ilgpu"))!;
            Assert.That(e.Message, Does.StartWith("--device ilgpu: ILGPU found no CUDA or OpenCL GPU").And.EndWith("; use --device cpu or auto."));
        }
        Assert.Throws<ArgumentException>(() => ImageGenerator.Load(sit, "gpu"));
        using (var auto = ImageGenerator.Load(sit, threads: 1))
        {
            Assert.That(auto.DeviceNote, Does.StartWith("auto chose the CPU: CUDA is unavailable: "), "no driver here (or only the tests' emulator)");
            Assert.That(auto.DeviceDescription, Does.StartWith("cpu: 1 thread(s)"));
        }
        using (var cpu = ImageGenerator.Load(sit, "cpu", threads: 1)) Assert.That(cpu.DeviceNote, Is.Null);
        var train = new StringWriter();
        Assert.That(Cli.Run(["train", "--device", "cuda"], TextWriter.Null, train), Is.EqualTo(2));
        Assert.That(train.ToString().Trim(), Is.EqualTo($"error: {cudaRefusal}"));
    }

    [Test]
    public void ClassNamesComeFromTheRunsDataFolder()
    {
        Assert.That(ClassNames.For("/usr/share/datasets/fashion-mnist", 10), Is.SameAs(ClassNames.FashionMnist));
        Assert.That(ClassNames.For("/data/Fashion_MNIST/", 10), Is.SameAs(ClassNames.FashionMnist));
        Assert.That(ClassNames.For("/data/FashionMNIST", 10), Is.SameAs(ClassNames.FashionMnist));
        Assert.That(ClassNames.For(TrainingData.MnistFolder, 10), Is.SameAs(ClassNames.Mnist));
        Assert.That(ClassNames.For("/data/fashion-mnist", 6), Is.Null, "a different class count is another dataset");
        Assert.That(ClassNames.For("/data/imagenet", 10), Is.Null);
        Assert.That(ClassNames.For(null, 10), Is.Null);
        Assert.That(ClassNames.FashionMnist, Has.Count.EqualTo(10));
        Assert.That(ClassNames.FashionMnist[9], Is.EqualTo("Ankle boot"));
        Assert.That(ClassNames.Mnist[7], Is.EqualTo("7"));

        using var named = ImageGenerator.Load(sit, "cpu", threads: 1);
        Assert.That(named.DataDir, Is.EqualTo(IdxDataset.DefaultFashionMnistFolder));
        Assert.That(Enumerable.Range(0, 11).Select(named.LabelName),
            Is.EqualTo(ClassNames.FashionMnist.Append("uncond")));

        string folder = Path.Combine(root, "elsewhere");
        Directory.CreateDirectory(folder);
        File.Copy(Path.Combine(sit, "checkpoint.safetensors"), Path.Combine(folder, "checkpoint.safetensors"), overwrite: true);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(sit, "config.json")))!;
        config["data_dir"] = "/data/my-photos";
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        using var numbered = ImageGenerator.Load(folder, "cpu", threads: 1);
        Assert.That(numbered.ClassNames, Is.Null);
        Assert.That(new[] { 0, 3, 10 }.Select(numbered.LabelName), Is.EqualTo(new[] { "0", "3", "uncond" }));
    }

    [Test]
    public void SamplesThatAreNotImagesSaySoInOneSentence()
    {
        using var g = ImageGenerator.Load(sit, "cpu", threads: 1);
        var samples = g.Generate([3], 0, new GenerationOptions { Steps = 1 });
        Assert.That(samples.AreImages, Is.True);
        // The same numbers seen as a 4-channel latent: no images, and the reason names the missing VAE.
        var latent = new GeneratedSamples(samples.Values, [0, 0, 0, 0], 4, 16, 16, k => k.ToString());
        var e = Assert.Throws<InvalidOperationException>(() => latent.ToImages())!;
        Assert.That(e.Message, Does.Contain("4-channel SD-VAE latents, not images, and Repa has no VAE decoder"));
        Assert.Throws<InvalidOperationException>(() => latent.SaveNpz(Path.Combine(root, "latent.npz")));
        Assert.That(File.Exists(Path.Combine(root, "latent.npz")), Is.False);
    }
}
