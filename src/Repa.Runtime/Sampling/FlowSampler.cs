using Repa.Kernels;
using Repa.Runtime.Training;

namespace Repa.Runtime.Sampling;

/// <summary>
/// A velocity model seen by the samplers: for a batch of states <paramref name="x"/> (n samples of equal size, flat,
/// float64), one time <paramref name="t"/> shared by the batch and n class labels (num_classes = the null class), writes
/// the model output for every sample into <paramref name="output"/> (n samples of the same flat size for a velocity).
/// Tests plug closed forms in here; <see cref="BatchedModel"/> runs a network.
/// </summary>
public delegate void VelocityModel(ReadOnlySpan<double> x, double t, ReadOnlySpan<int> labels, Span<double> output);

/// <summary>Which integrator: REPA's euler_maruyama_sampler (SDE) or euler_sampler (ODE, optionally Heun).</summary>
public enum SamplerMode
{
    Sde,
    Ode,
}

/// <summary>
/// Settings of REPA's samplers (samplers.py, with generate.py's argument names in messages): mode, number of steps,
/// Heun correction (ODE only), classifier-free guidance scale and the interval of t in which guidance is applied, the
/// interpolant (path_type) the model was trained on, and the seed of every random draw.
/// </summary>
public sealed record SamplerOptions
{
    public SamplerMode Mode { get; init; } = SamplerMode.Sde;

    /// <summary>num_steps: ODE steps, or SDE steps including the final deterministic one (= model evaluations).</summary>
    public int Steps { get; init; } = 50;

    /// <summary>Heun's second-order correction on every ODE step but the last.</summary>
    public bool Heun { get; init; }

    /// <summary>cfg_scale: guidance applies only when it is above 1; 1 evaluates the model once per step.</summary>
    public double CfgScale { get; init; } = 1.0;

    /// <summary>guidance_low: guidance applies while guidance_low &lt;= t_cur &lt;= guidance_high.</summary>
    public double GuidanceLow { get; init; }

    /// <summary>guidance_high (see <see cref="GuidanceLow"/>).</summary>
    public double GuidanceHigh { get; init; } = 1.0;

    /// <summary>The model's interpolant, "linear" or "cosine": the SDE turns velocity into score with it.</summary>
    public string PathType { get; init; } = "linear";

    /// <summary>Key of the Philox streams of the initial noise and of every SDE step.</summary>
    public ulong Seed { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> with a one-sentence reason when a field is out of range.</summary>
    public SamplerOptions Validate()
    {
        static void Check(bool ok, string message)
        {
            if (!ok) throw new ArgumentException(message);
        }
        Check(Mode is SamplerMode.Sde or SamplerMode.Ode, $"sampler mode must be sde or ode, got {Mode}.");
        Check(Steps >= 1, $"the number of sampling steps (--steps) must be at least 1, got {Steps}.");
        Check(!Heun || Mode == SamplerMode.Ode, "the Heun correction applies to the ODE sampler only; use --mode ode or drop --heun.");
        Check(double.IsFinite(CfgScale) && CfgScale >= 1, $"the guidance scale (--cfg) must be finite and >= 1 (1 = no guidance), got {CfgScale}.");
        Check(double.IsFinite(GuidanceLow) && double.IsFinite(GuidanceHigh) && GuidanceLow <= GuidanceHigh,
            $"the guidance interval [{GuidanceLow}, {GuidanceHigh}] (--guidance-low, --guidance-high) must be finite with low <= high.");
        Check(PathType is "linear" or "cosine", $"path_type must be linear or cosine, got '{PathType}'.");
        return this;
    }

    /// <summary>Whether the step that starts at <paramref name="tCur"/> is guided (REPA compares t_cur, both ends inclusive).</summary>
    public bool Guided(double tCur) => CfgScale > 1 && tCur <= GuidanceHigh && tCur >= GuidanceLow;

    /// <summary>Model evaluations per sample batch (doubled batches counted once): ODE N (+ N - 1 with Heun), SDE N.</summary>
    public int ModelEvaluations => Mode == SamplerMode.Ode && Heun ? 2 * Steps - 1 : Steps;
}

/// <summary>A sampler step done: <paramref name="Step"/> of <paramref name="Steps"/>, having reached time <paramref name="Time"/>.</summary>
public readonly record struct SamplerProgress(int Step, int Steps, double Time);

/// <summary>
/// REPA's SiT samplers (samplers.py) with time running from 1 (noise) to 0 (data) and the state in float64.
/// <list type="bullet">
/// <item>ODE (euler_sampler): t grid linspace(1, 0, N + 1); x += (t_next - t_cur) v(x, t_cur); with Heun, every step but
/// the last is corrected with v at (x_next, t_next): x = x_cur + dt (v + v') / 2.</item>
/// <item>SDE (euler_maruyama_sampler): t grid linspace(1, 0.04, N) then 0; diffusion w(t) = 2t; score from velocity
/// s = (alpha/alpha' v - x) / (sigma^2 - alpha/alpha' sigma' sigma) (linear path: (-(1 - t) v - x) / t; cosine path:
/// the denominator is 1); drift d = v - w s / 2; the first N - 1 steps add sqrt(w) sqrt(|dt|) eps, the last one
/// (0.04 -> 0) is the deterministic x + dt d.</item>
/// <item>Classifier-free guidance (cfg_scale &gt; 1, while guidance_low &lt;= t_cur &lt;= guidance_high, both inclusive,
/// t_cur also deciding the Heun evaluation at t_next): the model runs on [x; x] with labels [y; null] and the result is
/// uncond + scale (cond - uncond), on the velocity (ODE) or on the drift (SDE), over all channels.</item>
/// </list>
/// Randomness: Philox keyed by <see cref="SamplerOptions.Seed"/>; the initial noise is stream
/// <see cref="NoiseStream"/>(0) and SDE step i (0-based) uses stream NoiseStream(i + 1), each at element offset
/// sample index x sample size. A sample's draws therefore depend only on (seed, its global index), never on how the
/// samples are split into calls (<c>firstSample</c>) or model chunks.
/// </summary>
public static class FlowSampler
{
    /// <summary>Where REPA's SDE stops adding noise; its last step goes deterministically from here to 0.</summary>
    public const double SdeLastTime = 0.04;

    /// <summary>High bit of the sampling streams, keeping them apart from the training streams (step &lt;&lt; 4 | purpose).</summary>
    private const ulong StreamBase = 1UL << 63;

    /// <summary>The Philox stream of the initial noise (<paramref name="step"/> 0) or of SDE step <paramref name="step"/> - 1.</summary>
    public static ulong NoiseStream(int step)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        return StreamBase | (uint)step;
    }

    /// <summary>The diffusion coefficient of REPA's SDE, w(t) = 2t (compute_diffusion; the same for both paths).</summary>
    public static double Diffusion(double t) => 2 * t;

    /// <summary>
    /// torch.linspace(start, end, steps) in float64, element for element: step = (end - start) / (steps - 1); the first
    /// half counts up from start, the second half back from end (so both ends are exact).
    /// </summary>
    public static double[] Linspace(double start, double end, int steps)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        var v = new double[steps];
        if (steps == 1)
        {
            v[0] = start;
            return v;
        }
        double step = (end - start) / (steps - 1);
        int halfway = steps / 2;
        for (int i = 0; i < steps; i++) v[i] = i < halfway ? start + step * i : end - step * (steps - i - 1);
        return v;
    }

    /// <summary>The N + 1 times of a run: ODE linspace(1, 0, N + 1); SDE linspace(1, 0.04, N) followed by 0.</summary>
    public static double[] TimeGrid(SamplerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (options.Mode == SamplerMode.Ode) return Linspace(1, 0, options.Steps + 1);
        return [.. Linspace(1, SdeLastTime, options.Steps), 0.0];
    }

    /// <summary>
    /// The score from a velocity on the given path (samplers.py get_score_from_velocity):
    /// s = (r v - x) / (sigma^2 - r sigma' sigma) with r = alpha / alpha'.
    /// </summary>
    public static void ScoreFromVelocity(string pathType, double t, ReadOnlySpan<double> velocity, ReadOnlySpan<double> x, Span<double> score)
    {
        if (velocity.Length != x.Length || score.Length != x.Length)
            throw new ArgumentException($"score: velocity ({velocity.Length}), x ({x.Length}) and score ({score.Length}) must have one length.");
        Objective.Interpolant(pathType, t, out double alpha, out double sigma, out double dAlpha, out double dSigma);
        double ratio = alpha / dAlpha;
        double variance = sigma * sigma - ratio * dSigma * sigma;
        for (int i = 0; i < x.Length; i++) score[i] = (ratio * velocity[i] - x[i]) / variance;
    }

    /// <summary>Standard normal initial states at t = 1 for samples firstSample .. firstSample + x.Length / sampleSize - 1.</summary>
    public static void InitialNoise(ulong seed, long firstSample, int sampleSize, Span<double> x)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(firstSample);
        ArgumentOutOfRangeException.ThrowIfLessThan(sampleSize, 1);
        Philox.Normal(seed, NoiseStream(0), checked((ulong)firstSample * (ulong)sampleSize), x);
    }

    /// <summary>
    /// Draws <paramref name="labels"/>.Length samples of <paramref name="sampleSize"/> values each: initial noise from
    /// the seed, then <see cref="Run"/>. <paramref name="firstSample"/> is the global index of the first one.
    /// </summary>
    public static double[] Sample(VelocityModel model, ReadOnlySpan<int> labels, int nullClass, int sampleSize, SamplerOptions options,
        long firstSample = 0, Action<SamplerProgress>? progress = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(sampleSize, 1);
        var x = new double[checked(labels.Length * sampleSize)];
        InitialNoise(options.Seed, firstSample, sampleSize, x);
        Run(model, x, labels, nullClass, options, firstSample, progress);
        return x;
    }

    /// <summary>
    /// Integrates from t = 1 to t = 0 in place: <paramref name="x"/> holds the states at t = 1 (n = labels.Length samples)
    /// and ends holding the samples. <paramref name="nullClass"/> is the label of the unconditional branch of guidance.
    /// </summary>
    public static void Run(VelocityModel model, Span<double> x, ReadOnlySpan<int> labels, int nullClass, SamplerOptions options,
        long firstSample = 0, Action<SamplerProgress>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ArgumentOutOfRangeException.ThrowIfNegative(firstSample);
        int n = labels.Length;
        if (n == 0) return;
        if (x.Length % n != 0 || x.Length == 0)
            throw new ArgumentException($"sampler: {x.Length} state values do not split into {n} samples.", nameof(x));
        var evaluator = new Evaluator(model, labels, nullClass, x.Length / n, options);
        var grid = TimeGrid(options);
        if (options.Mode == SamplerMode.Ode) Ode(evaluator, x, grid, options, progress);
        else Sde(evaluator, x, grid, options, firstSample, progress);
    }

    private static void Ode(Evaluator e, Span<double> x, double[] grid, SamplerOptions o, Action<SamplerProgress>? progress)
    {
        int steps = o.Steps, len = x.Length;
        var d = new double[len];
        var xNext = new double[len];
        var dPrime = o.Heun ? new double[len] : [];
        for (int i = 0; i < steps; i++)
        {
            double tCur = grid[i], tNext = grid[i + 1], dt = tNext - tCur;
            bool guided = o.Guided(tCur);
            e.Velocity(x, tCur, guided, d);
            for (int k = 0; k < len; k++) xNext[k] = x[k] + dt * d[k];
            if (o.Heun && i < steps - 1)
            {
                // REPA decides guidance of the correction by t_cur too, though the model runs at t_next.
                e.Velocity(xNext, tNext, guided, dPrime);
                for (int k = 0; k < len; k++) x[k] += dt * (0.5 * d[k] + 0.5 * dPrime[k]);
            }
            else
            {
                xNext.CopyTo(x);
            }
            progress?.Invoke(new SamplerProgress(i + 1, steps, tNext));
        }
    }

    private static void Sde(Evaluator e, Span<double> x, double[] grid, SamplerOptions o, long firstSample, Action<SamplerProgress>? progress)
    {
        int steps = o.Steps, len = x.Length;
        var d = new double[len];
        var eps = new double[len];
        ulong offset = checked((ulong)firstSample * (ulong)e.SampleSize);
        for (int i = 0; i < steps - 1; i++)
        {
            double tCur = grid[i], tNext = grid[i + 1], dt = tNext - tCur;
            double diffusion = Diffusion(tCur);
            Philox.Normal(o.Seed, NoiseStream(i + 1), offset, eps);
            e.Drift(x, tCur, o.Guided(tCur), diffusion, d);
            double noiseScale = Math.Sqrt(diffusion), sqrtDt = Math.Sqrt(Math.Abs(dt));
            for (int k = 0; k < len; k++) x[k] = x[k] + d[k] * dt + noiseScale * (eps[k] * sqrtDt);
            progress?.Invoke(new SamplerProgress(i + 1, steps, tNext));
        }
        // Last step, 0.04 -> 0: the mean of the Euler-Maruyama update, no noise.
        double tLast = grid[steps - 1], dtLast = grid[steps] - tLast;
        e.Drift(x, tLast, o.Guided(tLast), Diffusion(tLast), d);
        for (int k = 0; k < len; k++) x[k] = x[k] + dtLast * d[k];
        progress?.Invoke(new SamplerProgress(steps, steps, grid[steps]));
    }

    /// <summary>Model calls with or without guidance, and the SDE drift; owns the buffers of the doubled batch.</summary>
    private sealed class Evaluator
    {
        private readonly VelocityModel model;
        private readonly int[] labels;
        private readonly int[] doubledLabels;
        private readonly SamplerOptions options;
        private double[] doubledX = [], doubledOut = [], score = [];

        public Evaluator(VelocityModel model, ReadOnlySpan<int> labels, int nullClass, int sampleSize, SamplerOptions options)
        {
            this.model = model;
            this.options = options;
            this.labels = labels.ToArray();
            SampleSize = sampleSize;
            doubledLabels = options.CfgScale > 1 ? [.. this.labels, .. Enumerable.Repeat(nullClass, labels.Length)] : [];
        }

        public int SampleSize { get; }

        /// <summary>The (guided) velocity at (x, t).</summary>
        public void Velocity(ReadOnlySpan<double> x, double t, bool guided, Span<double> result)
        {
            if (!guided)
            {
                model(x, t, labels, result);
                return;
            }
            var (cond, uncond) = RunDoubled(x, t);
            Combine(cond, uncond, result);
        }

        /// <summary>The (guided) SDE drift v - w/2 s at (x, t); guidance combines the two drifts, as REPA does.</summary>
        public void Drift(ReadOnlySpan<double> x, double t, bool guided, double diffusion, Span<double> result)
        {
            int len = x.Length;
            if (score.Length != len) score = new double[len];
            double halfDiffusion = 0.5 * diffusion;
            if (!guided)
            {
                model(x, t, labels, result);
                ScoreFromVelocity(options.PathType, t, result, x, score);
                for (int k = 0; k < len; k++) result[k] -= halfDiffusion * score[k];
                return;
            }
            var (cond, uncond) = RunDoubled(x, t);
            foreach (var half in new[] { cond, uncond })
            {
                ScoreFromVelocity(options.PathType, t, half.Span, x, score);
                var h = half.Span;
                for (int k = 0; k < len; k++) h[k] -= halfDiffusion * score[k];
            }
            Combine(cond, uncond, result);
        }

        /// <summary>The model on [x; x] with labels [y; null]: (output for y, output for null).</summary>
        private (Memory<double> Cond, Memory<double> Uncond) RunDoubled(ReadOnlySpan<double> x, double t)
        {
            int len = x.Length;
            if (doubledX.Length != 2 * len)
            {
                doubledX = new double[2 * len];
                doubledOut = new double[2 * len];
            }
            x.CopyTo(doubledX);
            x.CopyTo(doubledX.AsSpan(len));
            model(doubledX, t, doubledLabels, doubledOut);
            return (doubledOut.AsMemory(0, len), doubledOut.AsMemory(len, len));
        }

        private void Combine(Memory<double> cond, Memory<double> uncond, Span<double> result)
        {
            double scale = options.CfgScale;
            var c = cond.Span;
            var u = uncond.Span;
            for (int k = 0; k < result.Length; k++) result[k] = u[k] + scale * (c[k] - u[k]);
        }
    }
}
