namespace Repa.Kernels;

/// <summary>
/// REPA's losses: the per-sample denoising MSE, the per-token cosine alignment of projected hidden states with encoder
/// features, and the pieces of the NT-Xent alternative (row L2 normalisation and a cross-entropy whose positive is the
/// diagonal), and DiT's variational-bound term of the learned variance. Every loss is per sample ([samples]); the batch
/// mean is left to the caller.
/// </summary>
public partial interface IBackend
{
    /// <summary>loss[s] = (1/inner) sum_i (p[s, i] - t[s, i])^2 for p, t viewed as [samples, inner].</summary>
    void MseForward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer loss, int samples, long inner);

    /// <summary>
    /// dp[s, i] += 2 dLoss[s] (p - t) / inner and dt[s, i] -= the same; a null gradient buffer is skipped.
    /// </summary>
    void MseBackward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer dLoss, DeviceBuffer? dPrediction,
        DeviceBuffer? dTarget, int samples, long inner);

    /// <summary>
    /// loss[s] = -(1/tokens) sum_t &lt;z_hat, h_hat&gt; over rows z[s, t, :], h[s, t, :] of length <paramref name="dim"/>,
    /// with x_hat = x / max(|x|, eps) (torch.nn.functional.normalize). The norms, the dot and the sum are computed in
    /// the buffers' dtype (fp32 for fp32: REPA normalises in fp32) except the per-sample sum over tokens, which is fp64.
    /// </summary>
    void CosineAlignmentForward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer loss, int samples, int tokens, int dim, double eps);

    /// <summary>
    /// One pass per token row: with g = -dLoss[s] / tokens and c = &lt;z_hat, h_hat&gt;,
    /// dz += g (h_hat - c z_hat) / |z| (when |z| &gt; eps; g h_hat / eps otherwise), and symmetrically dh. Null
    /// gradient buffers are skipped.
    /// </summary>
    void CosineAlignmentBackward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer dLoss, DeviceBuffer? dz, DeviceBuffer? dh,
        int samples, int tokens, int dim, double eps);

    /// <summary>y[r, :] = x[r, :] / max(|x[r, :]|, eps) for <paramref name="rows"/> rows of length <paramref name="dim"/>.</summary>
    void RowL2NormalizeForward(DeviceBuffer x, DeviceBuffer y, long rows, int dim, double eps);

    /// <summary>
    /// dx += (dy - y &lt;y, dy&gt;) / |x| per row when |x| &gt; eps, dy / eps otherwise (y is recomputed from x).
    /// </summary>
    void RowL2NormalizeBackward(DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long rows, int dim, double eps);

    /// <summary>
    /// Cross-entropy whose target is the diagonal, for logits S viewed as [samples, n, n] scaled by
    /// <paramref name="scale"/>: lse[s, i] = logsumexp_j(scale S[s, i, j]) (saved for the backward) and
    /// loss[s] = (1/n) sum_i (lse[s, i] - scale S[s, i, i]).
    /// </summary>
    void DiagonalCrossEntropyForward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer loss, int samples, int n, double scale);

    /// <summary>dS[s, i, j] += dLoss[s] scale (exp(scale S[s, i, j] - lse[s, i]) - [i == j]) / n.</summary>
    void DiagonalCrossEntropyBackward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer dLoss, DeviceBuffer dLogits,
        int samples, int n, double scale);

    /// <summary>
    /// DiT's (IDDPM's) variational-bound term per sample, in bits, of the learned-range variance (gaussian_diffusion.py
    /// _vb_terms_bpd with the mean frozen). All element buffers are [samples, inner]; <paramref name="stepParams"/> is
    /// [samples, 4] = (min_log, max_log, true_log_var, decoder) of each sample's timestep. Per element, with v the raw
    /// variance value: log_var = (v + 1)/2 max_log + (1 - (v + 1)/2) min_log; when decoder = 0 the term is
    /// KL(N(true_mean, e^true_log_var) || N(mean, e^log_var)) = 0.5 (-1 + log_var - true_log_var + e^(true_log_var - log_var)
    /// + (true_mean - mean)^2 e^-log_var); when decoder != 0 (t = 0) it is the discretised Gaussian decoder NLL of x0
    /// (8-bit bins of width 2/255 on [-1, 1], open-ended below -0.999 and above 0.999, the tanh approximation of the normal
    /// CDF, probabilities clamped at 1e-12). loss[s] = mean over the sample's elements / ln 2.
    /// </summary>
    void DiffusionVlbForward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer loss, int samples, long inner);

    /// <summary>dVar[s, i] += dLoss[s] d loss[s] / d varValues[s, i]; no other input gets a gradient (the mean is frozen).</summary>
    void DiffusionVlbBackward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer dLoss, DeviceBuffer dVarValues, int samples, long inner);
}
