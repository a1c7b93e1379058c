using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Models;

namespace Repa.Runtime.Diffusion;

/// <summary>
/// A denoiser as the DDPM/DDIM samplers call it: x [N, C, ...] at ORIGINAL timesteps (0..999 for DiT) with labels
/// [N] writes its output [N, 2C, ...]: eps in the first C channels, raw variance values in the last C.
/// </summary>
public delegate void DiffusionModel(ReadOnlySpan<double> x, ReadOnlySpan<int> timesteps, ReadOnlySpan<int> labels, Span<double> output);

/// <summary>Ready-made <see cref="DiffusionModel"/>s: a DiT (learned-sigma <see cref="SiT"/>) and classifier-free guidance.</summary>
public static class DiffusionModels
{
    /// <summary>
    /// How many leading output channels DiT's forward_with_cfg guides: 3, "for exact reproducibility" of its published
    /// samples, although the standard approach (its commented-out line) guides the C eps channels. With 4-channel
    /// latents this guides eps channels 0-2 and leaves eps channel 3 and the variance channels conditional; with one
    /// channel (2 output channels) it guides both eps and the variance value.
    /// </summary>
    public const int DitGuidedChannels = 3;

    /// <summary>
    /// A DiT model as a <see cref="DiffusionModel"/>: converts x to the model's dtype, passes the original timesteps as
    /// the raw values DiT's timestep embedder takes (0..999), runs the forward without recording, and reads the
    /// [N, 2C, H, W] output back as float64.
    /// </summary>
    public static DiffusionModel FromSiT(SiT model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var cfg = model.Config;
        if (!cfg.LearnSigma)
            throw new ArgumentException($"{cfg.Name} has no learned variance; DDPM/DDIM sampling needs a DiT model (learn_sigma), e.g. a DiT-* preset.", nameof(model));
        return (x, timesteps, labels, output) =>
        {
            int n = timesteps.Length, size = cfg.InputSize;
            using var tape = new Tape(); // every tensor of this call returns to the pool when it ends
            using var noGrad = Tape.NoGrad();
            var backend = model.Backend;
            var times = new double[n];
            for (int i = 0; i < n; i++) times[i] = timesteps[i];
            var (prediction, _) = model.Forward(Make(backend, model.DType, x.ToArray(), n, cfg.InChannels, size, size),
                Make(backend, model.DType, times, n), Tensor.FromArray(backend, labels.ToArray(), n));
            prediction.ToDoubleArray().CopyTo(output);
        };
    }

    /// <summary>
    /// Classifier-free guidance as DiT's forward_with_cfg: the model runs on [x; x] with labels [y; null] at the same
    /// timesteps, and of the [N, 2C, ...] output the first <paramref name="guidedChannels"/> channels (capped at 2C) become
    /// uncond + scale (cond - uncond) while the rest are the conditional output. This is DiT's kept (first) half; its
    /// second half, which it discards, is not computed. <paramref name="channels"/> is C.
    /// </summary>
    public static DiffusionModel WithGuidance(DiffusionModel model, int channels, double scale, int nullClass, int guidedChannels = DitGuidedChannels)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (channels < 1) throw new ArgumentException($"channels must be at least 1, got {channels}.", nameof(channels));
        if (!double.IsFinite(scale)) throw new ArgumentException($"the guidance scale must be finite, got {scale}.", nameof(scale));
        if (guidedChannels < 0) throw new ArgumentException($"guided channels must be >= 0, got {guidedChannels}.", nameof(guidedChannels));
        return (x, timesteps, labels, output) =>
        {
            int n = timesteps.Length, perSample = x.Length / n, plane = perSample / channels, outPerSample = 2 * perSample;
            int guided = Math.Min(guidedChannels, 2 * channels) * plane;
            var x2 = new double[2 * x.Length];
            x.CopyTo(x2);
            x.CopyTo(x2.AsSpan(x.Length));
            var t2 = new int[2 * n];
            timesteps.CopyTo(t2);
            timesteps.CopyTo(t2.AsSpan(n));
            var y2 = new int[2 * n];
            labels.CopyTo(y2);
            y2.AsSpan(n).Fill(nullClass);
            var both = new double[2 * output.Length];
            model(x2, t2, y2, both);
            for (int s = 0; s < n; s++)
            {
                var cond = both.AsSpan(s * outPerSample, outPerSample);
                var uncond = both.AsSpan((n + s) * outPerSample, outPerSample);
                var o = output.Slice(s * outPerSample, outPerSample);
                for (int k = 0; k < outPerSample; k++) o[k] = k < guided ? uncond[k] + scale * (cond[k] - uncond[k]) : cond[k];
            }
        };
    }

    private static Tensor Make(IBackend backend, DType dtype, double[] values, params int[] shape) => dtype == DType.F64
        ? Tensor.FromArray(backend, values, shape)
        : Tensor.FromArray(backend, values.Select(v => (float)v).ToArray(), shape);
}
