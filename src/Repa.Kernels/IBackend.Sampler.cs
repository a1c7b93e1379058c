namespace Repa.Kernels;

/// <summary>How a <see cref="IBackend.FlowStep"/> moves the state with the step's direction d.</summary>
public enum FlowUpdate
{
    /// <summary>x' = x + dt d (REPA's euler_sampler step, and the SDE's last, deterministic step); d can be saved.</summary>
    Euler,

    /// <summary>x' = x + dt (0.5 d0 + 0.5 d): Heun's correction of an Euler step whose direction d0 was saved.</summary>
    Heun,

    /// <summary>x' = x + d dt + scale (eps sqrt|dt|) with eps standard normal from Philox (euler_maruyama_sampler).</summary>
    EulerMaruyama,
}

/// <summary>
/// The SDE's drift from a velocity: d = v - h s with the score from the velocity s = (r v - x) / variance
/// (REPA's get_score_from_velocity: r = alpha / alpha', variance = sigma^2 - r sigma' sigma) and h = w(t) / 2.
/// </summary>
public readonly record struct ScoreDrift(double Ratio, double Variance, double HalfDiffusion);

/// <summary>
/// The noise of an Euler-Maruyama step: element k draws eps = Philox.Normal(Seed, Stream) at element index Offset + k
/// (bit for bit the words of <see cref="Philox.Normal(ulong, ulong, ulong, Span{double}, int)"/>) and adds
/// Scale (eps SqrtDt); Scale = sqrt(w(t)) and SqrtDt = sqrt(|dt|) are formed by the caller.
/// </summary>
public readonly record struct StepNoise(ulong Seed, ulong Stream, ulong Offset, double Scale, double SqrtDt);

/// <summary>
/// The coefficients of one fused sampler step (<see cref="IBackend.FlowStep"/>): the update, dt, and optionally
/// classifier-free guidance, the velocity-to-drift conversion of the SDE and the Euler-Maruyama noise.
/// </summary>
/// <param name="Update">How the state moves.</param>
/// <param name="Dt">t_next - t_cur (negative: time runs from 1 to 0).</param>
public readonly record struct FlowStepCoefficients(FlowUpdate Update, double Dt)
{
    /// <summary>
    /// Guidance: the model output holds 2n values, the conditional half first; d = u + scale (c - u) of the two halves'
    /// directions (after <see cref="Drift"/>, when set). Null: n values, no guidance.
    /// </summary>
    public double? GuidanceScale { get; init; }

    /// <summary>The SDE's drift from the velocity (computed with the state x), or null for the velocity itself (ODE).</summary>
    public ScoreDrift? Drift { get; init; }

    /// <summary>The noise of <see cref="FlowUpdate.EulerMaruyama"/> (required there, refused elsewhere).</summary>
    public StepNoise? Noise { get; init; }

    /// <summary>
    /// Checks the buffers of a step as every backend does (one-sentence <see cref="ArgumentException"/>s): the state,
    /// the direction and the destination are float64 with at least n elements, the model output holds n (2n guided)
    /// values, Heun has its saved direction, Euler-Maruyama its noise and no direction.
    /// </summary>
    public void Validate(DeviceBuffer x, DeviceBuffer modelOutput, DeviceBuffer? direction, DeviceBuffer destination, long n)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(modelOutput);
        ArgumentNullException.ThrowIfNull(destination);
        if (n < 0) throw new ArgumentOutOfRangeException(nameof(n), n, "flow step: the element count must be >= 0.");
        if (!Enum.IsDefined(Update)) throw new ArgumentException($"flow step: unknown update {Update}.");
        foreach (var (name, buffer) in new[] { ("state x", x), ("destination", destination), ("direction", direction) })
        {
            if (buffer == null) continue;
            if (buffer.DType != DType.F64)
                throw new ArgumentException($"flow step: the {name} {buffer} must be float64 (the samplers keep their state in float64).");
            if (buffer.Length < n) throw new ArgumentException($"flow step: the {name} {buffer} is shorter than the {n} elements of the step.");
        }
        long outputs = GuidanceScale.HasValue ? 2 * n : n;
        if (modelOutput.Length < outputs)
            throw new ArgumentException($"flow step: the model output {modelOutput} holds fewer than {outputs} values ({(GuidanceScale.HasValue ? "the conditional and unconditional halves of " : "")}{n} elements).");
        if (ReferenceEquals(direction, destination) || ReferenceEquals(direction, x))
            throw new ArgumentException("flow step: the direction must be a buffer of its own, not the state or the destination.");
        switch (Update)
        {
            case FlowUpdate.Heun when direction == null:
                throw new ArgumentException("flow step: Heun's correction needs the direction saved by its Euler step.");
            case FlowUpdate.EulerMaruyama when Noise == null:
                throw new ArgumentException("flow step: an Euler-Maruyama step needs its noise (StepNoise).");
            case FlowUpdate.EulerMaruyama when direction != null:
                throw new ArgumentException("flow step: an Euler-Maruyama step saves no direction; pass null.");
            case not FlowUpdate.EulerMaruyama when Noise != null:
                throw new ArgumentException($"flow step: only Euler-Maruyama steps take noise, not {Update}.");
        }
    }
}

/// <summary>
/// The update of REPA's flow samplers (samplers.py) on the float64 state, fused with the classifier-free guidance
/// combine, the SDE's score-from-velocity drift and its Philox noise: one pass over the state per model evaluation.
/// </summary>
public partial interface IBackend
{
    /// <summary>
    /// One sampler step over n elements, in float64, in exactly this order of IEEE operations (no fused multiply-add):
    /// for each half h of <paramref name="modelOutput"/> (one, or cond then uncond under guidance), v = (double)out_h[k],
    /// with a drift v = v - h_w ((r v - x) / variance); d = v, or u + scale (c - u) guided; then
    /// <list type="bullet">
    /// <item>Euler: destination = x + dt d, and <paramref name="direction"/> = d when given (for a later Heun step);</item>
    /// <item>Heun: destination = x + dt (0.5 direction + 0.5 d), x being the state the Euler step started from;</item>
    /// <item>EulerMaruyama: destination = x + d dt + scale (eps sqrtDt), eps from Philox in the step.</item>
    /// </list>
    /// <paramref name="x"/>, <paramref name="direction"/> and <paramref name="destination"/> are float64 (destination
    /// may be x: in place); the model output is the model's dtype (float32 or float64 on the CPU, float32 or bfloat16
    /// on CUDA) and is widened exactly. Checked by <see cref="FlowStepCoefficients.Validate"/>.
    /// </summary>
    void FlowStep(in FlowStepCoefficients step, DeviceBuffer x, DeviceBuffer modelOutput, DeviceBuffer? direction,
        DeviceBuffer destination, long n);
}
