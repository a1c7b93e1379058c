using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Training;

namespace Repa.Runtime.Sampling;

/// <summary>
/// A velocity model seen by the samplers: for a batch of states <paramref name="x"/> (n samples of equal size, flat,
/// float64), one time <paramref name="t"/> shared by the batch and n class labels (num_classes = the null class), writes
/// the model output for every sample into <paramref name="output"/> (n samples of the same flat size for a velocity).
/// Tests plug closed forms in here; a network runs through the <see cref="BatchedModel"/> overloads of the samplers
/// (or <see cref="BatchedModel.AsVelocityModel"/>, which goes through the host).
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
/// Execution: every update is one <see cref="IBackend.FlowStep"/> per model evaluation (the guided combine, the drift, the
/// update and the SDE's noise fused), in float64, on the backend that holds the state: the CPU backend for a
/// <see cref="VelocityModel"/> (its reference implementation, so the results are REPA's float64 loops written out), the
/// model's own backend for a <see cref="BatchedModel"/>, where the state stays on the device from the first step to the
/// last (converted there to the model's dtype for each call). On CUDA the noise is drawn in the kernel and equals
/// Philox.Normal up to the last ulp of the device's log/sincos; every other operation is bit for bit the CPU's.
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
        var (ratio, variance, _) = Drift(pathType, t);
        for (int i = 0; i < x.Length; i++) score[i] = (ratio * velocity[i] - x[i]) / variance;
    }

    /// <summary>
    /// The coefficients of the SDE's drift d = v - w(t)/2 s at <paramref name="t"/> (see <see cref="ScoreDrift"/>):
    /// r = alpha / alpha', variance = sigma^2 - r sigma' sigma, and w(t) / 2.
    /// </summary>
    public static ScoreDrift Drift(string pathType, double t)
    {
        Objective.Interpolant(pathType, t, out double alpha, out double sigma, out double dAlpha, out double dSigma);
        double ratio = alpha / dAlpha;
        return new ScoreDrift(ratio, sigma * sigma - ratio * dSigma * sigma, 0.5 * Diffusion(t));
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
    /// the seed, then <see cref="Run(VelocityModel, Span{double}, ReadOnlySpan{int}, int, SamplerOptions, long, Action{SamplerProgress})"/>.
    /// <paramref name="firstSample"/> is the global index of the first one.
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
    /// The model is a host function: the state lives in the CPU backend's memory and every update is its
    /// <see cref="IBackend.FlowStep"/>, the same op that moves a network's state on its device.
    /// </summary>
    public static void Run(VelocityModel model, Span<double> x, ReadOnlySpan<int> labels, int nullClass, SamplerOptions options,
        long firstSample = 0, Action<SamplerProgress>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!Check(x, labels, options, firstSample)) return;
        using var stepModel = new HostModel(model, labels, nullClass, x.Length, options);
        Integrate(stepModel, x, options, firstSample, x.Length / labels.Length, progress);
    }

    /// <summary>
    /// <see cref="Run(VelocityModel, Span{double}, ReadOnlySpan{int}, int, SamplerOptions, long, Action{SamplerProgress})"/>
    /// for a network on its backend: the float64 state is uploaded once, stays on the device between model calls (each
    /// call converts it to the model's dtype there, doubled under guidance) and comes back at the end; every update is
    /// the backend's fused <see cref="IBackend.FlowStep"/>, with the SDE's noise drawn on the device.
    /// </summary>
    public static void Run(BatchedModel model, Span<double> x, ReadOnlySpan<int> labels, int nullClass, SamplerOptions options,
        long firstSample = 0, Action<SamplerProgress>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!Check(x, labels, options, firstSample)) return;
        if (x.Length != (long)labels.Length * model.SampleSize)
            throw new ArgumentException($"sampler: {x.Length} state values are not {labels.Length} samples of the model's {model.SampleSize}.", nameof(x));
        using var stepModel = new NetworkModel(model, labels, nullClass, x.Length, options);
        Integrate(stepModel, x, options, firstSample, model.SampleSize, progress);
    }

    /// <summary>Validates a run's arguments; false when there is nothing to sample.</summary>
    private static bool Check(ReadOnlySpan<double> x, ReadOnlySpan<int> labels, SamplerOptions options, long firstSample)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ArgumentOutOfRangeException.ThrowIfNegative(firstSample);
        int n = labels.Length;
        if (n == 0) return false;
        if (x.Length % n != 0 || x.Length == 0)
            throw new ArgumentException($"sampler: {x.Length} state values do not split into {n} samples.", nameof(x));
        return true;
    }

    /// <summary>The step loop of both samplers on the model's backend; x is uploaded first and downloaded last.</summary>
    private static void Integrate(StepModel model, Span<double> x, SamplerOptions o, long firstSample, int sampleSize,
        Action<SamplerProgress>? progress)
    {
        var backend = model.Backend;
        long len = x.Length;
        var buffers = new List<DeviceBuffer>();
        DeviceBuffer State() // float64 buffers of one state, freed at the end
        {
            var b = backend.Allocate(DType.F64, len);
            buffers.Add(b);
            return b;
        }
        try
        {
            var state = State();
            backend.Upload<double>(x, state);
            var grid = TimeGrid(o);
            if (o.Mode == SamplerMode.Ode) Ode(model, state, o.Heun ? State() : null, o.Heun ? State() : null, grid, o, progress);
            else Sde(model, state, grid, o, checked((ulong)firstSample * (ulong)sampleSize), progress);
            backend.Download<double>(state, x);
        }
        finally
        {
            foreach (var b in buffers) b.Dispose();
        }
    }

    private static void Ode(StepModel m, DeviceBuffer x, DeviceBuffer? xNext, DeviceBuffer? direction, double[] grid, SamplerOptions o,
        Action<SamplerProgress>? progress)
    {
        int steps = o.Steps;
        long len = x.Length;
        for (int i = 0; i < steps; i++)
        {
            double tCur = grid[i], tNext = grid[i + 1];
            bool guided = o.Guided(tCur);
            var euler = new FlowStepCoefficients(FlowUpdate.Euler, tNext - tCur) { GuidanceScale = guided ? o.CfgScale : null };
            var v = m.Evaluate(x, tCur, guided);
            if (o.Heun && i < steps - 1)
            {
                m.Backend.FlowStep(euler, x, v, direction, xNext!, len);
                // REPA decides guidance of the correction by t_cur too, though the model runs at t_next.
                var vNext = m.Evaluate(xNext!, tNext, guided);
                m.Backend.FlowStep(euler with { Update = FlowUpdate.Heun }, x, vNext, direction, x, len);
            }
            else
            {
                m.Backend.FlowStep(euler, x, v, null, x, len);
            }
            progress?.Invoke(new SamplerProgress(i + 1, steps, tNext));
        }
    }

    private static void Sde(StepModel m, DeviceBuffer x, double[] grid, SamplerOptions o, ulong offset, Action<SamplerProgress>? progress)
    {
        int steps = o.Steps;
        long len = x.Length;
        for (int i = 0; i < steps - 1; i++)
        {
            double tCur = grid[i], tNext = grid[i + 1], dt = tNext - tCur;
            bool guided = o.Guided(tCur);
            var step = new FlowStepCoefficients(FlowUpdate.EulerMaruyama, dt)
            {
                GuidanceScale = guided ? o.CfgScale : null,
                Drift = Drift(o.PathType, tCur), // guidance combines the two drifts, as REPA does
                Noise = new StepNoise(o.Seed, NoiseStream(i + 1), offset, Math.Sqrt(Diffusion(tCur)), Math.Sqrt(Math.Abs(dt))),
            };
            m.Backend.FlowStep(step, x, m.Evaluate(x, tCur, guided), null, x, len);
            progress?.Invoke(new SamplerProgress(i + 1, steps, tNext));
        }
        // Last step, 0.04 -> 0: the mean of the Euler-Maruyama update, no noise.
        double tLast = grid[steps - 1];
        bool guidedLast = o.Guided(tLast);
        var last = new FlowStepCoefficients(FlowUpdate.Euler, grid[steps] - tLast)
        {
            GuidanceScale = guidedLast ? o.CfgScale : null,
            Drift = Drift(o.PathType, tLast),
        };
        m.Backend.FlowStep(last, x, m.Evaluate(x, tLast, guidedLast), null, x, len);
        progress?.Invoke(new SamplerProgress(steps, steps, grid[steps]));
    }

    /// <summary>
    /// A model as the step loop sees it: evaluated at a float64 state on <see cref="Backend"/>, it fills a buffer with its
    /// outputs, n values or, guided, 2n (the model on [x; x] with labels [y; null]: the conditional half first). The
    /// state is first converted into the model's input buffer on the backend (rounded as REPA casts x to the latents'
    /// dtype) and copied into its second half under guidance.
    /// </summary>
    private abstract class StepModel : IDisposable
    {
        private readonly int[] labels, doubledLabels;
        private readonly long length;

        protected StepModel(IBackend backend, DType dtype, ReadOnlySpan<int> labels, int nullClass, long length, SamplerOptions options)
        {
            Backend = backend;
            this.labels = labels.ToArray();
            bool guidance = options.CfgScale > 1;
            doubledLabels = guidance ? [.. this.labels, .. Enumerable.Repeat(nullClass, labels.Length)] : [];
            this.length = length;
            long size = guidance ? 2 * length : length;
            Input = backend.Allocate(dtype, size);
            try
            {
                Output = backend.Allocate(dtype, size);
            }
            catch
            {
                Input.Dispose();
                throw;
            }
        }

        public IBackend Backend { get; }

        /// <summary>The model's input and output buffers, in its dtype.</summary>
        protected DeviceBuffer Input { get; }

        protected DeviceBuffer Output { get; }

        /// <summary>The model output at (x, t), guided or not; the buffer is reused by the next call.</summary>
        public DeviceBuffer Evaluate(DeviceBuffer x, double t, bool guided)
        {
            Backend.Convert(x, Input, length);
            if (guided) Backend.Copy(Input, 0, Input, length, length);
            Run(t, guided ? doubledLabels : labels, guided ? 2 * length : length);
            return Output;
        }

        /// <summary>Output[..count] = the model on Input[..count] (labels.Length samples) at time t.</summary>
        protected abstract void Run(double t, int[] labels, long count);

        public void Dispose()
        {
            Input.Dispose();
            Output.Dispose();
        }
    }

    /// <summary>A <see cref="VelocityModel"/> on float64 spans of the CPU backend's buffers.</summary>
    private sealed class HostModel(VelocityModel model, ReadOnlySpan<int> labels, int nullClass, long length, SamplerOptions options)
        : StepModel(CpuBackend.Default, DType.F64, labels, nullClass, length, options)
    {
        protected override void Run(double t, int[] labels, long count) =>
            model(((CpuBuffer)Input).AsSpan<double>()[..(int)count], t, labels, ((CpuBuffer)Output).AsSpan<double>()[..(int)count]);
    }

    /// <summary>A network on its backend, in its dtype.</summary>
    private sealed class NetworkModel(BatchedModel model, ReadOnlySpan<int> labels, int nullClass, long length, SamplerOptions options)
        : StepModel(model.Backend, model.DType, labels, nullClass, length, options)
    {
        protected override void Run(double t, int[] labels, long count) => model.Run(Input, t, labels, Output);
    }
}
