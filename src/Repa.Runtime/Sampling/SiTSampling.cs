using System.Globalization;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Models;
using Repa.Runtime.Optim;
using Repa.Runtime.Training;

namespace Repa.Runtime.Sampling;

/// <summary>Which weights of a checkpoint to sample.</summary>
public enum SamplingWeights
{
    /// <summary>
    /// The EMA, unless it is still mostly the initial model (decay^steps &gt; 0.5 with config.json's ema_decay and the
    /// checkpoint's step) or the checkpoint has none: then the raw trained weights, with a note saying so.
    /// </summary>
    Auto,

    /// <summary>The EMA averages, as REPA's generate.py (which loads 'ema').</summary>
    Ema,

    /// <summary>The raw trained weights (the state_dict).</summary>
    Raw,
}

/// <summary>A SiT loaded from a checkpoint, the objective it was trained with, and where it came from.</summary>
/// <param name="Model">The model (fp32); the caller disposes it.</param>
/// <param name="Objective">The training objective from config.json (its path_type is the sampler's).</param>
/// <param name="File">The checkpoint file read.</param>
/// <param name="Step">The optimiser step the checkpoint was saved at, or null when its metadata lacks it.</param>
/// <param name="Ema">Whether the trainable tensors hold the EMA averages (true) or the raw trained weights.</param>
public sealed record CheckpointModel(SiT Model, ObjectiveConfig Objective, string File, int? Step, bool Ema)
{
    /// <summary>config.json's objective: "sit" (REPA's velocity loss, flow samplers) or "ddpm" (DiT's diffusion, DDPM/DDIM).</summary>
    public string ObjectiveKind { get; init; } = "sit";

    /// <summary>config.json's data_dir (the training data folder), or null when not recorded.</summary>
    public string? DataDir { get; init; }

    /// <summary>config.json's ema_decay (REPA's 0.9999 when not recorded).</summary>
    public double EmaDecay { get; init; } = 0.9999;

    /// <summary>One line about the weights worth showing the user (auto fell back to raw, or a forced EMA is barely trained), else null.</summary>
    public string? WeightsNote { get; init; }
}

/// <summary>Sampling a trained SiT checkpoint (its EMA weights unless they are still mostly the initial model), in sample groups.</summary>
public static class SiTSampling
{
    /// <summary>Samples integrated together by <see cref="Generate"/> (the float64 state of one group stays small).</summary>
    public const int DefaultGroupSize = 256;

    /// <summary>
    /// How much of the initial model an EMA of <paramref name="decay"/> still holds after <paramref name="steps"/> updates
    /// (it starts as a copy of the initial weights): decay^steps.
    /// </summary>
    public static double InitialShare(double decay, int steps) => Math.Pow(decay, steps);

    /// <summary>
    /// The auto-weights rule: REPA samples its EMA (decay 0.9999), but while decay^steps &gt; 1/2 the EMA is mostly the
    /// zero-output initial model, so the raw trained weights are the useful ones.
    /// </summary>
    public static bool EmaIsMostlyInitial(double decay, int steps) => InitialShare(decay, steps) > 0.5;

    /// <summary>
    /// Loads the SiT (or DiT) of a checkpoint (a .safetensors file or its run folder) with config.json from beside it.
    /// With the EMA (REPA's choice) every trainable tensor comes from its "ema.&lt;name&gt;" average and the frozen ones
    /// (pos_embed) from the state_dict; with the raw weights, everything from the state_dict. <paramref name="weights"/>
    /// picks them (see <see cref="SamplingWeights"/>); the result says which were used and why.
    /// </summary>
    public static CheckpointModel Load(string checkpoint, IBackend backend, SamplingWeights weights = SamplingWeights.Auto)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(backend);
        if (!Enum.IsDefined(weights)) throw new ArgumentException($"unknown weights choice {weights}; use auto, ema or raw.", nameof(weights));
        string file = Trainer.ResolveCheckpoint(checkpoint);
        string json = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(file))!, "config.json");
        var (config, objective) = ForwardCommand.LoadConfig(json);
        var settings = ForwardCommand.LoadRunSettings(json);
        var model = new SiT(backend, DType.F32, config, 0);
        try
        {
            using var state = SafeTensors.Read(file, backend);
            int? step = state.Metadata.TryGetValue(AdamW.StepKey, out var text) && int.TryParse(text, CultureInfo.InvariantCulture, out int s) ? s : null;
            bool hasEma = model.NamedParameters().All(p => state.Tensors.ContainsKey(Ema.Prefix + p.Name));
            double share = step is { } k ? InitialShare(settings.EmaDecay, k) : 0;
            string Share() => string.Create(CultureInfo.InvariantCulture,
                $"after {step} steps the EMA (decay {settings.EmaDecay}) is still {100 * share:F0}% the initial model, whose output is 0");
            bool ema;
            string? note = null;
            switch (weights)
            {
                case SamplingWeights.Auto when !hasEma:
                    ema = false;
                    note = $"note: checkpoint '{file}' holds no EMA weights; sampling its raw weights.";
                    break;
                case SamplingWeights.Auto when step is { } auto && EmaIsMostlyInitial(settings.EmaDecay, auto):
                    ema = false;
                    note = $"note: {Share()}; sampling the raw weights instead (--weights ema forces the EMA).";
                    break;
                case SamplingWeights.Raw:
                    ema = false;
                    break;
                default:
                    ema = true;
                    if (!hasEma)
                        throw new InvalidDataException($"checkpoint '{file}' has no EMA weights ('{Ema.Prefix}{model.NamedParameters().First(p => !state.Tensors.ContainsKey(Ema.Prefix + p.Name)).Name}' is missing); sample its raw weights with --weights raw or auto.");
                    if (weights == SamplingWeights.Ema && step is { } forced && EmaIsMostlyInitial(settings.EmaDecay, forced)) note = $"note: {Share()}; --weights raw samples the trained weights.";
                    break;
            }
            var tensors = new Dictionary<string, Tensor>(state.Tensors, StringComparer.Ordinal);
            foreach (var (name, _) in ema ? model.NamedParameters() : [])
                tensors[name] = state.Tensors[Ema.Prefix + name];
            try
            {
                model.LoadStateDict(tensors, strict: false);
            }
            catch (Exception e) when (e is KeyNotFoundException or ArgumentException)
            {
                throw new InvalidDataException($"checkpoint '{file}' does not fit the {config.Name} of its config.json: {e.Message}");
            }
            return new CheckpointModel(model, objective, file, step, ema)
            {
                ObjectiveKind = settings.Objective, DataDir = settings.DataDir, EmaDecay = settings.EmaDecay, WeightsNote = note,
            };
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// One sample per label (num_classes = unconditional), flat NCHW float64. Samples are integrated in groups of
    /// <paramref name="groupSize"/>, the model sees at most <paramref name="modelBatch"/> images per call (twice the
    /// group under guidance is split the same way), and every sample's noise depends only on the seed and its index in
    /// <paramref name="labels"/>, so neither size changes the result. Progress counts steps over all groups.
    /// </summary>
    public static double[] Generate(SiT model, ReadOnlySpan<int> labels, SamplerOptions options, int modelBatch,
        Action<SamplerProgress>? progress = null, int groupSize = DefaultGroupSize)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (groupSize < 1) throw new ArgumentException($"the sample group size must be at least 1, got {groupSize}.", nameof(groupSize));
        int classes = model.Config.NumClasses;
        foreach (int y in labels)
            if (y < 0 || y > classes)
                throw new ArgumentException($"class label {y} is out of range for {model.Config.Name}: use 0..{classes - 1} ({classes} = unconditional).");
        var runner = BatchedModel.ForSiT(model, modelBatch);
        int size = runner.SampleSize, n = labels.Length;
        var samples = new double[checked((long)n * size)];
        int groups = (n + groupSize - 1) / groupSize, steps = options.Steps;
        for (int g = 0; g < groups; g++)
        {
            int first = g * groupSize, m = Math.Min(groupSize, n - first);
            var x = samples.AsSpan(first * size, m * size);
            FlowSampler.InitialNoise(options.Seed, first, size, x);
            int done = g * steps;
            Action<SamplerProgress>? report = progress == null ? null
                : p => progress(new SamplerProgress(done + p.Step, groups * steps, p.Time));
            FlowSampler.Run(runner, x, labels.Slice(first, m), classes, options, first, report);
        }
        return samples;
    }
}
