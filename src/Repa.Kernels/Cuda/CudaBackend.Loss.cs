namespace Repa.Kernels.Cuda;

/// <summary>
/// Per-sample MSE, the fused cosine alignment loss, row L2 normalisation, NT-Xent's diagonal cross-entropy and DiT's
/// variational-bound term (kernels/loss.cu). Inputs and their gradients are float32 or bfloat16; per-sample losses, their
/// incoming gradients, the log-sum-exps and the VLB step parameters are float32 either way. Per-sample sums run in
/// float64 in a fixed order (deterministic).
/// </summary>
public sealed unsafe partial class CudaBackend
{
    internal const string LossKernels = "loss.cu";

    /// <summary>Threads per block of the cosine loss's forward: one block per sample, a warp per token.</summary>
    private const int CosineForwardBlock = 512;

    public void MseForward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer loss, int samples, long inner)
    {
        string suffix = ComputeSuffix("mse", prediction, target);
        LossCheckSizes("mse", samples, inner);
        OpChecks.Range(prediction, 0, samples * inner);
        OpChecks.Range(target, 0, samples * inner);
        RequireF32("mse", loss, samples);
        if (samples == 0) return;
        Enter();
        Launch(Function(LossKernels, $"mse_forward_{suffix}"), BlockPerSample(samples, BlockSize),
            Address(prediction), Address(target), Address(loss), samples, inner);
    }

    public void MseBackward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer dLoss, DeviceBuffer? dPrediction,
        DeviceBuffer? dTarget, int samples, long inner)
    {
        if (dPrediction == null && dTarget == null) return;
        string suffix = ComputeSuffix("mse backward", Present(prediction, target, dPrediction, dTarget));
        LossCheckSizes("mse backward", samples, inner);
        foreach (var b in Present(prediction, target, dPrediction, dTarget)) OpChecks.Range(b, 0, samples * inner);
        RequireF32("mse backward", dLoss, samples);
        if (samples == 0 || inner == 0) return;
        Enter();
        Launch(Function(LossKernels, $"mse_backward_{suffix}"), PerSampleGrid(samples, inner),
            Address(prediction), Address(target), Address(dLoss), AddressOrNull(dPrediction), AddressOrNull(dTarget), samples, inner);
    }

    public void CosineAlignmentForward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer loss, int samples, int tokens, int dim, double eps)
    {
        string suffix = ComputeSuffix("cosine_alignment", z, h);
        long n = CosineCheckSizes("cosine_alignment", samples, tokens, dim);
        OpChecks.Range(z, 0, n);
        OpChecks.Range(h, 0, n);
        RequireF32("cosine_alignment", loss, samples);
        if (samples == 0) return;
        Enter();
        Launch(Function(LossKernels, $"cosine_alignment_forward_{suffix}"), BlockPerSample(samples, CosineForwardBlock),
            Address(z), Address(h), Address(loss), samples, tokens, dim, (float)eps);
    }

    public void CosineAlignmentBackward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer dLoss, DeviceBuffer? dz, DeviceBuffer? dh,
        int samples, int tokens, int dim, double eps)
    {
        if (dz == null && dh == null) return;
        string suffix = ComputeSuffix("cosine_alignment backward", Present(z, h, dz, dh));
        long n = CosineCheckSizes("cosine_alignment backward", samples, tokens, dim);
        foreach (var b in Present(z, h, dz, dh)) OpChecks.Range(b, 0, n);
        RequireF32("cosine_alignment backward", dLoss, samples);
        if (samples == 0 || tokens == 0) return;
        Enter();
        Launch(Function(LossKernels, $"cosine_alignment_backward_{suffix}"), WarpPerRow((long)samples * tokens),
            Address(z), Address(h), Address(dLoss), AddressOrNull(dz), AddressOrNull(dh), samples, tokens, dim, (float)eps);
    }

    public void RowL2NormalizeForward(DeviceBuffer x, DeviceBuffer y, long rows, int dim, double eps)
    {
        string suffix = ComputeSuffix("row_l2_normalize", x, y);
        LossCheckSizes("row_l2_normalize", rows, dim);
        OpChecks.Range(x, 0, rows * dim);
        OpChecks.Range(y, 0, rows * dim);
        if (rows == 0 || dim == 0) return;
        Enter();
        Launch(Function(LossKernels, $"row_l2_normalize_forward_{suffix}"), WarpPerRow(rows), Address(x), Address(y), rows, dim, (float)eps);
    }

    public void RowL2NormalizeBackward(DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long rows, int dim, double eps)
    {
        string suffix = ComputeSuffix("row_l2_normalize backward", x, dy, dx);
        LossCheckSizes("row_l2_normalize backward", rows, dim);
        foreach (var b in new[] { x, dy, dx }) OpChecks.Range(b, 0, rows * dim);
        if (rows == 0 || dim == 0) return;
        Enter();
        Launch(Function(LossKernels, $"row_l2_normalize_backward_{suffix}"), WarpPerRow(rows),
            Address(x), Address(dy), Address(dx), rows, dim, (float)eps);
    }

    public void DiagonalCrossEntropyForward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer loss, int samples, int n, double scale)
    {
        string suffix = ComputeSuffix("diagonal_cross_entropy", logits);
        LossCheckSizes("diagonal_cross_entropy", samples, n);
        OpChecks.Range(logits, 0, (long)samples * n * n);
        RequireF32("diagonal_cross_entropy", lse, (long)samples * n);
        RequireF32("diagonal_cross_entropy", loss, samples);
        if (samples == 0) return;
        Enter();
        Launch(Function(LossKernels, $"diagonal_cross_entropy_forward_{suffix}"), BlockPerSample(samples, BlockSize),
            Address(logits), Address(lse), Address(loss), samples, n, (float)scale);
    }

    public void DiagonalCrossEntropyBackward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer dLoss, DeviceBuffer dLogits, int samples, int n, double scale)
    {
        string suffix = ComputeSuffix("diagonal_cross_entropy backward", logits, dLogits);
        LossCheckSizes("diagonal_cross_entropy backward", samples, n);
        OpChecks.Range(logits, 0, (long)samples * n * n);
        OpChecks.Range(dLogits, 0, (long)samples * n * n);
        RequireF32("diagonal_cross_entropy backward", lse, (long)samples * n);
        RequireF32("diagonal_cross_entropy backward", dLoss, samples);
        if (samples == 0 || n == 0) return;
        Enter();
        // One block per row of a sample's n x n logits (grid-stride), the block no wider than the row.
        long rows = (long)samples * n;
        var shape = new LaunchShape((uint)Math.Min(rows, 65535), 1, (uint)Math.Clamp((n + 31) / 32 * 32, 32, BlockSize), 1);
        Launch(Function(LossKernels, $"diagonal_cross_entropy_backward_{suffix}"), shape,
            Address(logits), Address(lse), Address(dLoss), Address(dLogits), samples, n, (float)scale);
    }

    public void DiffusionVlbForward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer loss, int samples, long inner)
    {
        string suffix = ComputeSuffix("diffusion_vlb", varValues, mean, trueMean, x0);
        LossCheckSizes("diffusion_vlb", samples, inner);
        foreach (var b in new[] { varValues, mean, trueMean, x0 }) OpChecks.Range(b, 0, samples * inner);
        RequireF32("diffusion_vlb", stepParams, 4L * samples);
        RequireF32("diffusion_vlb", loss, samples);
        if (samples == 0) return;
        Enter();
        Launch(Function(LossKernels, $"diffusion_vlb_forward_{suffix}"), BlockPerSample(samples, BlockSize),
            Address(varValues), Address(mean), Address(trueMean), Address(x0), Address(stepParams), Address(loss), samples, inner);
    }

    public void DiffusionVlbBackward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer dLoss, DeviceBuffer dVarValues, int samples, long inner)
    {
        string suffix = ComputeSuffix("diffusion_vlb backward", varValues, mean, trueMean, x0, dVarValues);
        LossCheckSizes("diffusion_vlb backward", samples, inner);
        foreach (var b in new[] { varValues, mean, trueMean, x0, dVarValues }) OpChecks.Range(b, 0, samples * inner);
        RequireF32("diffusion_vlb backward", stepParams, 4L * samples);
        RequireF32("diffusion_vlb backward", dLoss, samples);
        if (samples == 0 || inner == 0) return;
        Enter();
        Launch(Function(LossKernels, $"diffusion_vlb_backward_{suffix}"), PerSampleGrid(samples, inner),
            Address(varValues), Address(mean), Address(trueMean), Address(x0), Address(stepParams), Address(dLoss), Address(dVarValues), samples, inner);
    }

    /// <summary>One block per sample (grid-stride over samples).</summary>
    private static LaunchShape BlockPerSample(long samples, int threads) => new((uint)Math.Min(samples, 65535), 1, (uint)threads, 1);

    /// <summary>grid (element blocks, samples): each sample's elements in 256-thread blocks, samples on grid.y (both stride).</summary>
    private LaunchShape PerSampleGrid(int samples, long inner)
    {
        uint y = (uint)Math.Min(samples, 65535);
        long x = Math.Clamp((inner + BlockSize - 1) / BlockSize, 1, Math.Max(1, (long)MultiprocessorCount * 32 / y));
        return new LaunchShape((uint)x, y, BlockSize, 1);
    }

    private static void LossCheckSizes(string op, long outer, long inner)
    {
        if (outer < 0 || inner < 0)
            throw new ArgumentOutOfRangeException(nameof(outer), $"cuda {op}: sizes {outer} and {inner} must be >= 0.");
    }

    private static long CosineCheckSizes(string op, int samples, int tokens, int dim)
    {
        if (samples < 0 || tokens < 0 || dim < 0)
            throw new ArgumentOutOfRangeException(nameof(samples), $"cuda {op}: samples {samples}, tokens {tokens} and dim {dim} must be >= 0.");
        return (long)samples * tokens * dim;
    }
}
