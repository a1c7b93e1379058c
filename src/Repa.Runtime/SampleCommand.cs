using System.Diagnostics;
using System.Globalization;
using Repa.Runtime.Sampling;

namespace Repa.Runtime;

/// <summary>
/// `Repa.Runtime sample`: a checkpoint through <see cref="ImageGenerator"/> (EMA or raw weights; REPA's SDE/ODE for SiT,
/// DDPM/DDIM for DiT), then samples.png (a grid, one labelled row per class) and samples.npz (arr_0, uint8 NHWC, for
/// ADM's evaluator) for pixel models; latent models get their latents as safetensors and a sentence on why.
/// </summary>
internal static class SampleCommand
{
    public const string GridFile = "samples.png";
    public const string NpzFile = "samples.npz";
    public const string LatentFile = "samples.safetensors";

    public static int Run(Options o, TextWriter stdout)
    {
        string checkpoint = o.String("--checkpoint", "");
        string labelList = o.String("--labels", "");
        int perClass = o.Int("--per-class", 8, min: 1);
        bool unconditional = o.Flag("--unconditional");
        var options = new GenerationOptions
        {
            Method = o.String("--mode", "", "sde", "ode", "ddpm", "ddim") switch
            {
                "sde" => SamplingMethod.Sde,
                "ode" => SamplingMethod.Ode,
                "ddpm" => SamplingMethod.Ddpm,
                "ddim" => SamplingMethod.Ddim,
                _ => SamplingMethod.Auto,
            },
            Steps = o.Int("--steps", 0, min: 1), // 0: the method's default (50; DDPM 250)
            Heun = o.Flag("--heun"),
            CfgScale = o.Double("--cfg", 1.0, min: 1),
            GuidanceLow = o.Double("--guidance-low", 0.0),
            GuidanceHigh = o.Double("--guidance-high", 1.0),
            ModelBatch = o.Int("--batch", 16, min: 1),
        };
        ulong seed = (ulong)o.Int("--seed", 0, min: 0);
        var weights = ReadWeights(o);
        string outFolder = o.String("--out", "");
        string device = o.String("--device", "auto", ComputeDevice.Names);
        int threads = o.Int("--threads", Environment.ProcessorCount, min: 1);
        o.RejectUnknown();
        if (checkpoint.Length == 0) throw new UsageException("sample needs --checkpoint (a run folder or its checkpoint.safetensors).");
        if (unconditional && labelList.Length > 0) throw new UsageException("--unconditional and --labels exclude each other; pass one of them.");
        if (unconditional && options.CfgScale > 1) throw new UsageException("--cfg above 1 needs class labels; drop --unconditional or --cfg.");
        ComputeDevice.Check(device); // cuda/ilgpu fail before the checkpoint loads

        using var generator = ImageGenerator.Load(checkpoint, device, weights, threads);
        options = generator.Resolve(options);
        var config = generator.Config;
        int classes = generator.NumClasses;
        int[] rowClasses = unconditional ? [.. Enumerable.Repeat(generator.NullClass, classes)]
            : labelList.Length > 0 ? ParseLabels(labelList, classes) : [.. Enumerable.Range(0, classes)];
        int[] labels = ImageGenerator.RepeatEach(rowClasses, perClass);
        string folder = outFolder.Length > 0 ? outFolder : Path.GetDirectoryName(Path.GetFullPath(generator.CheckpointFile))!;
        string method = generator.Describe(options);

        stdout.WriteLine($"device: {generator.DeviceDescription}{(generator.DeviceNote is { } why ? $" ({why})" : "")}");
        string trainedWith = generator.Objective == "ddpm" ? "DDPM objective" : $"{generator.PathType} path";
        stdout.WriteLine($"model: {config.Name} ({(generator.UsesEma ? "EMA" : "raw")} weights{(generator.Step is { } s ? $" of step {s}" : "")}, {trainedWith}) from {generator.CheckpointFile}");
        if (generator.WeightsNote != null) stdout.WriteLine(generator.WeightsNote);
        stdout.WriteLine($"sampling {labels.Length} images ({rowClasses.Length} {(unconditional ? "unconditional row" : "class")}{(rowClasses.Length == 1 ? "" : unconditional ? "s" : "es")} x {perClass}), {method}, seed {seed}");

        var clock = Stopwatch.StartNew();
        var samples = generator.Generate(labels, seed, options, p => Progress(stdout, p, clock));
        stdout.WriteLine();
        var elapsed = clock.Elapsed;

        string written = Save(samples, folder, perClass, string.Create(CultureInfo.InvariantCulture, $"{config.Name} {method}, seed {seed}"),
            [.. rowClasses.Select(generator.LabelName)], new Dictionary<string, string>
            {
                ["model"] = config.Name, ["sampler"] = method, ["seed"] = seed.ToString(CultureInfo.InvariantCulture),
                ["weights"] = generator.UsesEma ? "ema" : "raw",
            });
        stdout.WriteLine($"sample: {labels.Length} {(samples.AreImages ? "images" : "samples")} in {elapsed:hh\\:mm\\:ss} -> {written}");
        return 0;
    }

    /// <summary>
    /// Writes <paramref name="samples"/> into <paramref name="folder"/>: images as samples.png (a grid of
    /// <paramref name="columns"/> columns, rows labelled <paramref name="rowLabels"/>) and samples.npz (arr_0, uint8 NHWC);
    /// anything else (SD-VAE latents) as samples.safetensors with <paramref name="metadata"/>. Returns what was written, in words.
    /// </summary>
    internal static string Save(GeneratedSamples samples, string folder, int columns, string title, IReadOnlyList<string> rowLabels,
        IReadOnlyDictionary<string, string> metadata)
    {
        if (samples.AreImages)
        {
            string grid = Path.Combine(folder, GridFile), npz = Path.Combine(folder, NpzFile);
            samples.SaveGrid(grid, columns, title, rowLabels);
            samples.SaveNpz(npz);
            return $"{grid} (grid), {npz} (arr_0 uint8 [{samples.Count}, {samples.Height}, {samples.Width}, {samples.Channels}])";
        }
        string file = Path.Combine(folder, LatentFile);
        samples.SaveLatents(file, metadata);
        return $"{file} ('samples' [N, {samples.Channels}, {samples.Height}, {samples.Width}] float32, 'labels'); no image was written: {samples.NotImages}.";
    }

    /// <summary>--weights auto|ema|raw (shared with `eval`).</summary>
    internal static SamplingWeights ReadWeights(Options o) => o.String("--weights", "auto", "auto", "ema", "raw") switch
    {
        "ema" => SamplingWeights.Ema,
        "raw" => SamplingWeights.Raw,
        _ => SamplingWeights.Auto,
    };

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

    /// <summary>One progress line, rewritten in place: bar, step, time reached, rate, ETA.</summary>
    internal static void Progress(TextWriter stdout, SamplerProgress p, Stopwatch clock)
    {
        var elapsed = clock.Elapsed;
        double rate = p.Step / Math.Max(elapsed.TotalSeconds, 1e-9);
        stdout.Write(string.Create(CultureInfo.InvariantCulture,
            $"\rsampling {ProgressBar.Bar(p.Step, p.Steps)} step {p.Step}/{p.Steps} | t = {p.Time:F3} | {rate:F2} steps/s | ETA {ProgressBar.Eta(elapsed, p.Step, p.Steps)}   "));
    }
}
