namespace Repa.Kernels;

/// <summary>
/// Optimiser kernels (PyTorch semantics): the global gradient norm's sum of squares, a fused AdamW update and the EMA
/// of parameters. The parameter, gradient and state buffers of one call share a dtype.
/// </summary>
public partial interface IBackend
{
    /// <summary>
    /// sum_i x[i]^2 over n elements, accumulated in float64. Deterministic for a given backend configuration (the
    /// partition of the work depends only on n and the thread count, and partials are combined in a fixed order).
    /// </summary>
    double SumOfSquares(DeviceBuffer x, long n);

    /// <summary>
    /// One torch.optim.AdamW step (bias-corrected, decoupled weight decay) over n elements, in one pass:
    /// g = gradScale * grad; param *= 1 - lr*weightDecay; m = beta1 m + (1-beta1) g; v = beta2 v + (1-beta2) g^2;
    /// param -= lr / (1-beta1^step) * m / (sqrt(v) / sqrt(1-beta2^step) + eps). <paramref name="step"/> is 1-based
    /// (the count after this update). gradScale is how the global norm clip is applied without touching grad.
    /// </summary>
    void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double lr, double beta1,
        double beta2, double eps, double weightDecay, double gradScale, int step);

    /// <summary>
    /// total[0] = sum_i x[i]^2 over n elements (float64 <paramref name="total"/>), or total[0] += it with
    /// <paramref name="accumulate"/>: the squared global gradient norm summed on the device, tensor after tensor, in the
    /// order and float64 arithmetic of adding the host overload's results.
    /// </summary>
    void SumOfSquares(DeviceBuffer x, long n, DeviceBuffer total, bool accumulate);

    /// <summary>
    /// <see cref="AdamWStep(DeviceBuffer, DeviceBuffer, DeviceBuffer, DeviceBuffer, long, double, double, double, double, double, double, int)"/>
    /// with the scalars that change from step to step read from device memory, so that a captured step (a CUDA graph)
    /// can replay it: <paramref name="scalars"/> is float64 {sum of squares of every gradient (see the device
    /// SumOfSquares), -lr / (1 - beta1^step), sqrt(1 - beta2^step), 1 - lr weightDecay}. The gradient scale is
    /// clip_grad_norm_'s min(maxGradNorm / (sqrt(sum) + 1e-6), 1) (NaN stays NaN), or 1 when maxGradNorm &lt;= 0.
    /// Bitwise the host-scalar overload given the same values.
    /// </summary>
    void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double beta1, double beta2,
        double eps, double maxGradNorm, DeviceBuffer scalars);

    /// <summary>accumulator[index] += (double)source[0] / divisor (source float32 or float64, accumulator float64): a
    /// figure such as a micro-batch's loss added up on the device, to be read once after the step.</summary>
    void AccumulateScalar(DeviceBuffer source, DeviceBuffer accumulator, long index, double divisor);

    /// <summary>ema = decay * ema + (1 - decay) * param over n elements.</summary>
    void EmaUpdate(DeviceBuffer ema, DeviceBuffer param, long n, double decay);
}
