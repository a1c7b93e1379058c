namespace Repa.Kernels.Cuda;

/// <summary>
/// Optimiser kernels (kernels/optim.cu) on float32 buffers (master weights, gradients, moments, EMA): the squared norm
/// behind the gradient-norm clip (two passes with float64 partials, deterministic), the fused AdamW step and the EMA
/// update, both bitwise the CPU backend's.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    internal const string OptimKernels = "optim.cu";

    /// <summary>Most blocks of the squared norm's first pass (its second pass is one block adding their partials).</summary>
    private const int SumOfSquaresMaxBlocks = 1024;

    public double SumOfSquares(DeviceBuffer x, long n)
    {
        RequireOptimBuffer("sum_of_squares", x, n);
        if (n <= 0) return 0;
        Enter();
        // The grid depends on n alone, so the result does too (not on the device).
        int blocks = (int)Math.Clamp((n + 1023) / 1024, 1, SumOfSquaresMaxBlocks);
        var partial = Pool.Rent(DType.F64, blocks + 1); // the partials, then the total
        try
        {
            Launch(Function(OptimKernels, "sum_of_squares_partial_f32"), new LaunchShape((uint)blocks, 1, BlockSize, 1), Address(x), n, Address(partial));
            Launch(Function(OptimKernels, "sum_of_squares_finish"), new LaunchShape(1, 1, BlockSize, 1), Address(partial), blocks,
                Address(partial, blocks), 0);
            Span<double> total = stackalloc double[1];
            Download(partial, total, blocks);
            return total[0];
        }
        finally
        {
            Pool.Return(partial);
        }
    }

    public void SumOfSquares(DeviceBuffer x, long n, DeviceBuffer total, bool accumulate)
    {
        RequireOptimBuffer("sum_of_squares", x, n);
        if (total.DType != DType.F64 || total.Length < 1) throw new ArgumentException($"sum_of_squares: the total {total} must be float64 with at least one element.");
        Enter();
        if (n <= 0)
        {
            if (!accumulate) Fill(total, 0, 1, 0);
            return;
        }
        // The same grid as the host overload and a finish that adds into the total: bitwise the host's sum of its results.
        int blocks = (int)Math.Clamp((n + 1023) / 1024, 1, SumOfSquaresMaxBlocks);
        var partial = Pool.Rent(DType.F64, blocks + 1);
        try
        {
            Launch(Function(OptimKernels, "sum_of_squares_partial_f32"), new LaunchShape((uint)blocks, 1, BlockSize, 1), Address(x), n, Address(partial));
            Launch(Function(OptimKernels, "sum_of_squares_finish"), new LaunchShape(1, 1, BlockSize, 1), Address(partial), blocks,
                Address(total), accumulate ? 1 : 0);
        }
        finally
        {
            Pool.Return(partial);
        }
    }

    public void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double beta1, double beta2,
        double eps, double maxGradNorm, DeviceBuffer scalars)
    {
        foreach (var b in new[] { param, grad, m, v }) RequireOptimBuffer("adamw", b, n);
        if (scalars.DType != DType.F64 || scalars.Length < 4) throw new ArgumentException($"adamw: the scalars {scalars} must be float64 with at least four elements.");
        if (n == 0) return;
        Enter();
        Launch(Function(OptimKernels, "adamw_step_device_f32"), Grid(n), Address(param), Address(grad), Address(m), Address(v), n,
            Address(scalars), maxGradNorm, (float)beta1, (float)beta2, (float)(1 - beta1), (float)(1 - beta2), (float)eps, 0UL);
    }

    public void AccumulateScalar(DeviceBuffer source, DeviceBuffer accumulator, long index, double divisor)
    {
        if (accumulator.DType != DType.F64) throw new ArgumentException($"accumulate_scalar: the accumulator {accumulator} must be float64.");
        OpChecks.Range(accumulator, index, 1);
        OpChecks.Range(source, 0, 1);
        string suffix = source.DType switch
        {
            DType.F32 => "f32",
            DType.F64 => "f64",
            _ => throw new ArgumentException($"accumulate_scalar: {source} must be float32 or float64."),
        };
        Enter();
        Launch(Function(OptimKernels, $"accumulate_scalar_{suffix}"), new LaunchShape(1, 1, 32, 1), Address(source), Address(accumulator, index), divisor);
    }

    public void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double lr, double beta1,
        double beta2, double eps, double weightDecay, double gradScale, int step)
    {
        foreach (var b in new[] { param, grad, m, v }) RequireOptimBuffer("adamw", b, n);
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), step, "adamw: step is 1-based (the count after this update).");
        if (n == 0) return;
        Enter();
        // The scalars as the CPU backend forms them: in float64, each rounded once to float32.
        Launch(Function(OptimKernels, "adamw_step_f32"), Grid(n), Address(param), Address(grad), Address(m), Address(v), n,
            (float)gradScale, (float)(1 - lr * weightDecay), (float)beta1, (float)beta2, (float)(1 - beta1), (float)(1 - beta2),
            (float)Math.Sqrt(1 - Math.Pow(beta2, step)), (float)eps, (float)-(lr / (1 - Math.Pow(beta1, step))), 0UL);
    }

    public void EmaUpdate(DeviceBuffer ema, DeviceBuffer param, long n, double decay)
    {
        RequireOptimBuffer("ema", ema, n);
        RequireOptimBuffer("ema", param, n);
        if (n == 0) return;
        Enter();
        Launch(Function(OptimKernels, "ema_update_f32"), Grid(n), Address(ema), Address(param), n, (float)decay, (float)(1 - decay));
    }

    private static void RequireOptimBuffer(string op, DeviceBuffer b, long n)
    {
        if (b.DType != DType.F32)
            throw new NotSupportedException($"cuda {op}: {b} must be float32 (master weights, gradients and optimiser state are).");
        if (n < 0 || n > b.Length) throw new ArgumentOutOfRangeException(nameof(n), n, $"{op}: {n} elements do not fit {b}.");
    }
}
