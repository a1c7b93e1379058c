using System.Numerics;

namespace Repa.Kernels.Cpu;

/// <summary>
/// The sampler step (IBackend.Sampler.cs), the reference of every backend: plain float64 scalar code in the order of
/// operations the interface states (the JIT never contracts a * b + c into a fused multiply-add), so FlowSampler's
/// results are those of REPA's float64 loops written out by hand. The noise is <see cref="Philox.Normal(ulong, ulong, ulong, Span{double}, int)"/>.
/// </summary>
public sealed unsafe partial class CpuBackend
{
    /// <summary>Elements per noise batch (a stack buffer of eps) and per thread at least.</summary>
    private const int SamplerChunk = 2048;

    public void FlowStep(in FlowStepCoefficients step, DeviceBuffer x, DeviceBuffer modelOutput, DeviceBuffer? direction,
        DeviceBuffer destination, long n)
    {
        step.Validate(x, modelOutput, direction, destination, n);
        var k = step;
        double* px = Host(x).Ptr<double>(), pd = direction == null ? null : Host(direction).Ptr<double>();
        double* py = Host(destination).Ptr<double>();
        switch (modelOutput.DType)
        {
            case DType.F32: FlowStep(k, px, Host(modelOutput).Ptr<float>(), pd, py, n); break;
            case DType.F64: FlowStep(k, px, Host(modelOutput).Ptr<double>(), pd, py, n); break;
            default: throw new ArgumentException($"flow step: the model output {modelOutput} must be float32 or float64 on the cpu.");
        }
    }

    private void FlowStep<T>(FlowStepCoefficients k, double* x, T* output, double* direction, double* y, long n)
        where T : unmanaged, INumberBase<T>
    {
        nint ax = (nint)x, ao = (nint)output, ad = (nint)direction, ay = (nint)y; // pointers cannot be captured
        CpuParallel.For(n, SamplerChunk, Threads, (start, end) =>
        {
            Span<double> eps = stackalloc double[SamplerChunk];
            for (long first = start; first < end; first += SamplerChunk)
            {
                int count = (int)Math.Min(SamplerChunk, end - first);
                if (k.Noise is { } noise)
                    Philox.Normal(noise.Seed, noise.Stream, noise.Offset + (ulong)first, eps[..count], threads: 1);
                for (int j = 0; j < count; j++)
                    FlowStepElement(k, (double*)ax, (T*)ao, (double*)ad, (double*)ay, n, first + j, eps[j]);
            }
        });
    }

    // One element in the interface's order. Each product and sum is its own statement-level IEEE operation.
    private static void FlowStepElement<T>(in FlowStepCoefficients k, double* x, T* output, double* direction, double* y,
        long n, long i, double eps) where T : unmanaged, INumberBase<T>
    {
        double xi = x[i];
        double d = Direction(k, double.CreateTruncating(output[i]), xi);
        if (k.GuidanceScale is { } scale)
        {
            double u = Direction(k, double.CreateTruncating(output[n + i]), xi);
            d = u + scale * (d - u);
        }
        switch (k.Update)
        {
            case FlowUpdate.Euler:
                if (direction != null) direction[i] = d;
                y[i] = xi + k.Dt * d;
                break;
            case FlowUpdate.Heun:
                y[i] = xi + k.Dt * (0.5 * direction[i] + 0.5 * d);
                break;
            default:
                var noise = k.Noise!.Value;
                y[i] = xi + d * k.Dt + noise.Scale * (eps * noise.SqrtDt);
                break;
        }
    }

    /// <summary>The velocity itself, or the SDE's drift v - h (r v - x) / variance.</summary>
    private static double Direction(in FlowStepCoefficients k, double v, double x)
    {
        if (k.Drift is not { } drift) return v;
        double score = (drift.Ratio * v - x) / drift.Variance;
        return v - drift.HalfDiffusion * score;
    }
}
