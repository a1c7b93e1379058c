using System.Diagnostics;
using System.Globalization;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Plots;
using Repa.Runtime.Sampling;

namespace Repa.Runtime;

/// <summary>
/// `Repa.Runtime sample`: the EMA weights of a checkpoint, REPA's SDE or ODE sampler, and a labelled grid of the
/// samples (samples.png, one row per class) for pixel models; latent models get their latents as safetensors.
/// </summary>
internal static class SampleCommand
{
    public const string GridFile = "samples.png";
    public const string LatentFile = "samples.safetensors";

    public static int Run(Options o, TextWriter stdout)
    {
        string checkpoint = o.String("--checkpoint", "");
        string labelList = o.String("--labels", "");
        int perClass = o.Int("--per-class", 8, min: 1);
        bool unconditional = o.Flag("--unconditional");
        var sampler = new SamplerOptions
        {
            Mode = o.String("--mode", "sde", "sde", "ode") == "ode" ? SamplerMode.Ode : SamplerMode.Sde,
            Steps = o.Int("--steps", 50, min: 1),
            Heun = o.Flag("--heun"),
            CfgScale = o.Double("--cfg", 1.0, min: 1),
            GuidanceLow = o.Double("--guidance-low", 0.0),
            GuidanceHigh = o.Double("--guidance-high", 1.0),
            Seed = (ulong)o.Int("--seed", 0, min: 0),
        };
        bool ema = o.String("--weights", "ema", "ema", "raw") == "ema";
        string outFolder = o.String("--out", "");
        int modelBatch = o.Int("--batch", 16, min: 1);
        o.String("--device", "auto", "auto", "cpu");
        int threads = o.Int("--threads", Environment.ProcessorCount, min: 1);
        o.RejectUnknown();
        if (checkpoint.Length == 0) throw new UsageException("sample needs --checkpoint (a run folder or its checkpoint.safetensors).");
        if (unconditional && labelList.Length > 0) throw new UsageException("--unconditional and --labels exclude each other; pass one of them.");
        if (unconditional && sampler.CfgScale > 1) throw new UsageException("--cfg above 1 needs class labels; drop --unconditional or --cfg.");
        sampler.Validate(); // before the checkpoint loads: bad flags fail at once

        using var backend = new CpuBackend(threads);
        var loaded = SiTSampling.Load(checkpoint, backend, ema);
        using var model = loaded.Model;
        var config = model.Config;
        sampler = sampler with { PathType = loaded.Objective.PathType };
        int classes = config.NumClasses;
        int[] rowClasses = unconditional ? [.. Enumerable.Repeat(classes, classes)]
            : labelList.Length > 0 ? ParseLabels(labelList, classes) : [.. Enumerable.Range(0, classes)];
        int[] labels = [.. rowClasses.SelectMany(c => Enumerable.Repeat(c, perClass))];
        string folder = outFolder.Length > 0 ? outFolder : Path.GetDirectoryName(Path.GetFullPath(loaded.File))!;

        string guidance = sampler.CfgScale > 1
            ? string.Create(CultureInfo.InvariantCulture, $"cfg {sampler.CfgScale} for t in [{sampler.GuidanceLow}, {sampler.GuidanceHigh}]")
            : "no guidance";
        string method = $"{(sampler.Mode == SamplerMode.Ode ? sampler.Heun ? "ODE Heun" : "ODE Euler" : "SDE Euler-Maruyama")} {sampler.Steps} steps";
        stdout.WriteLine($"model: {config.Name} ({(ema ? "EMA" : "raw")} weights{(loaded.Step is { } s ? $" of step {s}" : "")}, {loaded.Objective.PathType} path) from {loaded.File}");
        double decay = new Training.TrainOptions().EmaDecay; // `train` does not expose the decay: its default is the run's
        if (ema && loaded.Step is { } steps && Math.Pow(decay, steps) > 0.5)
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"note: after {steps} steps the EMA (decay {decay}) is still {100 * Math.Pow(decay, steps):F0}% the initial model, whose output is 0; --weights raw samples the trained weights."));
        stdout.WriteLine($"sampling {labels.Length} images ({rowClasses.Length} {(unconditional ? "unconditional rows" : "classes")} x {perClass}), {method}, {guidance}, seed {sampler.Seed}, device: {backend.Description}");

        var clock = Stopwatch.StartNew();
        var samples = SiTSampling.Generate(model, labels, sampler, modelBatch, p => Progress(stdout, p, clock));
        stdout.WriteLine();
        var elapsed = clock.Elapsed;

        int c = config.InChannels, size = config.InputSize;
        if (c is 1 or 3)
        {
            var images = SampleImages.ToNhwcBytes(samples, labels.Length, c, size, size);
            string[] rowLabels = [.. rowClasses.Select(k => k == classes ? "uncond" : k.ToString(CultureInfo.InvariantCulture))];
            string title = string.Create(CultureInfo.InvariantCulture, $"{config.Name} {method}, {guidance}, seed {sampler.Seed}");
            string grid = Path.Combine(folder, GridFile);
            SampleGrid.Save(grid, images, labels.Length, size, size, c, perClass, rowLabels, title);
            // NPZ: samples.npz (arr_0 = `images`, uint8 [N, H, W, C], the layout ADM's evaluator reads) is written here
            // once the npy/npz writer (Data/Npy.cs) lands.
            stdout.WriteLine($"sample: {labels.Length} images in {elapsed:hh\\:mm\\:ss} -> {grid}");
            return 0;
        }

        // Not displayable: latents (4 channels = SD-VAE space) or other channel counts go out as tensors.
        string file = Path.Combine(folder, LatentFile);
        using (var tape = new Tape())
        {
            var f = new float[samples.Length];
            for (int i = 0; i < f.Length; i++) f[i] = (float)samples[i];
            SafeTensors.Write(file,
                [("samples", Tensor.FromArray(backend, f, labels.Length, c, size, size)), ("labels", Tensor.FromArray(backend, labels, labels.Length))],
                new Dictionary<string, string> { ["model"] = config.Name, ["sampler"] = method, ["guidance"] = guidance, ["seed"] = sampler.Seed.ToString(CultureInfo.InvariantCulture) });
        }
        string why = c == 4
            ? "the model works in the 4-channel SD-VAE latent space and Repa has no VAE decoder, so no image was written (REPA decodes latents / 0.18215 with stabilityai/sd-vae-ft-ema)"
            : $"{c}-channel samples are not images, so no PNG was written";
        stdout.WriteLine($"sample: {labels.Length} samples in {elapsed:hh\\:mm\\:ss} -> {file} ('samples' [N, {c}, {size}, {size}] float32, 'labels'); {why}.");
        return 0;
    }

    /// <summary>"0,3,7" -> [0, 3, 7], each a class of the model, none twice.</summary>
    internal static int[] ParseLabels(string text, int classes)
    {
        var result = new List<int>();
        foreach (string part in text.Split(','))
        {
            if (!int.TryParse(part.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int k) || k < 0 || k >= classes)
                throw new UsageException($"--labels must list class numbers 0..{classes - 1} separated by commas, got '{part.Trim()}' in '{text}'.");
            if (result.Contains(k)) throw new UsageException($"--labels names class {k} twice; each class is one row of --per-class samples.");
            result.Add(k);
        }
        return [.. result];
    }

    private static void Progress(TextWriter stdout, SamplerProgress p, Stopwatch clock)
    {
        double seconds = clock.Elapsed.TotalSeconds, rate = p.Step / Math.Max(seconds, 1e-9);
        var eta = TimeSpan.FromSeconds((p.Steps - p.Step) / rate);
        stdout.Write(string.Create(CultureInfo.InvariantCulture,
            $"\rsampling step {p.Step}/{p.Steps} [{new string('#', 30 * p.Step / p.Steps),-30}] t = {p.Time:F3}, {rate:F2} steps/s, ETA {eta:hh\\:mm\\:ss}   "));
    }
}
