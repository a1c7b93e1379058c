using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Diffusion;
using Repa.Runtime.Models;

namespace Repa.Runtime.Training;

/// <summary>
/// DiT's training objective (facebookresearch/DiT train.py + gaussian_diffusion.py training_losses with
/// create_diffusion(timestep_respacing="")): t ~ U{0..T-1} per sample, x_t = sqrt(alphā_t) x0 + sqrt(1 - alphā_t) eps,
/// the model predicts [eps_hat | v] (2C channels), and loss = mean_n (mse_n + vb_n) with mse_n = mean_chw (eps_hat - eps)^2
/// and vb_n the variational-bound term in bits of the learned-range variance with the mean frozen
/// (<see cref="Ops.DiffusionVlbTerm"/>: KL to the true posterior for t &gt; 0, the discretised decoder NLL of x0 for
/// t = 0). With projectors (REPA on DiT) the REPA projection loss is added with proj_coeff, as for SiT. From
/// <see cref="ObjectiveConfig"/> only the projection settings apply (path_type and weighting are SiT's); label dropout
/// and noise are drawn as for SiT (<see cref="Objective.DropLabels"/>, <see cref="Objective.SampleNoise"/>).
/// </summary>
public sealed class DdpmObjective
{
    /// <summary>Vanilla DiT (proj_coeff 0) unless <paramref name="config"/> says otherwise; DiT's training process unless given.</summary>
    public DdpmObjective(ObjectiveConfig? config = null, GaussianDiffusion? diffusion = null)
    {
        Config = (config ?? new ObjectiveConfig(ProjCoeff: 0)).Validate();
        Diffusion = diffusion ?? GaussianDiffusion.Create("");
    }

    public ObjectiveConfig Config { get; }

    /// <summary>The training process: DiT's 1000-step linear schedule unless given.</summary>
    public GaussianDiffusion Diffusion { get; }

    /// <summary>
    /// n timestep indices uniform on 0..T-1 (torch.randint), as doubles: floor(w T / 2^32) for the sample's Philox word w
    /// of the step's time stream (bias below T / 2^32).
    /// </summary>
    public double[] SampleTimes(ulong seed, ulong step, int n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        var bits = new uint[n];
        Philox.Bits(seed, Objective.Stream(step, Objective.TimePurpose), 0, bits);
        return bits.Select(w => (double)(((ulong)w * (ulong)Diffusion.NumTimesteps) >> 32)).ToArray();
    }

    /// <summary>
    /// The loss for clean inputs x0 and noise eps [N, C, H, W] (model dtype), timestep indices t (N integer values in
    /// 0..T-1), labels [N] int32 (dropout already applied) and one encoder target per projector. The model must have a
    /// learned variance (a DiT preset); it is called with the original timesteps as raw numbers (0..999).
    /// </summary>
    public LossResult Compute(SiT model, Tensor x0, Tensor noise, double[] t, Tensor labels, Tensor[] targets)
    {
        const string op = "ddpm_objective";
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(x0);
        ArgumentNullException.ThrowIfNull(noise);
        ArgumentNullException.ThrowIfNull(t);
        ArgumentNullException.ThrowIfNull(labels);
        ArgumentNullException.ThrowIfNull(targets);
        RequireLearnedVariance(model);
        Objective.CheckInputs(x0, noise, op);
        var inputs = Inputs(t, x0.Shape[0], op);
        int n = x0.Shape[0];
        var backend = x0.Backend;
        var coefficients = inputs.Coefficients.Select(c => Objective.MakeTensor(backend, x0.DType, c, n, 1, 1, 1)).ToArray();
        var times = Objective.MakeTensor(backend, x0.DType, inputs.Times, n);
        Tensor stepParams;
        using (Tape.NoGrad()) stepParams = Objective.MakeTensor(backend, x0.DType, inputs.StepParameters, n, 4);
        return Compute(model, x0, noise, times, coefficients, stepParams, labels, targets);
    }

    /// <summary>Coefficient tensors of the DDPM objective in <see cref="StepInputs.Coefficients"/>: sqrt(alphā_t),
    /// sqrt(1 - alphā_t), the two posterior-mean coefficients, sqrt(1 / alphā_t) and sqrt(1 / alphā_t - 1).</summary>
    public const int CoefficientCount = 6;

    /// <summary>
    /// Uploads the per-sample tensors derived from the timestep indices <paramref name="t"/> (the model's times, the
    /// schedule's coefficients and the VLB parameters, from the float64 schedule as
    /// <see cref="Compute(SiT, Tensor, Tensor, double[], Tensor, Tensor[])"/> forms them) into <paramref name="inputs"/>.
    /// </summary>
    public void SetTimes(StepInputs inputs, double[] t)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        if (inputs.Coefficients.Length != CoefficientCount || inputs.StepParameters == null)
            throw new ArgumentException($"ddpm_objective: the step inputs need {CoefficientCount} coefficient tensors and the [N, 4] VLB parameters.");
        var host = Inputs(t, inputs.Batch, "ddpm_objective");
        StepInputs.Upload(inputs.Times, host.Times);
        for (int i = 0; i < CoefficientCount; i++) StepInputs.Upload(inputs.Coefficients[i], host.Coefficients[i]);
        StepInputs.Upload(inputs.StepParameters, host.StepParameters);
    }

    /// <summary>The loss of one micro-batch whose inputs (and times through <see cref="SetTimes"/>) are in
    /// <paramref name="inputs"/>: device work only, so it can be captured into a CUDA graph.</summary>
    public LossResult Compute(SiT model, StepInputs inputs)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(inputs);
        RequireLearnedVariance(model);
        if (inputs.StepParameters == null || inputs.Coefficients.Length != CoefficientCount)
            throw new ArgumentException($"ddpm_objective: the step inputs need {CoefficientCount} coefficient tensors and the [N, 4] VLB parameters.");
        return Compute(model, inputs.X0, inputs.Noise, inputs.Times, inputs.Coefficients, inputs.StepParameters, inputs.Labels, inputs.Targets);
    }

    private static void RequireLearnedVariance(SiT model)
    {
        if (!model.Config.LearnSigma)
            throw new ArgumentException($"the DDPM objective needs a model with a learned variance (a DiT preset); {model.Config.Name} has none.");
    }

    private sealed record HostInputs(double[] Times, double[][] Coefficients, double[] StepParameters);

    // The per-sample values of the timestep indices t, from the float64 schedule.
    private HostInputs Inputs(double[] t, int n, string op)
    {
        if (t.Length != n) throw new ShapeMismatchException($"{op}: {t.Length} timesteps for a batch of {n}.");
        var d = Diffusion;
        var steps = new int[n];
        for (int i = 0; i < n; i++)
        {
            if (!(t[i] >= 0 && t[i] < d.NumTimesteps && t[i] == Math.Floor(t[i])))
                throw new ArgumentException($"{op}: timestep {t[i]} must be an integer in 0..{d.NumTimesteps - 1}.");
            steps[i] = (int)t[i];
        }
        double[] Of(Func<int, double> f) => steps.Select(f).ToArray();
        double[][] coefficients =
        [
            Of(s => d.SqrtAlphasCumprod[s]), Of(s => d.SqrtOneMinusAlphasCumprod[s]), Of(s => d.PosteriorMeanCoef1[s]),
            Of(s => d.PosteriorMeanCoef2[s]), Of(s => d.SqrtRecipAlphasCumprod[s]), Of(s => d.SqrtRecipm1AlphasCumprod[s]),
        ];
        var p = new double[4 * n];
        for (int i = 0; i < n; i++)
        {
            int s = steps[i];
            p[4 * i] = d.PosteriorLogVarianceClipped[s]; // learned range: from the clipped posterior variance
            p[4 * i + 1] = d.LogBetas[s]; // to beta_t
            p[4 * i + 2] = d.PosteriorLogVarianceClipped[s]; // the true posterior's (clipped) log variance
            p[4 * i + 3] = s == 0 ? 1 : 0; // t = 0: decoder NLL instead of the KL
        }
        return new HostInputs(Of(s => (double)d.TimestepMap[s]), coefficients, p);
    }

    // The device part, from the inputs' tensors on.
    private LossResult Compute(SiT model, Tensor x0, Tensor noise, Tensor times, Tensor[] c, Tensor stepParams, Tensor labels, Tensor[] targets)
    {
        const string op = "ddpm_objective";
        Objective.CheckInputs(x0, noise, op);
        var backend = x0.Backend;
        var xT = Ops.Add(Ops.Mul(c[0], x0), Ops.Mul(c[1], noise));
        var (output, projections) = model.Forward(xT, times, labels);
        var halves = Ops.Chunk(output, 2, 1); // [eps_hat | variance values]
        var mse = Ops.MsePerSample(halves[0], noise);

        Tensor modelMean, trueMean;
        using (Tape.NoGrad())
        {
            // The VLB sees the mean of the detached eps (DiT's frozen_out): x0_hat from eps, then the posterior mean at
            // x0_hat; the true posterior's mean at the real x0. Same order of operations as the reference.
            var (c1, c2) = (c[2], c[3]);
            var xStart = Ops.Sub(Ops.Mul(c[4], xT), Ops.Mul(c[5], halves[0]));
            modelMean = Ops.Add(Ops.Mul(c1, xStart), Ops.Mul(c2, xT));
            trueMean = Ops.Add(Ops.Mul(c1, x0), Ops.Mul(c2, xT));
        }
        var vb = Ops.Mean(Ops.DiffusionVlbTerm(halves[1], modelMean, trueMean, x0, stepParams));
        var denoise = Ops.Mean(mse);
        var total = Ops.Add(denoise, vb);
        if (Config.ProjCoeff == 0)
            return new LossResult(total, denoise, Tensor.Zeros(backend, x0.DType), halves[0], noise, projections) { Vb = vb };
        var proj = Objective.ProjectionLoss(Config, projections, targets, op);
        total = Ops.Add(total, Ops.Scale(proj, Config.ProjCoeff));
        return new LossResult(total, denoise, proj, halves[0], noise, projections) { Vb = vb };
    }
}
