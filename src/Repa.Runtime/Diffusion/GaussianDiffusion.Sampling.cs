using Repa.Kernels;

namespace Repa.Runtime.Diffusion;

/// <summary>
/// DiT's samplers (gaussian_diffusion.py p_sample_loop and ddim_sample_loop) in float64 over a <see cref="DiffusionModel"/>.
/// Noise is Philox keyed by the seed: the starting x_T is stream <see cref="InitialNoiseStream"/>, the noise added at step
/// index t is stream <see cref="StepNoiseStream"/>(t); sample j of a batch uses elements from j * (C*H*W) of each stream
/// offset by <c>firstSample</c>, so a sample depends on (seed, firstSample + j) and not on how the samples are batched.
/// </summary>
public sealed partial class GaussianDiffusion
{
    /// <summary>The Philox stream of the starting noise x_T.</summary>
    public const ulong InitialNoiseStream = 0;

    /// <summary>The Philox stream of the noise added when stepping from index <paramref name="t"/> to t - 1.</summary>
    public static ulong StepNoiseStream(int t) => 1 + (ulong)t;

    /// <summary>
    /// Ancestral DDPM sampling (p_sample_loop) of a batch of <paramref name="shape"/> [N, C, ...] from x_T ~ N(0, I):
    /// for t = T-1..0, x &lt;- mean + exp(log_var / 2) z with (mean, log_var) from <see cref="PMeanVariance"/>, and no
    /// noise at t = 0. <paramref name="clipDenoised"/> clamps the x0 prediction to [-1, 1]; DiT's sample.py passes false
    /// (latents are not in [-1, 1]), which is the default here. <paramref name="onStep"/> gets the number of finished steps.
    /// </summary>
    public double[] PSampleLoop(DiffusionModel model, int[] shape, ReadOnlySpan<int> labels, ulong seed, ulong firstSample = 0,
        bool clipDenoised = false, Action<int>? onStep = null) =>
        SampleLoop(model, shape, labels, seed, firstSample, clipDenoised, onStep, ddim: false, eta: 0);

    /// <summary>
    /// DDIM sampling (ddim_sample_loop; Song et al. eq. 12) with eta = 0 (deterministic) by default: from the x0 prediction
    /// and eps re-derived from it, x &lt;- x0_hat sqrt(alphā_prev) + sqrt(1 - alphā_prev - sigma^2) eps + sigma z with
    /// sigma = eta sqrt((1 - alphā_prev)/(1 - alphā)) sqrt(1 - alphā/alphā_prev), and no noise at t = 0. Use a process
    /// made with "ddimN" (or any respacing); the model's variance channels are read but do not matter.
    /// </summary>
    public double[] DdimSampleLoop(DiffusionModel model, int[] shape, ReadOnlySpan<int> labels, ulong seed, double eta = 0,
        ulong firstSample = 0, bool clipDenoised = false, Action<int>? onStep = null)
    {
        if (!(eta >= 0) || !double.IsFinite(eta)) throw new ArgumentException($"DDIM eta must be finite and >= 0, got {eta}.", nameof(eta));
        return SampleLoop(model, shape, labels, seed, firstSample, clipDenoised, onStep, ddim: true, eta);
    }

    private double[] SampleLoop(DiffusionModel model, int[] shape, ReadOnlySpan<int> labels, ulong seed, ulong firstSample,
        bool clipDenoised, Action<int>? onStep, bool ddim, double eta)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(shape);
        if (shape.Length < 2 || shape.Any(d => d < 1))
            throw new ArgumentException($"the sample shape [{string.Join(", ", shape)}] must be [N, C, ...] with every size at least 1.", nameof(shape));
        int n = shape[0], channels = shape[1];
        long total = shape.Aggregate(1L, (a, d) => a * d);
        if (total > Array.MaxLength / 2) throw new ArgumentException($"a batch of shape [{string.Join(", ", shape)}] is too large; sample fewer images at once.", nameof(shape));
        int length = (int)total, inner = length / n;
        if (labels.Length != n) throw new ArgumentException($"{labels.Length} labels for a batch of {n} samples.", nameof(labels));

        var x = new double[length];
        Philox.Normal(seed, InitialNoiseStream, firstSample * (ulong)inner, x);
        var output = new double[2 * length];
        var mean = new double[length];
        var logVariance = new double[length];
        var predXStart = new double[length];
        var eps = new double[length];
        var noise = new double[length];
        var t = new int[n];
        var original = new int[n];
        for (int i = NumTimesteps - 1, done = 1; i >= 0; i--, done++)
        {
            Array.Fill(t, i);
            Array.Fill(original, timestepMap[i]);
            Array.Clear(output);
            model(x, original, labels, output);
            PMeanVariance(output, x, t, channels, clipDenoised, mean, logVariance, predXStart);
            bool addNoise = i > 0 && (!ddim || eta > 0);
            if (addNoise) Philox.Normal(seed, StepNoiseStream(i), firstSample * (ulong)inner, noise);
            if (!ddim)
            {
                for (int k = 0; k < length; k++)
                    x[k] = addNoise ? mean[k] + Math.Exp(0.5 * logVariance[k]) * noise[k] : mean[k];
            }
            else
            {
                PredictEpsFromXStart(x, t, predXStart, eps);
                double ab = alphasCumprod[i], abPrev = alphasCumprodPrev[i];
                double sigma = eta * Math.Sqrt((1 - abPrev) / (1 - ab)) * Math.Sqrt(1 - ab / abPrev);
                double a = Math.Sqrt(abPrev), b = Math.Sqrt(1 - abPrev - sigma * sigma);
                for (int k = 0; k < length; k++)
                    x[k] = predXStart[k] * a + b * eps[k] + (addNoise ? sigma * noise[k] : 0);
            }
            onStep?.Invoke(done);
        }
        return x;
    }
}
