using ILGPU;
using ILGPU.Runtime;

namespace Repa.Kernels.Ilgpu;

/// <summary>
/// The sampler step (IBackend.Sampler.cs) as one grid-stride kernel on float64 model outputs, in the interface's order of
/// float64 operations (the CPU backend's reference, statement for statement). The Euler-Maruyama noise is drawn on the
/// host with <see cref="Philox.Normal(ulong, ulong, ulong, Span{double}, int)"/> and uploaded for the step: Philox's
/// 64-bit products and the float64 Box-Muller would run in the kernel, but a host draw is bit for bit the reference's
/// and costs one upload of n doubles per step, small beside a model evaluation.
/// </summary>
public sealed partial class IlgpuBackend
{
    public void FlowStep(in FlowStepCoefficients step, DeviceBuffer x, DeviceBuffer modelOutput, DeviceBuffer? direction,
        DeviceBuffer destination, long n)
    {
        step.Validate(x, modelOutput, direction, destination, n);
        if (n == 0) return;
        var args = new FlowStepArgs(n, (int)step.Update, step.Dt, step.GuidanceScale.HasValue ? 1 : 0, step.GuidanceScale ?? 0,
            step.Drift.HasValue ? 1 : 0, step.Drift?.Ratio ?? 0, step.Drift?.Variance ?? 1, step.Drift?.HalfDiffusion ?? 0,
            direction != null ? 1 : 0, step.Noise?.Scale ?? 0, step.Noise?.SqrtDt ?? 0);
        using var eps = Scratch<double>(step.Noise.HasValue ? n : 1);
        if (step.Noise is { } noise)
        {
            var values = new double[n];
            Philox.Normal(noise.Seed, noise.Stream, noise.Offset, values);
            eps.View.CopyFromCPU(values);
        }
        var xs = D(x);
        var ds = direction != null ? D(direction) : xs; // unread without a direction (HasDirection 0)
        var ys = D(destination);
        long outputs = step.GuidanceScale.HasValue ? 2 * n : n;
        // One kernel on float64 outputs: a float32 output is widened first (exactly, as the reference widens it).
        using var widened = Scratch<double>(modelOutput.DType == DType.F32 ? outputs : 1);
        ArrayView<double> output;
        switch (modelOutput.DType)
        {
            case DType.F32:
                Run(Stride(outputs), IlgpuKernels.FloatToDouble, F(modelOutput).SubView(0, outputs), widened.View.AsContiguous());
                output = widened.View.AsContiguous();
                break;
            case DType.F64:
                output = D(modelOutput);
                break;
            default:
                throw new ArgumentException($"flow step: the model output {modelOutput} must be float32 or float64 on ilgpu.");
        }
        Run(Stride(n), IlgpuKernels.FlowStep, xs, output, ds, ys, eps.View.AsContiguous(), args);
        accelerator.Synchronize(); // the scratch buffers are freed on return
    }

    /// <summary>The float64 view of a buffer of this backend.</summary>
    internal ArrayView<double> D(DeviceBuffer buffer)
    {
        var own = Own(buffer);
        if (own.DType != DType.F64) throw new ArgumentException($"ilgpu: {buffer} is not float64.");
        return own.Elements<double>();
    }
}

/// <summary>A <see cref="FlowStepCoefficients"/> flattened for a kernel (flags as ints, absent values as neutral ones).</summary>
internal readonly record struct FlowStepArgs(long Count, int Update, double Dt, int Guided, double Scale, int HasDrift, double Ratio,
    double Variance, double HalfDiffusion, int HasDirection, double NoiseScale, double SqrtDt);

internal static partial class IlgpuKernels
{
    public static void FlowStep(ArrayView<double> x, ArrayView<double> output, ArrayView<double> direction, ArrayView<double> y,
        ArrayView<double> eps, FlowStepArgs k)
    {
        for (long i = First; i < k.Count; i += Step)
            FlowStepElement(x, direction, y, eps, k, i, output[i], k.Guided != 0 ? output[k.Count + i] : 0);
    }

    /// <summary>One element in the interface's order (CpuBackend.FlowStepElement).</summary>
    private static void FlowStepElement(ArrayView<double> x, ArrayView<double> direction, ArrayView<double> y, ArrayView<double> eps,
        in FlowStepArgs k, long i, double conditional, double unconditional)
    {
        double xi = x[i];
        double d = FlowDirection(k, conditional, xi);
        if (k.Guided != 0)
        {
            double u = FlowDirection(k, unconditional, xi);
            d = u + k.Scale * (d - u);
        }
        if (k.Update == (int)FlowUpdate.Euler)
        {
            if (k.HasDirection != 0) direction[i] = d;
            y[i] = xi + k.Dt * d;
        }
        else if (k.Update == (int)FlowUpdate.Heun)
        {
            y[i] = xi + k.Dt * (0.5 * direction[i] + 0.5 * d);
        }
        else
        {
            y[i] = xi + d * k.Dt + k.NoiseScale * (eps[i] * k.SqrtDt);
        }
    }

    private static double FlowDirection(in FlowStepArgs k, double v, double x)
    {
        if (k.HasDrift == 0) return v;
        double score = (k.Ratio * v - x) / k.Variance;
        return v - k.HalfDiffusion * score;
    }
}
