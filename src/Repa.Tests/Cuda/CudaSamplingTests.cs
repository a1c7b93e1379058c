using NUnit.Framework;
using Repa.Kernels.Cpu;
using Repa.Runtime.Sampling;

namespace Repa.Tests.Cuda;

/// <summary>
/// Sampling end to end on the emulated CUDA device: the same tiny random SiT, labels, seed and options give the CPU
/// backend's samples, with the float64 state on the device between model calls (the network in float32, the fused
/// sampler step and its Philox noise in sampler.cu). What differs is the fp32 network's summation order (cuBLAS vs the
/// CPU GEMM), carried through the steps.
/// </summary>
[TestFixture, Category("EmulatedCuda"), NonParallelizable]
public class CudaSamplingTests
{
    private static readonly TestCaseData[] Runs =
    [
        new TestCaseData(new SamplerOptions { Mode = SamplerMode.Sde, Steps = 3, CfgScale = 1.5, GuidanceLow = 0.1, GuidanceHigh = 0.7, Seed = 2 })
            .SetArgDisplayNames("SDE, linear, guided in [0.1, 0.7]"),
        new TestCaseData(new SamplerOptions { Mode = SamplerMode.Sde, Steps = 2, PathType = "cosine", Seed = 3 }).SetArgDisplayNames("SDE, cosine"),
        new TestCaseData(new SamplerOptions { Mode = SamplerMode.Ode, Steps = 3, Heun = true, CfgScale = 2, Seed = 4 }).SetArgDisplayNames("ODE + Heun, guided"),
    ];

    [TestCaseSource(nameof(Runs))]
    public void SiTSamplesMatchTheCpuBackend(SamplerOptions options)
    {
        int[] labels = [0, 10, 7];
        using var cuda = EmulatedCuda.Open();
        using var cpu = new CpuBackend(2);
        using var onCuda = SamplerTests.RandomSiT(cuda);
        using var onCpu = SamplerTests.RandomSiT(cpu);
        // modelBatch 3 and group size 2: chunked model calls (a doubled group is 3 + 1) and two groups (firstSample 2).
        var expected = SiTSampling.Generate(onCpu, labels, options, modelBatch: 3, groupSize: 2);
        var actual = SiTSampling.Generate(onCuda, labels, options, modelBatch: 3, groupSize: 2);
        double worst = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
        TestContext.Out.WriteLine($"{options.Mode}{(options.Heun ? " + Heun" : "")}, {options.PathType}, cfg {options.CfgScale}: worst |cuda - cpu| = {worst:G3} over {expected.Length} values (max |x| {expected.Max(Math.Abs):G3})");
        Assert.That(expected.Any(v => Math.Abs(v) > 0.5), Is.True, "the samples are not trivial");
        BackendEquivalence.AssertClose(expected, actual, Tolerance.Close(1e-5, 1e-5), "samples");
    }
}
