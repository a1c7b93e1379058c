using System.Diagnostics;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Data;
using Repa.Runtime.Encoders;
using Repa.Runtime.Models;
using Repa.Runtime.Sampling;
using Repa.Runtime.Training;

namespace Repa.Runtime.Eval;

/// <summary>What <see cref="ModelEvaluator"/> measures and how.</summary>
public sealed record EvalOptions
{
    /// <summary>Generated images for the Frechet distance, class-balanced (label i mod classes); also the real images used.</summary>
    public int Samples { get; init; } = 1000;

    /// <summary>The sampler of the generated images (its seed is <see cref="Seed"/>; its ModelBatch bounds every model call).</summary>
    public GenerationOptions Generation { get; init; } = new() { ModelBatch = 64 };

    /// <summary>
    /// The time at which hidden states are read for CKNNA and the probe: x_t on the model's path from a clean image and
    /// Philox noise, with the null label (so the class cannot leak in through the conditioning). Our choice: 0.5.
    /// </summary>
    public double ProbeTime { get; init; } = 0.5;

    /// <summary>Training images whose hidden states train the linear probe (tested on the real images).</summary>
    public int ProbeTrainImages { get; init; } = 2000;

    /// <summary>Neighbours of CKNNA (the paper: 10).</summary>
    public int K { get; init; } = Cknna.DefaultK;

    /// <summary>Side of the ResNet-18 input (a multiple of 32; images are resized bilinearly).</summary>
    public int EncoderSize { get; init; } = 64;

    public ulong Seed { get; init; }

    public EvalOptions Validate()
    {
        if (Samples < 2) throw new ArgumentException($"--num must be at least 2 (a covariance needs two samples), got {Samples}.");
        if (Generation.ModelBatch < 1) throw new ArgumentException($"--model-batch must be at least 1, got {Generation.ModelBatch}.");
        if (!(ProbeTime >= 0 && ProbeTime < 1)) throw new ArgumentException($"--probe-t must be in [0, 1), got {ProbeTime}.");
        if (ProbeTrainImages < 2) throw new ArgumentException($"--probe-train must be at least 2, got {ProbeTrainImages}.");
        if (K < 1 || K >= Samples) throw new ArgumentException($"CKNNA's k ({K}) must be in 1..{Samples - 1} (below --num).");
        if (EncoderSize < 32 || EncoderSize % 32 != 0) throw new ArgumentException($"--encoder-size must be a multiple of 32, got {EncoderSize}.");
        return this;
    }
}

/// <summary>One evaluation: FD in the encoder's feature space, CKNNA and linear-probe accuracy, and how they were made.</summary>
public sealed record EvalReport
{
    public double? Fd { get; init; }

    /// <summary>FD of as many training images against the same real images (the floor for this sample size).</summary>
    public double FdTrainVsReal { get; init; }
    public string? FdSkipped { get; init; }
    public required string FdEncoder { get; init; }
    public int Generated { get; init; }
    public int RealImages { get; init; }
    public required string RealSplit { get; init; }
    public double Cknna { get; init; }
    public int CknnaK { get; init; }
    public double ProbeAccuracy { get; init; }
    public int ProbeTrainImages { get; init; }
    public double ProbeTime { get; init; }
    public int Layer { get; init; }
    public required string Sampler { get; init; }
    public double Seconds { get; init; }

    /// <summary>One line for the console.</summary>
    public string Summary() => FormattableString.Invariant(
        $"FD {(Fd is double fd ? fd.ToString("F2", System.Globalization.CultureInfo.InvariantCulture) : "n/a")} ({FdEncoder}, {Generated} generated vs {RealImages} real; training images score {FdTrainVsReal:F2}), CKNNA {Cknna:F4} (k {CknnaK}), linear probe {100 * ProbeAccuracy:F1}% (block {Layer}, t {ProbeTime})");
}

/// <summary>
/// Measures a SiT against a dataset, as issue 4 asks and the paper's section 4 does at scale: the Frechet distance between
/// generated and real images in the globally pooled stage-4 features of ResNet-18 (512-d; our offline stand-in for
/// FD-DINOv2/FID); CKNNA between the model's mean-pooled hidden states after encoder_depth and the same encoder features
/// of the clean images; and a linear probe's accuracy on those hidden states. The real-image features are computed once
/// in the constructor, so evaluating several checkpoints (a study) pays for them once.
/// </summary>
public sealed class ModelEvaluator : IDisposable
{
    /// <summary>ResNet-18's last stage (512 x H/32 x W/32), averaged over positions here: its global-average-pooled
    /// features at any input size (the graph's own Pooling395 has a fixed 7x7 window, i.e. 224 px only).</summary>
    public const string EncoderLayer = "ReLU393_Output_0";
    private readonly EvalOptions options;
    private readonly TrainingData train, real;
    private readonly OnnxEncoder encoder;
    private readonly int[] realIndices, probeIndices;
    private readonly double[] realFeatures;
    private readonly int featureDim;
    private readonly GaussianStats realStats;
    private readonly TextWriter? progress;

    /// <param name="train">The training data (the probe trains on its images).</param>
    /// <param name="real">Real images for FD, CKNNA and the probe's test (a held-out split where the dataset has one).</param>
    /// <param name="realSplit">Says which split <paramref name="real"/> is, for the report.</param>
    /// <param name="options">What to measure and how.</param>
    /// <param name="progress">Where progress lines go (null: silent).</param>
    public ModelEvaluator(TrainingData train, TrainingData real, string realSplit, EvalOptions options, TextWriter? progress = null)
    {
        this.train = train ?? throw new ArgumentNullException(nameof(train));
        this.real = real ?? throw new ArgumentNullException(nameof(real));
        this.options = (options ?? throw new ArgumentNullException(nameof(options))).Validate();
        this.progress = progress;
        RealSplit = realSplit;
        if (real.Count < options.Samples)
            throw new ArgumentException($"--num {options.Samples} is more than the {real.Count} real images of {real.Description}; lower --num.");
        realIndices = Enumerable.Range(0, options.Samples).ToArray();
        probeIndices = SpreadIndices(train.Count, Math.Min(options.ProbeTrainImages, train.Count));
        encoder = OnnxEncoder.ResNet18(EncoderLayer, options.EncoderSize);
        FdEncoder = $"ResNet-18 globally pooled stage-4 features ({EncoderLayer}, 512-d) at {options.EncoderSize} px";
        var images = new byte[(long)realIndices.Length * real.ImageChannels * real.ImageHeight * real.ImageWidth];
        real.FillImages(realIndices, images);
        realFeatures = EncodeBytes(images, realIndices.Length, real.ImageChannels, real.ImageHeight, real.ImageWidth, out featureDim);
        realStats = GaussianStats.FromFeatures(realFeatures, featureDim);
        // The floor: as many training images against the same real ones. Generated images cannot be expected to beat it
        // by much, and it shows how large an FD of this many samples in this feature space is by itself.
        var trainIndices = SpreadIndices(train.Count, options.Samples);
        var trainImages = new byte[(long)trainIndices.Length * train.ImageChannels * train.ImageHeight * train.ImageWidth];
        train.FillImages(trainIndices, trainImages);
        var trainFeatures = EncodeBytes(trainImages, trainIndices.Length, train.ImageChannels, train.ImageHeight, train.ImageWidth, out int trainDim);
        ReferenceFd = FrechetDistance.Compute(GaussianStats.FromFeatures(trainFeatures, trainDim), realStats);
    }

    /// <summary>FD between <see cref="EvalOptions.Samples"/> training images and the real images: what a perfect generator would score.</summary>
    public double ReferenceFd { get; }

    public string FdEncoder { get; }
    public string RealSplit { get; }

    /// <summary>Evaluates the model of <paramref name="generator"/> (sampling with <see cref="EvalOptions.Generation"/>).</summary>
    public EvalReport Evaluate(ImageGenerator generator)
    {
        ArgumentNullException.ThrowIfNull(generator);
        var model = generator.Model;
        var cfg = model.Config;
        if (cfg.InChannels != real.Channels || cfg.InputSize != real.Size)
            throw new ArgumentException($"{cfg.Name} takes [{cfg.InChannels}, {cfg.InputSize}, {cfg.InputSize}] inputs but the dataset gives [{real.Channels}, {real.Size}, {real.Size}]; evaluate on the data the model was trained on.");
        var sw = Stopwatch.StartNew();
        var generation = generator.Resolve(options.Generation);

        // FD needs images: a latent model's samples would need the VAE decoder, which is not here.
        bool pixels = real.Channels == real.ImageChannels && real.Size == real.ImageHeight && real.Size == real.ImageWidth;
        double? fd = null;
        if (pixels)
        {
            var labels = Enumerable.Range(0, options.Samples).Select(i => i % cfg.NumClasses).ToArray();
            var started = Stopwatch.StartNew();
            var samples = generator.Generate(labels, options.Seed, generation, p =>
                progress?.Write($"\reval: sampling {ProgressBar.Bar(p.Step, p.Steps)} step {p.Step}/{p.Steps} | ETA {ProgressBar.Eta(started.Elapsed, p.Step, p.Steps)}   "));
            progress?.WriteLine();
            var bytes = new byte[samples.Values.Length];
            for (int i = 0; i < bytes.Length; i++) bytes[i] = SampleImages.ToByte(samples.Values[i]);
            var generated = EncodeBytes(bytes, labels.Length, cfg.InChannels, cfg.InputSize, cfg.InputSize, out int dim);
            fd = FrechetDistance.Compute(GaussianStats.FromFeatures(generated, dim), realStats);
        }

        progress?.Write("eval: hidden states for CKNNA and the linear probe ...");
        var probeInput = ProbeInput(generator);
        var realHidden = PooledHidden(model, real, realIndices, probeInput, streamOffset: 0, out var realLabels);
        double cknna = Cknna.Compute(realHidden, cfg.HiddenSize, realFeatures, featureDim, options.K);
        var probeHidden = PooledHidden(model, train, probeIndices, probeInput, streamOffset: 1, out var probeLabels);
        var probe = LinearProbe.Train(probeHidden, probeLabels, cfg.HiddenSize, Math.Max(train.NumClasses, real.NumClasses));
        double accuracy = probe.Accuracy(realHidden, realLabels);
        progress?.WriteLine(" done");

        return new EvalReport
        {
            Fd = fd,
            FdTrainVsReal = ReferenceFd,
            FdSkipped = pixels ? null : "the model generates VAE latents; FD needs decoded images and no VAE decoder is available here",
            FdEncoder = FdEncoder,
            Generated = pixels ? options.Samples : 0,
            RealImages = realIndices.Length,
            RealSplit = RealSplit,
            Cknna = cknna,
            CknnaK = options.K,
            ProbeAccuracy = accuracy,
            ProbeTrainImages = probeIndices.Length,
            ProbeTime = options.ProbeTime,
            Layer = cfg.EncoderDepth,
            Sampler = pixels ? generator.Describe(generation) : "none",
            Seconds = sw.Elapsed.TotalSeconds,
        };
    }

    /// <summary>
    /// The noisy input whose hidden states are probed, at <see cref="EvalOptions.ProbeTime"/>: on a SiT path x_t = alpha_t x
    /// + sigma_t eps with model time t; for DDPM the step k = round(t (T - 1)) with x_k = sqrt(abar_k) x + sqrt(1 - abar_k) eps
    /// and model time k (DiT embeds the raw step index).
    /// </summary>
    private (double Alpha, double Sigma, double ModelTime) ProbeInput(ImageGenerator generator)
    {
        if (generator.Objective == "ddpm")
        {
            var diffusion = Diffusion.GaussianDiffusion.Create();
            int k = (int)Math.Round(options.ProbeTime * (diffusion.NumTimesteps - 1));
            return (diffusion.SqrtAlphasCumprod[k], diffusion.SqrtOneMinusAlphasCumprod[k], k);
        }
        Objective.Interpolant(generator.PathType, options.ProbeTime, out double alpha, out double sigma, out _, out _);
        return (alpha, sigma, options.ProbeTime);
    }

    /// <summary>Mean over tokens of the residual stream after encoder_depth for x_t of the given images, null label.</summary>
    private double[] PooledHidden(SiT model, TrainingData data, int[] indices, (double Alpha, double Sigma, double ModelTime) input,
        ulong streamOffset, out int[] labels)
    {
        var cfg = model.Config;
        int n = indices.Length, per = cfg.InChannels * cfg.InputSize * cfg.InputSize;
        var inputs = new float[(long)n * per];
        labels = new int[n];
        data.FillBatch(indices, inputs, labels, options.Seed, 0);
        var noise = new double[inputs.Length];
        Philox.Normal(options.Seed, Objective.Stream(streamOffset, EvalPurpose), 0, noise);
        var xt = new double[inputs.Length];
        for (long i = 0; i < xt.Length; i++) xt[i] = input.Alpha * inputs[i] + input.Sigma * noise[i];
        var runner = new BatchedModel(model.Backend, model.DType, [cfg.InChannels, cfg.InputSize, cfg.InputSize],
            (x, t, y) => Ops.Mean(model.HiddenStates(x, t, y), [1]), options.Generation.ModelBatch);
        var hidden = new double[(long)n * cfg.HiddenSize];
        runner.Run(xt, input.ModelTime, Enumerable.Repeat(cfg.NumClasses, n).ToArray(), hidden);
        return hidden;
    }

    /// <summary>Philox purpose of the evaluation's noise (outside the trainer's 1-4 and the data's 8).</summary>
    public const ulong EvalPurpose = 12;

    private double[] EncodeBytes(byte[] images, int n, int channels, int height, int width, out int dim)
    {
        var features = encoder.Encode(images, n, channels, height, width, out int tokens, out dim);
        var pooled = new double[(long)n * dim];
        for (int i = 0; i < n; i++)
            for (int t = 0; t < tokens; t++)
                for (int j = 0; j < dim; j++)
                    pooled[(long)i * dim + j] += features[((long)i * tokens + t) * dim + j] / (double)tokens;
        return pooled;
    }

    /// <summary>count indices spread evenly over 0..total-1 (every class of a shuffled dataset is represented).</summary>
    private static int[] SpreadIndices(int total, int count) =>
        Enumerable.Range(0, count).Select(i => (int)((long)i * total / count)).ToArray();

    public void Dispose() => encoder.Dispose();
}
