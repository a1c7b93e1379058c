using System.Numerics;
using System.Runtime.Intrinsics;

namespace Repa.Kernels.Cpu;

/// <summary>Optimiser kernels: sum of squares (global grad norm), fused AdamW and EMA updates.</summary>
public sealed unsafe partial class CpuBackend
{
    private const long OptimGrain = 32768; // elements per thread below which splitting costs more than it saves

    public double SumOfSquares(DeviceBuffer x, long n)
    {
        RequireOptimBuffer("sum_of_squares", x, x.DType, n);
        return x.DType switch
        {
            DType.F32 => SumOfSquares<float>(Host(x).Ptr<float>(), n),
            DType.F64 => SumOfSquares<double>(Host(x).Ptr<double>(), n),
            _ => throw Unsupported(x.DType),
        };
    }

    public void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double lr, double beta1,
        double beta2, double eps, double weightDecay, double gradScale, int step)
    {
        foreach (var b in new[] { param, grad, m, v }) RequireOptimBuffer("adamw", b, param.DType, n);
        OpChecks.AdamWStep(step);
        // Scalars are formed in float64 and rounded once to the compute type, as PyTorch does with Python floats.
        var k = new AdamWScalars(gradScale, 1 - lr * weightDecay, beta1, beta2, eps, -(lr / (1 - Math.Pow(beta1, step))),
            Math.Sqrt(1 - Math.Pow(beta2, step)));
        switch (param.DType)
        {
            case DType.F32: AdamWStep<float>(Host(param).Ptr<float>(), Host(grad).Ptr<float>(), Host(m).Ptr<float>(), Host(v).Ptr<float>(), n, k); break;
            case DType.F64: AdamWStep<double>(Host(param).Ptr<double>(), Host(grad).Ptr<double>(), Host(m).Ptr<double>(), Host(v).Ptr<double>(), n, k); break;
            default: throw Unsupported(param.DType);
        }
    }

    public void SumOfSquares(DeviceBuffer x, long n, DeviceBuffer total, bool accumulate)
    {
        RequireOptimBuffer("sum_of_squares", total, DType.F64, 1);
        double sum = SumOfSquares(x, n);
        double* t = Host(total).Ptr<double>();
        t[0] = accumulate ? t[0] + sum : sum;
    }

    public void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double beta1,
        double beta2, double eps, double maxGradNorm, DeviceBuffer scalars)
    {
        foreach (var b in new[] { param, grad, m, v }) RequireOptimBuffer("adamw", b, param.DType, n);
        RequireOptimBuffer("adamw", scalars, DType.F64, 4);
        double* s = Host(scalars).Ptr<double>();
        var k = new AdamWScalars(ClipScale(s[0], maxGradNorm), s[3], beta1, beta2, eps, s[1], s[2]);
        switch (param.DType)
        {
            case DType.F32: AdamWStep<float>(Host(param).Ptr<float>(), Host(grad).Ptr<float>(), Host(m).Ptr<float>(), Host(v).Ptr<float>(), n, k); break;
            case DType.F64: AdamWStep<double>(Host(param).Ptr<double>(), Host(grad).Ptr<double>(), Host(m).Ptr<double>(), Host(v).Ptr<double>(), n, k); break;
            default: throw Unsupported(param.DType);
        }
    }

    /// <summary>clip_grad_norm_'s coefficient min(max / (sqrt(sumOfSquares) + 1e-6), 1), NaN for NaN (as torch.clamp and
    /// Math.Min), 1 when max &lt;= 0 (no clipping): what the device AdamW kernels compute from the device sum.</summary>
    internal static double ClipScale(double sumOfSquares, double maxGradNorm) =>
        maxGradNorm > 0 ? Math.Min(maxGradNorm / (Math.Sqrt(sumOfSquares) + 1e-6), 1.0) : 1.0;

    public void AccumulateScalar(DeviceBuffer source, DeviceBuffer accumulator, long index, double divisor)
    {
        RequireOptimBuffer("accumulate_scalar", accumulator, DType.F64, index + 1);
        if (index < 0) throw new ArgumentOutOfRangeException(nameof(index), index, "accumulate_scalar: index must be >= 0.");
        double value = source.DType switch
        {
            DType.F32 when source.Length >= 1 => Host(source).Ptr<float>()[0],
            DType.F64 when source.Length >= 1 => Host(source).Ptr<double>()[0],
            _ => throw new ArgumentException($"accumulate_scalar: {source} must be a non-empty float32 or float64 buffer."),
        };
        Host(accumulator).Ptr<double>()[index] += value / divisor;
    }

    public void EmaUpdate(DeviceBuffer ema, DeviceBuffer param, long n, double decay)
    {
        RequireOptimBuffer("ema", ema, ema.DType, n);
        RequireOptimBuffer("ema", param, ema.DType, n);
        switch (ema.DType)
        {
            case DType.F32: EmaUpdate<float>(Host(ema).Ptr<float>(), Host(param).Ptr<float>(), n, decay); break;
            case DType.F64: EmaUpdate<double>(Host(ema).Ptr<double>(), Host(param).Ptr<double>(), n, decay); break;
            default: throw Unsupported(ema.DType);
        }
    }

    private static void RequireOptimBuffer(string op, DeviceBuffer b, DType dtype, long n) => OpChecks.OptimBuffer(op, b, dtype, n);

    // ---- sum of squares ----

    // The partition depends only on n and Threads and the partials are added in chunk order, so the result is
    // reproducible run to run (it may differ in the last bits between thread counts).
    private double SumOfSquares<T>(T* x, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (n <= 0) return 0;
        int chunks = (int)Math.Clamp(n / OptimGrain, 1, Threads);
        if (chunks == 1) return SumOfSquaresSerial(x, n);
        var partial = new double[chunks];
        CpuParallel.For(chunks, 1, Threads, (s, e) =>
        {
            for (long c = s; c < e; c++)
            {
                long a = n * c / chunks, b = n * (c + 1) / chunks;
                partial[c] = SumOfSquaresSerial(x + a, b - a);
            }
        });
        double total = 0;
        foreach (double p in partial) total += p;
        return total;
    }

    // float64 accumulation in four independent vector accumulators (latency hiding); fp32 inputs are widened first.
    private static double SumOfSquaresSerial<T>(T* x, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        double total = 0;
        if (typeof(T) == typeof(float) && Vector512.IsHardwareAccelerated)
        {
            float* f = (float*)x;
            Vector512<double> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 32; i += 32)
            {
                var (l0, h0) = Vector512.Widen(Vector512.Load(f + i));
                var (l1, h1) = Vector512.Widen(Vector512.Load(f + i + 16));
                a0 = Vector512.FusedMultiplyAdd(l0, l0, a0);
                a1 = Vector512.FusedMultiplyAdd(h0, h0, a1);
                a2 = Vector512.FusedMultiplyAdd(l1, l1, a2);
                a3 = Vector512.FusedMultiplyAdd(h1, h1, a3);
            }
            total = Vector512.Sum((a0 + a1) + (a2 + a3));
        }
        else if (typeof(T) == typeof(float) && Vector256.IsHardwareAccelerated)
        {
            float* f = (float*)x;
            Vector256<double> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 16; i += 16)
            {
                var (l0, h0) = Vector256.Widen(Vector256.Load(f + i));
                var (l1, h1) = Vector256.Widen(Vector256.Load(f + i + 8));
                a0 = Vector256.FusedMultiplyAdd(l0, l0, a0);
                a1 = Vector256.FusedMultiplyAdd(h0, h0, a1);
                a2 = Vector256.FusedMultiplyAdd(l1, l1, a2);
                a3 = Vector256.FusedMultiplyAdd(h1, h1, a3);
            }
            total = Vector256.Sum((a0 + a1) + (a2 + a3));
        }
        else if (typeof(T) == typeof(double) && Vector512.IsHardwareAccelerated)
        {
            double* d = (double*)x;
            Vector512<double> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 32; i += 32)
            {
                var v0 = Vector512.Load(d + i);
                var v1 = Vector512.Load(d + i + 8);
                var v2 = Vector512.Load(d + i + 16);
                var v3 = Vector512.Load(d + i + 24);
                a0 = Vector512.FusedMultiplyAdd(v0, v0, a0);
                a1 = Vector512.FusedMultiplyAdd(v1, v1, a1);
                a2 = Vector512.FusedMultiplyAdd(v2, v2, a2);
                a3 = Vector512.FusedMultiplyAdd(v3, v3, a3);
            }
            total = Vector512.Sum((a0 + a1) + (a2 + a3));
        }
        else if (typeof(T) == typeof(double) && Vector256.IsHardwareAccelerated)
        {
            double* d = (double*)x;
            Vector256<double> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 16; i += 16)
            {
                var v0 = Vector256.Load(d + i);
                var v1 = Vector256.Load(d + i + 4);
                var v2 = Vector256.Load(d + i + 8);
                var v3 = Vector256.Load(d + i + 12);
                a0 = Vector256.FusedMultiplyAdd(v0, v0, a0);
                a1 = Vector256.FusedMultiplyAdd(v1, v1, a1);
                a2 = Vector256.FusedMultiplyAdd(v2, v2, a2);
                a3 = Vector256.FusedMultiplyAdd(v3, v3, a3);
            }
            total = Vector256.Sum((a0 + a1) + (a2 + a3));
        }
        for (; i < n; i++)
        {
            double e = double.CreateChecked(x[i]);
            total += e * e;
        }
        return total;
    }

    // ---- AdamW ----

    // Formed in float64 (from lr and the step by the host-scalar overload, or read from device memory by the other) and
    // rounded once to the compute type in AdamWStep<T>.
    private readonly record struct AdamWScalars(double GradScale, double Decay, double Beta1, double Beta2, double Eps,
        double NegStepSize, double SqrtBias2);

    // Element order follows torch.optim.AdamW (single-tensor path): p *= 1 - lr wd; m, v moments;
    // denom = sqrt(v) / sqrt(bc2) + eps; p += (-lr/bc1) * m / denom. Plain vector ops (no FMA contraction) keep the
    // SIMD body and the scalar tail bit-identical.
    private void AdamWStep<T>(T* p, T* g, T* m, T* v, long n, AdamWScalars k) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T gs = T.CreateChecked(k.GradScale), decay = T.CreateChecked(k.Decay);
        T b1 = T.CreateChecked(k.Beta1), b2 = T.CreateChecked(k.Beta2);
        T c1 = T.CreateChecked(1 - k.Beta1), c2 = T.CreateChecked(1 - k.Beta2);
        T bc2 = T.CreateChecked(k.SqrtBias2), eps = T.CreateChecked(k.Eps), step = T.CreateChecked(k.NegStepSize);
        CpuParallel.For(n, OptimGrain, Threads, (start, end) =>
        {
            long i = start;
            if (Vector512.IsHardwareAccelerated)
            {
                int w = Vector512<T>.Count;
                var vgs = Vector512.Create(gs); var vdecay = Vector512.Create(decay);
                var vb1 = Vector512.Create(b1); var vb2 = Vector512.Create(b2);
                var vc1 = Vector512.Create(c1); var vc2 = Vector512.Create(c2);
                var vbc2 = Vector512.Create(bc2); var veps = Vector512.Create(eps); var vstep = Vector512.Create(step);
                for (; i <= end - w; i += w)
                {
                    var gi = vgs * Vector512.Load(g + i);
                    var pi = Vector512.Load(p + i) * vdecay;
                    var mi = vb1 * Vector512.Load(m + i) + vc1 * gi;
                    var vi = vb2 * Vector512.Load(v + i) + vc2 * gi * gi;
                    var denom = Vector512.Sqrt(vi) / vbc2 + veps;
                    (pi + vstep * mi / denom).Store(p + i);
                    mi.Store(m + i);
                    vi.Store(v + i);
                }
            }
            else if (Vector256.IsHardwareAccelerated)
            {
                int w = Vector256<T>.Count;
                var vgs = Vector256.Create(gs); var vdecay = Vector256.Create(decay);
                var vb1 = Vector256.Create(b1); var vb2 = Vector256.Create(b2);
                var vc1 = Vector256.Create(c1); var vc2 = Vector256.Create(c2);
                var vbc2 = Vector256.Create(bc2); var veps = Vector256.Create(eps); var vstep = Vector256.Create(step);
                for (; i <= end - w; i += w)
                {
                    var gi = vgs * Vector256.Load(g + i);
                    var pi = Vector256.Load(p + i) * vdecay;
                    var mi = vb1 * Vector256.Load(m + i) + vc1 * gi;
                    var vi = vb2 * Vector256.Load(v + i) + vc2 * gi * gi;
                    var denom = Vector256.Sqrt(vi) / vbc2 + veps;
                    (pi + vstep * mi / denom).Store(p + i);
                    mi.Store(m + i);
                    vi.Store(v + i);
                }
            }
            for (; i < end; i++)
            {
                T gi = gs * g[i];
                T pi = p[i] * decay;
                T mi = b1 * m[i] + c1 * gi;
                T vi = b2 * v[i] + c2 * gi * gi;
                T denom = T.Sqrt(vi) / bc2 + eps;
                p[i] = pi + step * mi / denom;
                m[i] = mi;
                v[i] = vi;
            }
        });
    }

    // ---- EMA ----

    // e = (e * d) + ((1 - d) * p), the order of PyTorch's ema.mul_(d).add_(p, alpha=1 - d).
    private void EmaUpdate<T>(T* e, T* p, long n, double decay) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T d = T.CreateChecked(decay), c = T.CreateChecked(1 - decay);
        CpuParallel.For(n, OptimGrain, Threads, (start, end) =>
        {
            long i = start;
            if (Vector512.IsHardwareAccelerated)
            {
                int w = Vector512<T>.Count;
                var vd = Vector512.Create(d); var vc = Vector512.Create(c);
                for (; i <= end - w; i += w)
                    (Vector512.Load(e + i) * vd + vc * Vector512.Load(p + i)).Store(e + i);
            }
            else if (Vector256.IsHardwareAccelerated)
            {
                int w = Vector256<T>.Count;
                var vd = Vector256.Create(d); var vc = Vector256.Create(c);
                for (; i <= end - w; i += w)
                    (Vector256.Load(e + i) * vd + vc * Vector256.Load(p + i)).Store(e + i);
            }
            for (; i < end; i++) e[i] = e[i] * d + c * p[i];
        });
    }
}
