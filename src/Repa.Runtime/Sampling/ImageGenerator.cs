using System.Globalization;
using Repa.Kernels;
using Repa.Runtime.Data;
using Repa.Runtime.Diffusion;
using Repa.Runtime.Models;

namespace Repa.Runtime.Sampling;

/// <summary>How samples are drawn. <see cref="Auto"/> is the checkpoint's own: SDE for SiT, DDPM for DiT.</summary>
public enum SamplingMethod
{
    /// <summary>The objective's default: <see cref="Sde"/> for a "sit" checkpoint, <see cref="Ddpm"/> for a "ddpm" one.</summary>
    Auto,

    /// <summary>REPA's Euler-Maruyama SDE sampler (SiT checkpoints).</summary>
    Sde,

    /// <summary>REPA's Euler ODE sampler, optionally with Heun's correction (SiT checkpoints).</summary>
    Ode,

    /// <summary>DiT's ancestral DDPM sampling on a respaced schedule, like its sample.py's "250" (DiT checkpoints).</summary>
    Ddpm,

    /// <summary>DiT's DDIM sampling with eta 0 on the "ddimN" schedule (DiT checkpoints).</summary>
    Ddim,
}

/// <summary>
/// What <see cref="ImageGenerator.Generate"/> does besides the labels and the seed: the method, its steps, classifier-free
/// guidance and how many images the model sees per call. Defaults: the checkpoint's method, 50 steps (250 for DDPM, as
/// DiT's sample.py), no guidance, 16 images per model call.
/// </summary>
public sealed record GenerationOptions
{
    /// <summary>The sampler; <see cref="SamplingMethod.Auto"/> = the checkpoint's own.</summary>
    public SamplingMethod Method { get; init; } = SamplingMethod.Auto;

    /// <summary>Sampling steps (model evaluations for SDE/ODE/DDIM; respaced steps for DDPM); 0 = the method's default.</summary>
    public int Steps { get; init; }

    /// <summary>Heun's second-order correction (ODE only).</summary>
    public bool Heun { get; init; }

    /// <summary>Classifier-free guidance scale, &gt;= 1; 1 = none. SiT: REPA's guidance on all channels; DiT: on its first min(3, C) eps channels.</summary>
    public double CfgScale { get; init; } = 1.0;

    /// <summary>SiT only: guidance applies while GuidanceLow &lt;= t &lt;= GuidanceHigh (REPA's guidance interval; paper best [0, 0.7]).</summary>
    public double GuidanceLow { get; init; }

    /// <summary>See <see cref="GuidanceLow"/>.</summary>
    public double GuidanceHigh { get; init; } = 1.0;

    /// <summary>At most this many images per model call (guidance doubles the images, not this limit); results do not depend on it.</summary>
    public int ModelBatch { get; init; } = 16;
}

/// <summary>
/// Loads a checkpoint that `train` wrote and generates samples from it: the library's entry point for other tools and the
/// engine of the `sample` command. It knows the model, its objective (SiT: REPA's SDE/ODE samplers; DiT "ddpm": DDPM or
/// DDIM), its classes (names for Fashion-MNIST / MNIST runs), the null class and the sample shape. Samples depend only
/// on the checkpoint, the seed, each sample's label and its position in the label list.
/// </summary>
/// <example>
/// <code>
/// using var generator = ImageGenerator.Load("runs/latest", device: "cpu");
/// var samples = generator.Generate([0, 0, 7, 7], seed: 1, new GenerationOptions { CfgScale = 1.8, GuidanceHigh = 0.7 });
/// samples.SaveGrid("grid.png", columns: 2);
/// </code>
/// </example>
public sealed class ImageGenerator : IDisposable
{
    /// <summary>Steps of every method but DDPM when none are given.</summary>
    public const int DefaultSteps = 50;

    /// <summary>DDPM's respaced steps when none are given: DiT's sample.py samples with "250".</summary>
    public const int DefaultDdpmSteps = 250;

    private readonly IBackend backend;
    private readonly bool ownsBackend, ownsModel = true;
    private readonly SiT model;
    private bool disposed;

    private ImageGenerator(IBackend backend, bool ownsBackend, CheckpointModel loaded, string? deviceNote)
    {
        this.backend = backend;
        this.ownsBackend = ownsBackend;
        model = loaded.Model;
        Objective = loaded.ObjectiveKind;
        PathType = loaded.Objective.PathType;
        CheckpointFile = loaded.File;
        Step = loaded.Step;
        UsesEma = loaded.Ema;
        WeightsNote = loaded.WeightsNote;
        DataDir = loaded.DataDir;
        EmaDecay = loaded.EmaDecay;
        DeviceNote = deviceNote;
        ClassNames = Data.ClassNames.For(loaded.DataDir, Config.NumClasses);
    }

    private ImageGenerator(SiT model, string objective, string pathType)
    {
        backend = model.Backend;
        ownsBackend = false;
        ownsModel = false;
        this.model = model;
        Objective = objective;
        PathType = pathType;
        CheckpointFile = "(in memory)";
        EmaDecay = new Training.TrainOptions().EmaDecay;
    }

    /// <summary>
    /// Samples a model held in memory (e.g. one being trained or evaluated) without owning it or its backend;
    /// <paramref name="objective"/> is "sit" (then <paramref name="pathType"/> is its interpolant) or "ddpm".
    /// </summary>
    public static ImageGenerator ForModel(SiT model, string objective = "sit", string pathType = "linear")
    {
        ArgumentNullException.ThrowIfNull(model);
        if (objective is not ("sit" or "ddpm")) throw new ArgumentException($"objective must be sit or ddpm, got '{objective}'.", nameof(objective));
        Training.Objective.Interpolant(pathType, 0.5, out _, out _, out _, out _); // rejects an unknown path in one sentence
        return new ImageGenerator(model, objective, pathType);
    }

    /// <summary>
    /// Loads <paramref name="checkpoint"/> (a run folder or its checkpoint.safetensors, with config.json beside it) on
    /// <paramref name="device"/> (see <see cref="ComputeDevice.Open"/>: "auto" or "cpu" today; "cuda" and "ilgpu" throw
    /// <see cref="NotSupportedException"/> with the reason) with <paramref name="threads"/> CPU threads (0 = all cores), taking the
    /// <paramref name="weights"/> asked for (auto: the EMA unless it is still mostly the initial model).
    /// </summary>
    public static ImageGenerator Load(string checkpoint, string device = "auto", SamplingWeights weights = SamplingWeights.Auto, int threads = 0)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        var backend = ComputeDevice.Open(device, threads, out string? note);
        try
        {
            return Create(backend, ownsBackend: true, SiTSampling.Load(checkpoint, backend, weights), note);
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }

    /// <summary>Loads <paramref name="checkpoint"/> onto a backend the caller owns (and disposes after this generator).</summary>
    public static ImageGenerator Load(string checkpoint, IBackend backend, SamplingWeights weights = SamplingWeights.Auto)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(backend);
        return Create(backend, ownsBackend: false, SiTSampling.Load(checkpoint, backend, weights), null);
    }

    private static ImageGenerator Create(IBackend backend, bool ownsBackend, CheckpointModel loaded, string? deviceNote)
    {
        if (loaded.ObjectiveKind is "sit" or "ddpm") return new ImageGenerator(backend, ownsBackend, loaded, deviceNote);
        loaded.Model.Dispose();
        throw new InvalidDataException($"checkpoint '{loaded.File}': its config.json names the objective '{loaded.ObjectiveKind}'; Repa samples sit and ddpm checkpoints.");
    }

    /// <summary>The loaded network (fp32); owned by this generator.</summary>
    public SiT Model => model;

    /// <summary>Its architecture (config.json).</summary>
    public SiTConfig Config => model.Config;

    /// <summary>The training objective: "sit" (flow samplers) or "ddpm" (DDPM/DDIM).</summary>
    public string Objective { get; }

    /// <summary>The SiT interpolant ("linear" or "cosine") the flow samplers use.</summary>
    public string PathType { get; }

    /// <summary>Classes of the model; labels are 0..NumClasses-1.</summary>
    public int NumClasses => Config.NumClasses;

    /// <summary>The label of unconditional samples (and of guidance's unconditional branch): NumClasses.</summary>
    public int NullClass => Config.NumClasses;

    /// <summary>Channels of a sample: 1 or 3 for pixel models, 4 for SD-VAE latents.</summary>
    public int Channels => Config.InChannels;

    /// <summary>Height and width of a sample.</summary>
    public int Size => Config.InputSize;

    /// <summary>Whether samples are pixel images (1 or 3 channels in [-1, 1]); latents need a VAE decoder Repa does not have.</summary>
    public bool MakesImages => Channels is 1 or 3;

    /// <summary>The checkpoint file read.</summary>
    public string CheckpointFile { get; }

    /// <summary>The training step of the checkpoint, when recorded.</summary>
    public int? Step { get; }

    /// <summary>Whether the EMA weights are sampled (else the raw trained weights).</summary>
    public bool UsesEma { get; }

    /// <summary>A note about the weights (auto fell back to raw, or a forced EMA is barely trained), or null.</summary>
    public string? WeightsNote { get; }

    /// <summary>config.json's data_dir, or null.</summary>
    public string? DataDir { get; }

    /// <summary>config.json's EMA decay.</summary>
    public double EmaDecay { get; }

    /// <summary>The backend the model runs on, in words.</summary>
    public string DeviceDescription => backend.Description;

    /// <summary>Why "auto" picked this device, or null when it was named.</summary>
    public string? DeviceNote { get; }

    /// <summary>The dataset's class names (Fashion-MNIST, MNIST), or null when the data folder is not a known dataset.</summary>
    public IReadOnlyList<string>? ClassNames { get; }

    /// <summary>A label in words: its class name, else its number; the null class is "uncond".</summary>
    public string LabelName(int label) =>
        label == NullClass ? "uncond"
        : ClassNames != null && label >= 0 && label < ClassNames.Count ? ClassNames[label]
        : label.ToString(CultureInfo.InvariantCulture);

    /// <summary><paramref name="perClass"/> labels of each class in turn: the rows of a grid with one row per class.</summary>
    public static int[] RepeatEach(IEnumerable<int> classes, int perClass)
    {
        ArgumentNullException.ThrowIfNull(classes);
        if (perClass < 1) throw new ArgumentException($"samples per class must be at least 1, got {perClass}.", nameof(perClass));
        return [.. classes.SelectMany(c => Enumerable.Repeat(c, perClass))];
    }

    /// <summary>
    /// <paramref name="options"/> with the method and steps made concrete for this checkpoint and every field checked;
    /// throws <see cref="ArgumentException"/> with one sentence when a setting does not fit (e.g. --mode sde for a DDPM
    /// checkpoint, a guidance interval for DiT, DDIM steps that no stride gives).
    /// </summary>
    public GenerationOptions Resolve(GenerationOptions? options = null)
    {
        var o = options ?? new GenerationOptions();
        bool ddpm = Objective == "ddpm";
        var method = o.Method == SamplingMethod.Auto ? ddpm ? SamplingMethod.Ddpm : SamplingMethod.Sde : o.Method;
        if (!Enum.IsDefined(method)) throw new ArgumentException($"unknown sampling method {o.Method}.", nameof(options));
        bool flow = method is SamplingMethod.Sde or SamplingMethod.Ode;
        string mode = method.ToString().ToLowerInvariant();
        if (ddpm && flow)
            throw new ArgumentException($"--mode {mode} is a SiT sampler, but {Config.Name} was trained with the DDPM objective; use --mode ddpm or ddim.");
        if (!ddpm && !flow)
            throw new ArgumentException($"--mode {mode} is DiT's sampler, but {Config.Name} was trained with the SiT velocity objective; use --mode sde or ode.");
        int steps = o.Steps == 0 ? method == SamplingMethod.Ddpm ? DefaultDdpmSteps : DefaultSteps : o.Steps;
        if (steps < 1) throw new ArgumentException($"the number of sampling steps (--steps) must be at least 1, got {o.Steps}.");
        if (o.ModelBatch < 1) throw new ArgumentException($"the images per model call (--batch) must be at least 1, got {o.ModelBatch}.");
        var resolved = o with { Method = method, Steps = steps };
        if (flow)
        {
            FlowOptions(resolved, 0).Validate();
            return resolved;
        }
        if (o.Heun) throw new ArgumentException("the Heun correction applies to the ODE sampler only; drop --heun for DDPM/DDIM.");
        if (!double.IsFinite(o.CfgScale) || o.CfgScale < 1)
            throw new ArgumentException($"the guidance scale (--cfg) must be finite and >= 1 (1 = no guidance), got {o.CfgScale}.");
        if (o.GuidanceLow != 0 || o.GuidanceHigh != 1)
            throw new ArgumentException("the guidance interval (--guidance-low, --guidance-high) belongs to REPA's SiT samplers; DiT's DDPM/DDIM guide every step, so drop it.");
        Schedule(resolved); // steps that no respacing gives fail here, before any sampling
        return resolved;
    }

    /// <summary>The sampler and guidance of <paramref name="options"/> in words, e.g. "SDE Euler-Maruyama 50 steps, cfg 1.8 for t in [0, 0.7]".</summary>
    public string Describe(GenerationOptions? options = null)
    {
        var o = Resolve(options);
        string method = o.Method switch
        {
            SamplingMethod.Sde => $"SDE Euler-Maruyama {o.Steps} steps",
            SamplingMethod.Ode => $"ODE {(o.Heun ? "Heun" : "Euler")} {o.Steps} steps",
            SamplingMethod.Ddpm => $"DDPM {o.Steps} of 1000 steps",
            _ => $"DDIM {o.Steps} steps (eta 0)",
        };
        string guidance = o.CfgScale <= 1 ? "no guidance"
            : o.Method is SamplingMethod.Sde or SamplingMethod.Ode
                ? string.Create(CultureInfo.InvariantCulture, $"cfg {o.CfgScale} for t in [{o.GuidanceLow}, {o.GuidanceHigh}]")
                : string.Create(CultureInfo.InvariantCulture, $"cfg {o.CfgScale} on eps channels {GuidedChannelList()}");
        return $"{method}, {guidance}";
    }

    private string GuidedChannelList() => string.Join(",", Enumerable.Range(0, GuidedEpsChannels));

    /// <summary>
    /// The eps channels DiT's guidance combines: min(3, C). DiT guides the first 3 output channels "for exact
    /// reproducibility"; with fewer than 3 image channels that would reach into the learned-variance channels, which
    /// must stay conditional, so the count is capped at C.
    /// </summary>
    public int GuidedEpsChannels => Math.Min(DiffusionModels.DitGuidedChannels, Channels);

    /// <summary>
    /// One sample per label (0..NumClasses-1, or <see cref="NullClass"/> for unconditional ones) with the method of
    /// <paramref name="options"/>; <paramref name="progress"/> counts the steps of all sample groups. The result is float64
    /// NCHW, in [-1, 1] for pixel models (before clamping).
    /// </summary>
    public GeneratedSamples Generate(ReadOnlySpan<int> labels, ulong seed, GenerationOptions? options = null, Action<SamplerProgress>? progress = null)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        var o = Resolve(options);
        foreach (int y in labels)
            if (y < 0 || y > NumClasses)
                throw new ArgumentException($"class label {y} is out of range for {Config.Name}: use 0..{NumClasses - 1} ({NullClass} = unconditional).", nameof(labels));
        double[] values = o.Method is SamplingMethod.Sde or SamplingMethod.Ode
            ? SiTSampling.Generate(model, labels, FlowOptions(o, seed), o.ModelBatch, progress)
            : GenerateDdpm(labels, seed, o, progress);
        return new GeneratedSamples(values, labels.ToArray(), Channels, Size, Size, LabelName);
    }

    private SamplerOptions FlowOptions(GenerationOptions o, ulong seed) => new()
    {
        Mode = o.Method == SamplingMethod.Ode ? SamplerMode.Ode : SamplerMode.Sde,
        Steps = o.Steps, Heun = o.Heun, CfgScale = o.CfgScale, GuidanceLow = o.GuidanceLow, GuidanceHigh = o.GuidanceHigh,
        PathType = PathType, Seed = seed,
    };

    private static GaussianDiffusion Schedule(GenerationOptions o)
    {
        try
        {
            return GaussianDiffusion.Create(o.Method == SamplingMethod.Ddim
                ? $"ddim{o.Steps}"
                : o.Steps.ToString(CultureInfo.InvariantCulture));
        }
        catch (ArgumentException)
        {
            throw new ArgumentException(o.Method == SamplingMethod.Ddim
                ? $"--steps {o.Steps} cannot be DDIM steps: no integer stride of the 1000 diffusion steps gives exactly {o.Steps}; pick one such as 25, 50, 100 or 250."
                : $"--steps {o.Steps} cannot be DDPM steps: respacing keeps at most the 1000 diffusion steps; pick at most 1000, such as 250.");
        }
    }

    private double[] GenerateDdpm(ReadOnlySpan<int> labels, ulong seed, GenerationOptions o, Action<SamplerProgress>? progress)
    {
        var diffusion = Schedule(o);
        // The chunker sits inside the guidance wrapper, so the doubled [x; x] batch is split as well.
        DiffusionModel net = Chunked(DiffusionModels.FromSiT(model), o.ModelBatch);
        if (o.CfgScale > 1) net = DiffusionModels.WithGuidance(net, Channels, o.CfgScale, NullClass, GuidedEpsChannels);
        int n = labels.Length, size = Channels * Size * Size, steps = diffusion.NumTimesteps;
        var samples = new double[checked((long)n * size)];
        int group = SiTSampling.DefaultGroupSize, groups = (n + group - 1) / group;
        for (int g = 0; g < groups; g++)
        {
            int first = g * group, m = Math.Min(group, n - first), before = g * steps;
            // Progress time for DDPM/DDIM: the share of the respaced steps still to go (1 = pure noise, 0 = done).
            Action<int>? onStep = progress == null ? null
                : done => progress(new SamplerProgress(before + done, groups * steps, (steps - done) / (double)steps));
            int[] shape = [m, Channels, Size, Size];
            var part = o.Method == SamplingMethod.Ddim
                ? diffusion.DdimSampleLoop(net, shape, labels.Slice(first, m), seed, eta: 0, firstSample: (ulong)first, onStep: onStep)
                : diffusion.PSampleLoop(net, shape, labels.Slice(first, m), seed, firstSample: (ulong)first, onStep: onStep);
            part.CopyTo(samples, (long)first * size);
        }
        return samples;
    }

    /// <summary>The model called on at most <paramref name="chunk"/> samples at a time (each sample's output is independent).</summary>
    private static DiffusionModel Chunked(DiffusionModel inner, int chunk) => (x, timesteps, labels, output) =>
    {
        int n = timesteps.Length;
        if (n <= chunk)
        {
            inner(x, timesteps, labels, output);
            return;
        }
        int inSize = x.Length / n, outSize = output.Length / n;
        for (int first = 0; first < n; first += chunk)
        {
            int m = Math.Min(chunk, n - first);
            inner(x.Slice(first * inSize, m * inSize), timesteps.Slice(first, m), labels.Slice(first, m), output.Slice(first * outSize, m * outSize));
        }
    };

    /// <summary>Frees the model and, when <see cref="Load(string, string, SamplingWeights, int)"/> opened it, the backend.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        if (ownsModel) model.Dispose();
        if (ownsBackend) backend.Dispose();
    }
}
