using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Kernels.Cuda;
using Repa.Runtime.Data;
using Repa.Runtime.Encoders;
using Repa.Runtime.Models;
using Repa.Runtime.Sampling;
using Repa.Runtime.Training;

namespace Repa.Runtime;

/// <summary>`Repa.Runtime train`: flags -> TrainOptions -> Trainer.</summary>
internal static class TrainCommand
{
    /// <summary>$XDG_CACHE_HOME/repa/targets, else ~/.cache/repa/targets.</summary>
    public static string DefaultCacheFolder => Path.Combine(TrainingData.CacheRoot, "targets");

    public static int Run(Options o, TextWriter stdout)
    {
        string model = o.String("--config", "SiT-T/4", [.. SiTConfig.PresetNames]);
        var options = new TrainOptions
        {
            Model = model,
            Steps = o.Int("--steps", 1000, min: 1),
            Batch = o.Int("--batch", 32, min: 1),
            LearningRate = o.Double("--lr", 1e-4, min: 0),
            Seed = (ulong)o.Int("--seed", 0, min: 0),
            OutputFolder = o.String("--out", Path.Combine("runs", "latest")),
            DataFolder = o.String("--data", IdxDataset.DefaultFashionMnistFolder),
            ImageSize = o.Int("--image-size", 0, min: 1), // 0: the dataset's default (set from the data below)
            EncoderDepth = o.Int("--encoder-depth", 0, min: 1),
            QkNorm = o.String("--qk-norm", "false", "true", "false") == "true",
            CheckpointEvery = o.Int("--ckpt-every", 0, min: 1),
            GradientAccumulation = o.Int("--grad-accum", 1, min: 1),
            Resume = o.String("--resume", "") is { Length: > 0 } r ? r : null,
            Objective = new ObjectiveConfig(PathType: o.String("--path", "linear", "linear", "cosine"),
                Weighting: o.String("--weighting", "uniform", "uniform", "lognormal"), ProjCoeff: o.Double("--proj-coeff", 0.5, min: 0),
                ProjLoss: o.String("--proj-loss", "cosine", "cosine", "ntxent")),
            ObjectiveKind = o.String("--objective", "sit", "sit", "ddpm"),
            MixedPrecision = o.String("--mixed-precision", "auto", "auto", "no", "bf16", "fp16") is var mp && mp != "auto" ? mp : null,
            CudaGraph = o.String("--cuda-graph", "true", "true", "false") == "true",
        };
        string encoderName = o.String("--encoder", "resnet18", "resnet18", "none");
        string cacheFolder = o.String("--cache-dir", DefaultCacheFolder);
        int encoderSize = o.Int("--encoder-size", 0, min: 16);
        bool sampleGrid = o.String("--sample-grid", "true", "true", "false") == "true";
        string device = o.String("--device", "auto", ComputeDevice.Names);
        int threads = o.Int("--threads", Environment.ProcessorCount, min: 1);
        o.RejectUnknown();
        ComputeDevice.Check(device); // cuda/ilgpu: one sentence before any data is read
        if (options.Resume != null) Trainer.ResolveCheckpoint(options.Resume); // fail before any expensive work

        var data = TrainingData.Open(options.DataFolder, options.ImageSize);
        options = options with { ImageSize = data.Size };
        using var backend = ComputeDevice.Open(device, threads, out string? deviceNote);
        var (peak, peakText) = ComputeDevice.Peak(backend, Trainer.ComputeType(options.MixedPrecision, backend), threads);
        stdout.WriteLine($"device: {backend.Description}, {peakText}{(deviceNote != null ? $" ({deviceNote})" : "")}");
        OnnxEncoder? encoder = null;
        EncoderTargets? targets = null;
        if (options.Objective.ProjCoeff > 0)
        {
            if (encoderName == "none") throw new UsageException("--proj-coeff > 0 needs an encoder; pass --encoder resnet18 or --proj-coeff 0.");
            var preset = SiTConfig.Preset(model);
            int size = encoderSize > 0 ? encoderSize : 16 * (options.ImageSize / preset.PatchSize);
            encoder = OnnxEncoder.ResNet18(inputSize: size);
            targets = new EncoderTargets(data, encoder, "ResNet-18 stage 3 (ReLU347)", cacheFolder);
        }
        bool writeSamples = false;
        using (encoder)
        using (targets)
        using (var trainer = new Trainer(backend, options, data, targets))
        using (var stop = new CancellationTokenSource())
        {
            // Ctrl-C finishes the current step, saves the checkpoint and exits cleanly; a second Ctrl-C kills.
            ConsoleCancelEventHandler onCancel = (_, e) => { if (!stop.IsCancellationRequested) { e.Cancel = true; stop.Cancel(); } };
            Console.CancelKeyPress += onCancel;
            trainer.Stop = stop.Token;
            trainer.PeakGflops = peak;
            // The run's images are known in advance (Philox by step): encode them once, up front, with a progress bar.
            targets?.Precompute(Enumerable.Range(1, options.Steps).SelectMany(trainer.Indices), stdout);
            IReadOnlyList<StepMetrics> history;
            try { history = trainer.Run(stdout); }
            finally { Console.CancelKeyPress -= onCancel; }
            if (history.Count == 0)
            {
                stdout.WriteLine($"nothing to do: the checkpoint is already at step {trainer.CompletedSteps} of {options.Steps}.");
                return 0;
            }
            var first = history[0];
            var last = history[^1];
            double seconds = history.Sum(h => h.Seconds);
            stdout.WriteLine($"done: {history.Count} steps in {TimeSpan.FromSeconds(seconds):hh\\:mm\\:ss}, loss {first.Loss:F4} -> {last.Loss:F4}, " +
                             $"checkpoint {Path.Combine(options.OutputFolder, Trainer.CheckpointFile)}, loss plot {Path.Combine(options.OutputFolder, "loss.png")}");
            writeSamples = sampleGrid && !stop.IsCancellationRequested;
        }
        // After the trainer and the encoder are gone: the checkpoint is reloaded from disk, as any later `sample` would.
        if (writeSamples) WriteSamples(backend, options, stdout);
        return 0;
    }

    /// <summary>Samples per class in the grid `train` leaves in its run folder.</summary>
    public const int GridPerClass = 8;

    /// <summary>
    /// Sampling steps of that grid: half the sampler's default 50. On the default CPU run (SiT-T/2, 80 samples, 2 cores)
    /// 50 SDE steps took 98 s, which with the uncached encoder targets brought the run to 14 of its 15 minutes; 25 take
    /// about 48 s and give grids of the same look for such short runs. `sample` draws with full settings.
    /// </summary>
    public const int GridSteps = 25;

    /// <summary>Rows of that grid at most: a model of more classes (ImageNet's 1000) shows this many, spread evenly.</summary>
    public const int GridMaxClasses = 16;

    /// <summary>The grid's classes: all of them up to <see cref="GridMaxClasses"/>, else that many at even spacing from 0.</summary>
    internal static int[] GridClasses(int numClasses) => numClasses <= GridMaxClasses
        ? [.. Enumerable.Range(0, numClasses)]
        : [.. Enumerable.Range(0, GridMaxClasses).Select(i => (int)((long)i * numClasses / GridMaxClasses))];

    /// <summary>
    /// The run's samples.png and samples.npz (samples.safetensors for latents): <see cref="GridPerClass"/> samples of every
    /// class (at most <see cref="GridMaxClasses"/>; unconditional ones for unlabelled data) from the checkpoint just saved, with --weights auto (a short run's
    /// EMA is still the initial model) and the objective's default sampler at <see cref="GridSteps"/> steps (DDPM too,
    /// instead of its 250) to keep the cost of a preview low, seeded with the run's seed.
    /// </summary>
    private static void WriteSamples(Repa.Kernels.IBackend backend, TrainOptions options, TextWriter stdout)
    {
        using var generator = ImageGenerator.Load(Path.Combine(options.OutputFolder, Trainer.CheckpointFile), backend);
        var sampler = generator.Resolve(new GenerationOptions { Steps = GridSteps });
        int[] rows = generator.NumClasses > 1 ? GridClasses(generator.NumClasses) : [generator.NullClass];
        int[] labels = ImageGenerator.RepeatEach(rows, GridPerClass);
        string method = generator.Describe(sampler);
        if (generator.WeightsNote != null) stdout.WriteLine(generator.WeightsNote);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var samples = generator.Generate(labels, options.Seed, sampler, p => SampleCommand.Progress(stdout, p, clock));
        stdout.WriteLine();
        string written = SampleCommand.Save(samples, options.OutputFolder, GridPerClass,
            $"{generator.Config.Name} step {generator.Step}, {(generator.UsesEma ? "EMA" : "raw")} weights, {method}, seed {options.Seed}",
            [.. rows.Select(generator.LabelName)],
            new Dictionary<string, string> { ["model"] = generator.Config.Name, ["sampler"] = method, ["seed"] = options.Seed.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        stdout.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"samples: {labels.Length} from the {(generator.UsesEma ? "EMA" : "raw")} weights, {method}, in {clock.Elapsed.TotalSeconds:F1} s -> {written} (--sample-grid false skips this)"));
    }
}
