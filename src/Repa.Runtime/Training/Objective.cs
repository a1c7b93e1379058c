using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Models;

namespace Repa.Runtime.Training;

/// <summary>
/// Settings of REPA's training objective (loss.py SILoss plus train.py's proj_coeff and the label dropout that REPA's
/// label embedder applies). Names in messages are the reference's command-line names.
/// </summary>
public sealed record ObjectiveConfig(
    string PathType = "linear",
    string Weighting = "uniform",
    double ProjCoeff = 0.5,
    string ProjLoss = "cosine",
    double NtXentTemperature = 0.1,
    double ClassDropout = 0.1)
{
    /// <summary>Throws <see cref="ArgumentException"/> with a one-sentence reason when a field is out of range.</summary>
    public ObjectiveConfig Validate()
    {
        static void Check(bool ok, string message)
        {
            if (!ok) throw new ArgumentException(message);
        }
        Check(PathType is "linear" or "cosine", $"path_type must be linear or cosine, got '{PathType}'.");
        Check(Weighting is "uniform" or "lognormal", $"weighting must be uniform or lognormal, got '{Weighting}'.");
        Check(ProjLoss is "cosine" or "ntxent", $"proj_loss must be cosine or ntxent, got '{ProjLoss}'.");
        Check(double.IsFinite(ProjCoeff) && ProjCoeff >= 0, $"proj_coeff must be finite and >= 0, got {ProjCoeff}.");
        Check(double.IsFinite(NtXentTemperature) && NtXentTemperature > 0,
            $"ntxent_temperature must be finite and > 0, got {NtXentTemperature}.");
        Check(ClassDropout is >= 0 and < 1, $"class_dropout must be in [0, 1), got {ClassDropout}.");
        return this;
    }
}

/// <summary>The objective's scalars, all on the current tape: Total is the one to back-propagate.</summary>
/// <param name="Total">denoise + proj_coeff * proj (+ vb for the DDPM objective).</param>
/// <param name="Denoise">Batch mean of the per-sample mean squared velocity (DDPM: eps) error.</param>
/// <param name="Proj">Projection loss averaged over encoders and samples; a constant 0 when proj_coeff is 0.</param>
/// <param name="Output">The model's velocity (DDPM: eps) prediction [N, C, H, W].</param>
/// <param name="Target">The velocity target v (DDPM: the noise eps) [N, C, H, W].</param>
/// <param name="Projections">The model's projections, one [N, T, z_j] per encoder.</param>
public sealed record LossResult(Tensor Total, Tensor Denoise, Tensor Proj, Tensor Output, Tensor Target, Tensor[] Projections)
{
    /// <summary>DiT's variational-bound term (batch mean, in bits) of the DDPM objective; null for the SiT objective.</summary>
    public Tensor? Vb { get; init; }
}

/// <summary>
/// REPA's training objective (sihyun-yu/REPA loss.py SILoss, combined as train.py does): x_t = alpha_t x0 + sigma_t eps,
/// v = alpha'_t x0 + sigma'_t eps, loss = mean_n mean_chw (v_hat - v)^2 + proj_coeff * proj, where proj is the
/// per-token negative cosine between projector outputs and encoder features, summed over encoders and samples and
/// divided by (n_encoders * N). The linear path runs from data at t = 0 to pure noise at t = 1 (the opposite of the SiT
/// repo). Randomness (times, label dropout, noise) comes from counter-based Philox streams keyed by (seed, step), so a
/// resumed run redraws exactly what it would have drawn; <see cref="Compute(SiT, Tensor, Tensor, double[], Tensor, Tensor[])"/>
/// itself draws nothing.
/// </summary>
public sealed class Objective
{
    /// <summary>Philox stream purposes; the stream is (step &lt;&lt; 4) | purpose, so draws of one step never overlap.</summary>
    public const ulong TimePurpose = 1, LabelPurpose = 2, NoisePurpose = 3;

    public Objective(ObjectiveConfig? config = null) => Config = (config ?? new ObjectiveConfig()).Validate();

    public ObjectiveConfig Config { get; }

    /// <summary>The Philox stream of <paramref name="purpose"/> at training step <paramref name="step"/>.</summary>
    public static ulong Stream(ulong step, ulong purpose)
    {
        if (step >= 1UL << 60) throw new ArgumentOutOfRangeException(nameof(step), step, "step must be below 2^60.");
        return (step << 4) | (purpose & 0xF);
    }

    /// <summary>
    /// alpha_t, sigma_t and their time derivatives (loss.py interpolant). linear: (1 - t, t, -1, 1); cosine:
    /// (cos(pi t / 2), sin(pi t / 2), -pi/2 sin(pi t / 2), pi/2 cos(pi t / 2)).
    /// </summary>
    public static void Interpolant(string pathType, double t, out double alphaT, out double sigmaT, out double dAlphaT, out double dSigmaT)
    {
        switch (pathType)
        {
            case "linear":
                alphaT = 1 - t;
                sigmaT = t;
                dAlphaT = -1;
                dSigmaT = 1;
                break;
            case "cosine":
                var (sin, cos) = Math.SinCos(t * Math.PI / 2);
                alphaT = cos;
                sigmaT = sin;
                dAlphaT = -Math.PI / 2 * sin;
                dSigmaT = Math.PI / 2 * cos;
                break;
            default:
                throw new ArgumentException($"path_type must be linear or cosine, got '{pathType}'.", nameof(pathType));
        }
    }

    /// <summary>
    /// n training times in (0, 1). uniform: (w + 1/2) 2^-32 from a Philox word w (strictly inside, exact in fp64).
    /// lognormal (EDM's sigma = exp(z), z ~ N(0, 1) with loss.py's P_mean 0, P_std 1): linear path t = sigma / (1 + sigma)
    /// = sigmoid(z); cosine path t = 2/pi atan(sigma), as loss.py. Both are symmetric about 1/2.
    /// </summary>
    public double[] SampleTimes(ulong seed, ulong step, int n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        var t = new double[n];
        ulong stream = Stream(step, TimePurpose);
        if (Config.Weighting == "uniform")
        {
            var bits = new uint[n];
            Philox.Bits(seed, stream, 0, bits);
            for (int i = 0; i < n; i++) t[i] = (bits[i] + 0.5) * (1.0 / 4294967296.0);
            return t;
        }
        Philox.Normal(seed, stream, 0, t);
        bool linear = Config.PathType == "linear";
        for (int i = 0; i < n; i++)
        {
            double sigma = Math.Exp(t[i]);
            // |z| <= 6.7 for Philox normals, so both stay strictly inside (0, 1).
            t[i] = linear ? sigma / (1 + sigma) : 2 / Math.PI * Math.Atan(sigma);
        }
        return t;
    }

    /// <summary>
    /// A copy of <paramref name="labels"/> where each label independently becomes <paramref name="nullClass"/> with
    /// probability ClassDropout (classifier-free guidance training; REPA's LabelEmbedder.token_drop): dropped when
    /// (w + 1/2) 2^-32 &lt; p for the label's Philox word w.
    /// </summary>
    public int[] DropLabels(int[] labels, int nullClass, ulong seed, ulong step)
    {
        ArgumentNullException.ThrowIfNull(labels);
        var result = (int[])labels.Clone();
        double p = Config.ClassDropout;
        if (p <= 0 || labels.Length == 0) return result;
        var bits = new uint[labels.Length];
        Philox.Bits(seed, Stream(step, LabelPurpose), 0, bits);
        for (int i = 0; i < result.Length; i++)
            if ((bits[i] + 0.5) * (1.0 / 4294967296.0) < p) result[i] = nullClass;
        return result;
    }

    /// <summary>
    /// Standard normal noise of <paramref name="shape"/> from the step's noise stream (not recorded; no grad), starting
    /// at element <paramref name="offset"/> of that stream, so a micro-batch gets exactly its slice of the step's noise.
    /// </summary>
    public static Tensor SampleNoise(IBackend backend, DType dtype, int[] shape, ulong seed, ulong step, ulong offset = 0)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(shape);
        return MakeTensor(backend, dtype, NoiseValues(Shapes.Count(shape), seed, step, offset), shape);
    }

    /// <summary>The values of <see cref="SampleNoise"/>: <paramref name="count"/> standard normals of the step's noise
    /// stream from element <paramref name="offset"/> on, in float64.</summary>
    public static double[] NoiseValues(long count, ulong seed, ulong step, ulong offset = 0)
    {
        var values = new double[count];
        Philox.Normal(seed, Stream(step, NoisePurpose), offset, values);
        return values;
    }

    /// <summary>Coefficient tensors of the SiT objective in <see cref="StepInputs.Coefficients"/>: alpha_t, sigma_t,
    /// alpha'_t, sigma'_t.</summary>
    public const int CoefficientCount = 4;

    /// <summary>
    /// Uploads the times <paramref name="t"/> and the interpolant's coefficients derived from them (computed on the host
    /// in float64, as <see cref="Compute(SiT, Tensor, Tensor, double[], Tensor, Tensor[])"/> does) into
    /// <paramref name="inputs"/>, for <see cref="Compute(SiT, StepInputs)"/>.
    /// </summary>
    public void SetTimes(StepInputs inputs, double[] t)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        if (inputs.Coefficients.Length != CoefficientCount)
            throw new ArgumentException($"objective: the step inputs hold {inputs.Coefficients.Length} coefficient tensors, the SiT objective needs {CoefficientCount}.");
        var coefficients = Coefficients(t, inputs.Batch, "objective");
        StepInputs.Upload(inputs.Times, t);
        for (int i = 0; i < CoefficientCount; i++) StepInputs.Upload(inputs.Coefficients[i], coefficients[i]);
    }

    /// <summary>
    /// The loss of one micro-batch whose inputs (x0, noise, labels, targets, and the times through
    /// <see cref="SetTimes"/>) are in <paramref name="inputs"/>: device work only (nothing is read back or uploaded), so it
    /// can be captured into a CUDA graph.
    /// </summary>
    public LossResult Compute(SiT model, StepInputs inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        return Compute(model, inputs.X0, inputs.Noise, inputs.Times, inputs.Coefficients, inputs.Labels, inputs.Targets);
    }

    /// <summary>alpha_t, sigma_t, alpha'_t, sigma'_t per sample, after checking that there are n finite times.</summary>
    private double[][] Coefficients(double[] t, int n, string op)
    {
        ArgumentNullException.ThrowIfNull(t);
        if (t.Length != n)
            throw new ShapeMismatchException($"{op}: {t.Length} times for a batch of {n}.");
        foreach (double ti in t)
            if (!double.IsFinite(ti)) throw new ArgumentException($"{op}: every time must be finite, got {ti}.");
        var c = new double[CoefficientCount][];
        for (int k = 0; k < CoefficientCount; k++) c[k] = new double[n];
        for (int i = 0; i < n; i++)
            Interpolant(Config.PathType, t[i], out c[0][i], out c[1][i], out c[2][i], out c[3][i]);
        return c;
    }

    /// <summary>
    /// The loss for clean inputs x0 and noise eps [N, C, H, W] (model dtype), per-sample times t (N values), labels [N]
    /// int32 (dropout already applied) and one encoder target [N, T, z_j] per projector. Nothing random happens here.
    /// </summary>
    public LossResult Compute(SiT model, Tensor x0, Tensor noise, double[] t, Tensor labels, Tensor[] targets)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(x0);
        ArgumentNullException.ThrowIfNull(t);
        var tTensor = MakeTensor(x0.Backend, x0.DType, t, t.Length);
        return Compute(model, x0, noise, t, tTensor, labels, targets);
    }

    /// <summary>As the double[] overload, with times already a tensor [N] of the model's dtype (read back to the host).</summary>
    public LossResult Compute(SiT model, Tensor x0, Tensor noise, Tensor t, Tensor labels, Tensor[] targets)
    {
        ArgumentNullException.ThrowIfNull(t);
        return Compute(model, x0, noise, t.ToDoubleArray(), t, labels, targets);
    }

    private LossResult Compute(SiT model, Tensor x0, Tensor noise, double[] t, Tensor tTensor, Tensor labels, Tensor[] targets)
    {
        CheckInputs(x0, noise, "objective");
        // Per-sample coefficients as [N, 1, 1, 1], broadcast over C, H, W.
        int n = x0.Shape[0];
        var coefficients = Coefficients(t, n, "objective").Select(v => MakeTensor(x0.Backend, x0.DType, v, n, 1, 1, 1)).ToArray();
        return Compute(model, x0, noise, tTensor, coefficients, labels, targets);
    }

    /// <summary>x0 and noise [N, C, H, W] of one shape, dtype and backend.</summary>
    internal static void CheckInputs(Tensor x0, Tensor noise, string op)
    {
        ArgumentNullException.ThrowIfNull(x0);
        ArgumentNullException.ThrowIfNull(noise);
        if (x0.Rank != 4 || !x0.Shape.AsSpan().SequenceEqual(noise.Shape))
            throw new ShapeMismatchException($"{op}: x0 {x0.Describe()} and noise {noise.Describe()} must both be [N, C, H, W] of one shape.");
        if (x0.DType != noise.DType || x0.Backend != noise.Backend)
            throw new ShapeMismatchException($"{op}: x0 {x0.Describe()} and noise {noise.Describe()} must share dtype and backend.");
    }

    // The device part: everything from the inputs' tensors on (coefficients: alpha, sigma, alpha', sigma' [N, 1, 1, 1]).
    private LossResult Compute(SiT model, Tensor x0, Tensor noise, Tensor tTensor, Tensor[] coefficients, Tensor labels, Tensor[] targets)
    {
        const string op = "objective";
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(labels);
        ArgumentNullException.ThrowIfNull(targets);
        CheckInputs(x0, noise, op);
        var (alpha, sigma, dAlpha, dSigma) = (coefficients[0], coefficients[1], coefficients[2], coefficients[3]);

        var xT = Ops.Add(Ops.Mul(alpha, x0), Ops.Mul(sigma, noise));
        var v = Ops.Add(Ops.Mul(dAlpha, x0), Ops.Mul(dSigma, noise));
        var (output, projections) = model.Forward(xT, tTensor, labels);
        var denoise = Ops.Mean(Ops.MsePerSample(output, v));

        if (Config.ProjCoeff == 0)
        {
            // REPA would still compute it; skipping saves the projector's backward. Reported as 0.
            var zero = Tensor.Zeros(x0.Backend, x0.DType);
            return new LossResult(denoise, denoise, zero, output, v, projections);
        }

        var proj = ProjectionLoss(Config, projections, targets, op);
        var total = Ops.Add(denoise, Ops.Scale(proj, Config.ProjCoeff));
        return new LossResult(total, denoise, proj, output, v, projections);
    }

    /// <summary>
    /// REPA's projection loss: per encoder the batch mean of the per-sample cosine (or NT-Xent) loss, then the mean over
    /// encoders, i.e. sum / (n_encoders * N). Shared by the SiT and DDPM objectives.
    /// </summary>
    internal static Tensor ProjectionLoss(ObjectiveConfig config, Tensor[] projections, Tensor[] targets, string op)
    {
        if (targets.Length != projections.Length || targets.Length == 0)
            throw new ShapeMismatchException($"{op}: {targets.Length} encoder targets for {projections.Length} projectors (need one per projector, at least one).");
        Tensor? sum = null;
        for (int j = 0; j < targets.Length; j++)
        {
            var perSample = config.ProjLoss == "ntxent"
                ? Ops.NtXentLoss(projections[j], targets[j], config.NtXentTemperature)
                : Ops.CosineAlignmentLoss(projections[j], targets[j]);
            var mean = Ops.Mean(perSample);
            sum = sum == null ? mean : Ops.Add(sum, mean);
        }
        return targets.Length == 1 ? sum! : Ops.Scale(sum!, 1.0 / targets.Length);
    }

    internal static Tensor MakeTensor(IBackend backend, DType dtype, double[] values, params int[] shape)
    {
        if (dtype is not (DType.F64 or DType.F32))
            throw new ArgumentException($"objective: dtype {dtype.Name()} is not a floating-point model dtype.");
        var t = Tensor.Empty(backend, dtype, shape);
        StepInputs.Upload(t, values);
        return t;
    }
}
