using ILGPU;

namespace Repa.Kernels.Ilgpu;

/// <summary>
/// Optimiser kernels: the sum of squares in float64 over a fixed partition (one partial per thread of a fixed grid,
/// added on the host in thread order: deterministic), and AdamW and the EMA as one fused pass each.
/// </summary>
public sealed partial class IlgpuBackend
{
    public double SumOfSquares(DeviceBuffer x, long n)
    {
        OpChecks.OptimBuffer("sum_of_squares", x, x.DType, n);
        if (x.DType != DType.F32) throw Unsupported(x.DType);
        if (n <= 0) return 0;
        var config = Stride(n);
        using var partials = Scratch<double>((long)config.GridDim.X * config.GroupDim.X);
        Run(config, IlgpuKernels.SumOfSquares, F(x), partials.View.AsContiguous(), n);
        double total = 0;
        foreach (double p in ReadPartials(partials)) total += p;
        return total;
    }

    public void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double lr, double beta1,
        double beta2, double eps, double weightDecay, double gradScale, int step)
    {
        foreach (var b in new[] { param, grad, m, v }) OpChecks.OptimBuffer("adamw", b, param.DType, n);
        OpChecks.AdamWStep(step);
        if (n <= 0) return;
        // Scalars in float64, rounded once to float32 (as PyTorch does with Python floats, and the CPU backend).
        var k = new AdamWScalars((float)gradScale, (float)(1 - lr * weightDecay), (float)beta1, (float)beta2, (float)(1 - beta1),
            (float)(1 - beta2), (float)Math.Sqrt(1 - Math.Pow(beta2, step)), (float)eps, (float)-(lr / (1 - Math.Pow(beta1, step))), n);
        Run(Stride(n), IlgpuKernels.AdamW, F(param), F(grad), F(m), F(v), k);
    }

    // The device-scalar members of a captured step. ILGPU has no graphs (Capture reruns the body), so these may read their
    // float64 scalars back to the host: the same values the CPU backend computes, formed in the same float64 order.

    public void SumOfSquares(DeviceBuffer x, long n, DeviceBuffer total, bool accumulate)
    {
        OpChecks.OptimBuffer("sum_of_squares", total, DType.F64, 1);
        double sum = SumOfSquares(x, n);
        Span<double> t = stackalloc double[1];
        if (accumulate) Download<double>(total, t);
        t[0] = accumulate ? t[0] + sum : sum;
        Upload<double>(t, total);
    }

    public void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double beta1,
        double beta2, double eps, double maxGradNorm, DeviceBuffer scalars)
    {
        foreach (var b in new[] { param, grad, m, v }) OpChecks.OptimBuffer("adamw", b, param.DType, n);
        OpChecks.OptimBuffer("adamw", scalars, DType.F64, 4);
        if (param.DType != DType.F32) throw Unsupported(param.DType);
        if (n <= 0) return;
        Span<double> s = stackalloc double[4];
        Download<double>(scalars, s);
        var k = new AdamWScalars((float)Cpu.CpuBackend.ClipScale(s[0], maxGradNorm), (float)s[3], (float)beta1, (float)beta2, (float)(1 - beta1),
            (float)(1 - beta2), (float)s[2], (float)eps, (float)s[1], n);
        Run(Stride(n), IlgpuKernels.AdamW, F(param), F(grad), F(m), F(v), k);
    }

    public void AccumulateScalar(DeviceBuffer source, DeviceBuffer accumulator, long index, double divisor)
    {
        OpChecks.OptimBuffer("accumulate_scalar", accumulator, DType.F64, index + 1);
        if (index < 0) throw new ArgumentOutOfRangeException(nameof(index), index, "accumulate_scalar: index must be >= 0.");
        double value;
        switch (source.DType)
        {
            case DType.F32 when source.Length >= 1:
                Span<float> f = stackalloc float[1];
                Download<float>(source, f);
                value = f[0];
                break;
            case DType.F64 when source.Length >= 1:
                Span<double> d = stackalloc double[1];
                Download<double>(source, d);
                value = d[0];
                break;
            default:
                throw new ArgumentException($"accumulate_scalar: {source} must be a non-empty float32 or float64 buffer.");
        }
        Span<double> a = stackalloc double[1];
        Download<double>(accumulator, a, index);
        a[0] += value / divisor;
        Upload<double>(a, accumulator, index);
    }

    public void EmaUpdate(DeviceBuffer ema, DeviceBuffer param, long n, double decay)
    {
        OpChecks.OptimBuffer("ema", ema, ema.DType, n);
        OpChecks.OptimBuffer("ema", param, ema.DType, n);
        if (n <= 0) return;
        Run(Stride(n), IlgpuKernels.Ema, F(ema), F(param), n, (float)decay, (float)(1 - decay));
    }
}

internal readonly record struct AdamWScalars(float GradScale, float Decay, float Beta1, float Beta2, float C1, float C2,
    float SqrtBias2, float Eps, float NegStepSize, long Count);

internal static partial class IlgpuKernels
{
    public static void SumOfSquares(ArrayView<float> x, ArrayView<double> partials, long n)
    {
        double acc = 0;
        for (long i = First; i < n; i += Step)
        {
            double v = x[i];
            acc += v * v;
        }
        partials[Grid.GlobalIndex.X] = acc;
    }

    /// <summary>torch.optim.AdamW's element order: p *= 1 - lr wd; moments; p += (-lr/bc1) m / (sqrt(v)/sqrt(bc2) + eps).</summary>
    public static void AdamW(ArrayView<float> p, ArrayView<float> g, ArrayView<float> m, ArrayView<float> v, AdamWScalars k)
    {
        for (long i = First; i < k.Count; i += Step)
        {
            float gi = k.GradScale * g[i];
            float pi = p[i] * k.Decay;
            float mi = k.Beta1 * m[i] + k.C1 * gi;
            float vi = k.Beta2 * v[i] + k.C2 * gi * gi;
            float denom = MathF.Sqrt(vi) / k.SqrtBias2 + k.Eps;
            p[i] = pi + k.NegStepSize * mi / denom;
            m[i] = mi;
            v[i] = vi;
        }
    }

    /// <summary>e = e d + (1 - d) p, PyTorch's ema.mul_(d).add_(p, alpha=1 - d).</summary>
    public static void Ema(ArrayView<float> e, ArrayView<float> p, long n, float d, float c)
    {
        for (long i = First; i < n; i += Step) e[i] = e[i] * d + c * p[i];
    }
}
