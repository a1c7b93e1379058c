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

    /// <summary>ema = decay * ema + (1 - decay) * param over n elements.</summary>
    void EmaUpdate(DeviceBuffer ema, DeviceBuffer param, long n, double decay);
}
