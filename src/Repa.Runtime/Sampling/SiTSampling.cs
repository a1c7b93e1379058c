using System.Globalization;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Models;
using Repa.Runtime.Optim;
using Repa.Runtime.Training;

namespace Repa.Runtime.Sampling;

/// <summary>A SiT loaded from a checkpoint, the objective it was trained with, and where it came from.</summary>
/// <param name="Model">The model (fp32); the caller disposes it.</param>
/// <param name="Objective">The training objective from config.json (its path_type is the sampler's).</param>
/// <param name="File">The checkpoint file read.</param>
/// <param name="Step">The optimiser step the checkpoint was saved at, or null when its metadata lacks it.</param>
/// <param name="Ema">Whether the trainable tensors hold the EMA averages (true) or the raw trained weights.</param>
public sealed record CheckpointModel(SiT Model, ObjectiveConfig Objective, string File, int? Step, bool Ema);

/// <summary>Sampling a trained SiT checkpoint: by default its EMA weights (as REPA's generate.py loads 'ema'), in sample groups.</summary>
public static class SiTSampling
{
    /// <summary>Samples integrated together by <see cref="Generate"/> (the float64 state of one group stays small).</summary>
    public const int DefaultGroupSize = 256;

    /// <summary>
    /// Loads the SiT of a checkpoint (a .safetensors file or its run folder) with config.json from beside it. With
    /// <paramref name="ema"/> (REPA's choice) every trainable tensor comes from its "ema.&lt;name&gt;" average and the frozen
    /// ones (pos_embed) from the state_dict; without it, everything from the state_dict (the raw trained weights).
    /// </summary>
    public static CheckpointModel Load(string checkpoint, IBackend backend, bool ema = true)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(backend);
        string file = Trainer.ResolveCheckpoint(checkpoint);
        var (config, objective) = ForwardCommand.LoadConfig(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(file))!, "config.json"));
        var model = new SiT(backend, DType.F32, config, 0);
        try
        {
            using var state = SafeTensors.Read(file, backend);
            var weights = new Dictionary<string, Tensor>(state.Tensors, StringComparer.Ordinal);
            foreach (var (name, _) in ema ? model.NamedParameters() : [])
            {
                if (!state.Tensors.TryGetValue(Ema.Prefix + name, out var average))
                    throw new InvalidDataException($"checkpoint '{file}' has no EMA weights ('{Ema.Prefix}{name}' is missing); sampling uses the EMA, so pass a checkpoint that `train` wrote.");
                weights[name] = average;
            }
            try
            {
                model.LoadStateDict(weights, strict: false);
            }
            catch (Exception e) when (e is KeyNotFoundException or ArgumentException)
            {
                throw new InvalidDataException($"checkpoint '{file}' does not fit the {config.Name} of its config.json: {e.Message}");
            }
            int? step = state.Metadata.TryGetValue(AdamW.StepKey, out var text) && int.TryParse(text, CultureInfo.InvariantCulture, out int s) ? s : null;
            return new CheckpointModel(model, objective, file, step, ema);
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
            FlowSampler.Run(runner.AsVelocityModel(), x, labels.Slice(first, m), classes, options, first, report);
        }
        return samples;
    }
}
