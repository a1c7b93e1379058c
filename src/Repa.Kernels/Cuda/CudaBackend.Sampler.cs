using System.Runtime.InteropServices;

namespace Repa.Kernels.Cuda;

/// <summary>
/// The sampler step (kernels/sampler.cu): one launch per model evaluation, reading the float64 state and the model
/// output (float32, bfloat16 or float64) and writing the new state, with the Euler-Maruyama noise drawn from Philox in the
/// kernel. Bitwise the CPU backend's except for the noise, whose Box-Muller log/sincos may differ in the last ulp. The
/// state is float64: this family (with Upload/Download/Copy/Fill/Convert) is what float64 buffers are for on CUDA.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    internal const string SamplerKernels = "sampler.cu";

    /// <summary>The C struct repa::sampler::FlowStepParameters of kernels/sampler.cu, 96 bytes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct FlowStepParameters
    {
        public int Update, Guided, Drift, Reserved;
        public double Dt, GuidanceScale, Ratio, Variance, HalfDiffusion, NoiseScale, SqrtDt;
        public ulong Seed, Stream, Offset;
    }

    public void FlowStep(in FlowStepCoefficients step, DeviceBuffer x, DeviceBuffer modelOutput, DeviceBuffer? direction,
        DeviceBuffer destination, long n)
    {
        step.Validate(x, modelOutput, direction, destination, n);
        if (modelOutput.DType is not (DType.F32 or DType.BF16 or DType.F64))
            throw new ArgumentException($"flow step: the model output {modelOutput} must be float32, bfloat16 or float64 on cuda.");
        foreach (var buffer in new[] { x, modelOutput, direction, destination })
            if (buffer != null) Device(buffer);
        if (n == 0) return;
        Enter();
        var drift = step.Drift ?? default;
        var noise = step.Noise ?? default;
        var parameters = new FlowStepParameters
        {
            Update = step.Update switch { FlowUpdate.Euler => 0, FlowUpdate.Heun => 1, _ => 2 },
            Guided = step.GuidanceScale.HasValue ? 1 : 0,
            Drift = step.Drift.HasValue ? 1 : 0,
            Dt = step.Dt,
            GuidanceScale = step.GuidanceScale ?? 1,
            Ratio = drift.Ratio,
            Variance = drift.Variance,
            HalfDiffusion = drift.HalfDiffusion,
            NoiseScale = noise.Scale,
            SqrtDt = noise.SqrtDt,
            Seed = noise.Seed,
            Stream = noise.Stream,
            Offset = noise.Offset,
        };
        // One thread per quad: the up to 4 elements sharing a Philox block (see sampler.cu).
        long quads = ((long)(noise.Offset & 3) + n + 3) / 4;
        Launch(Function(SamplerKernels, $"flow_step_{KernelSuffix(modelOutput.DType, "flow step")}"), Grid(quads), parameters,
            Address(x), Address(modelOutput), direction == null ? 0UL : Address(direction), Address(destination), n);
    }
}
