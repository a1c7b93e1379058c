using NUnit.Framework;
using Repa.Kernels;
using Repa.Runtime.Sampling;

namespace Repa.Tests.Cuda;

/// <summary>
/// The sampler family (kernels/sampler.cu) against the CPU backend's reference: every update (Euler saving its
/// direction, the SDE's deterministic last step, Heun, Euler-Maruyama), guided and unguided, ODE velocity and SDE drift
/// on both paths, float32, bfloat16 and float64 model outputs, on lengths that do not fill a launch (1, 7, 1001) or turn its
/// grid-stride loop, with noise offsets that start mid Philox block. Everything but the noise is bit for bit; the noise
/// is Philox.Normal up to the device's log/sincos (measured below).
/// </summary>
public abstract partial class CudaBackendTests
{
    /// <summary>
    /// The noise's tolerance: the emulator's log and sincos are the host libm's, as .NET's (bit for bit); a GPU's
    /// double log and sincos are within 1-2 ulps, so eps within a few ulps of |eps| (up to ~6.7).
    /// </summary>
    private Tolerance NoiseTolerance => Cuda.IsEmulated ? Tolerance.Bits : Tolerance.Close(1e-15, 1e-15);

    public static IEnumerable<TestCaseData> FlowStepCases()
    {
        var drifts = new (string Name, ScoreDrift? Drift)[]
        {
            ("velocity", null),
            ("linear drift", FlowSampler.Drift("linear", 0.62)),
            ("cosine drift", FlowSampler.Drift("cosine", 0.37)),
        };
        foreach (long n in new long[] { 1, 7, 1001 })
            foreach (var dtype in new[] { DType.F32, DType.BF16, DType.F64 })
                foreach (var guided in new[] { false, true })
                    foreach (var (name, drift) in drifts)
                        yield return new TestCaseData(n, dtype, guided, drift).SetArgDisplayNames($"n={n}", dtype.Name(), guided ? "guided" : "unguided", name);
        // Many quads: the grid-stride loop turns (the grid holds at most 32 blocks of 256 threads per SM).
        yield return new TestCaseData(4L * 256 * 32 * 8 + 5, DType.BF16, true, FlowSampler.Drift("linear", 0.5)).SetArgDisplayNames("n=262149", "bf16", "guided", "linear drift");
    }

    [TestCaseSource(nameof(FlowStepCases))]
    public void FlowStepMatchesTheCpu(long n, DType dtype, bool guided, ScoreDrift? drift) =>
        MemberCases.FlowStep(Eq, n, dtype, guided, drift, NoiseTolerance);

    /// <summary>The noise alone (x = 0, output 0, dt = 0, scale 1, sqrt|dt| = 1 gives x' = eps exactly) against Philox.Normal.</summary>
    [Test]
    public void FlowStepNoiseIsPhiloxNormal([Values(0UL, 1UL, 2UL, 3UL, 6UL, (1UL << 34) + 1)] ulong offset)
    {
        const int n = 4099;
        ulong stream = FlowSampler.NoiseStream(17);
        var expected = new double[n];
        Philox.Normal(42, stream, offset, expected);
        using var x = Cuda.Allocate(DType.F64, n);
        using var output = Cuda.Allocate(DType.F32, n);
        Cuda.Fill(x, 0, n, 0);
        Cuda.Fill(output, 0, n, 0);
        var step = new FlowStepCoefficients(FlowUpdate.EulerMaruyama, 0) { Noise = new StepNoise(42, stream, offset, 1, 1) };
        Cuda.FlowStep(step, x, output, null, x, n);
        var actual = BackendEquivalence.Read(x);
        long worstUlps = 0;
        int exact = 0;
        for (int i = 0; i < n; i++)
        {
            long ulps = Math.Abs(BitConverter.DoubleToInt64Bits(actual[i]) - BitConverter.DoubleToInt64Bits(expected[i]));
            if (ulps == 0) exact++;
            worstUlps = Math.Max(worstUlps, ulps);
        }
        TestContext.Out.WriteLine($"offset {offset}: {exact} of {n} bit-identical, worst {worstUlps} ulp(s) on {Cuda.Description}");
        BackendEquivalence.AssertClose(expected, actual, NoiseTolerance, $"Philox normal noise at offset {offset}");
        Assert.That(actual.Average(), Is.EqualTo(0).Within(5 / Math.Sqrt(n)), "and it is standard normal noise");
    }

    /// <summary>The checks shared with the CPU (FlowStepCoefficients.Validate, tested in FlowStepTests) plus cuda's own.</summary>
    [Test]
    public void FlowStepRejectsWrongBuffersInOneSentence()
    {
        using var x = Cuda.Allocate(DType.F64, 8);
        using var f32 = Cuda.Allocate(DType.F32, 8);
        using var f16 = Cuda.Allocate(DType.F16, 8);
        using var host = cpu.Allocate(DType.F64, 8);
        var euler = new FlowStepCoefficients(FlowUpdate.Euler, -0.1);
        Assert.That(Assert.Throws<ArgumentException>(() => Cuda.FlowStep(euler, f32, f32, null, f32, 8))!.Message, Does.Contain("must be float64"));
        Assert.That(Assert.Throws<ArgumentException>(() => Cuda.FlowStep(euler, x, f16, null, x, 8))!.Message, Does.Contain("float32, bfloat16 or float64 on cuda"));
        Assert.That(Assert.Throws<ArgumentException>(() => Cuda.FlowStep(euler, x, f32, null, host, 8))!.Message, Does.Contain("does not belong to this cuda backend"));
        Assert.That(Cuda.Supports(DType.F64), Is.False, "float64 is storage and the sampler's state, not a compute dtype");
    }

    /// <summary>
    /// float64 buffers outside the sampler step and the memory ops: every other family refuses them with a
    /// NotSupportedException of one sentence naming float64 (the backend's convention for dtypes an op does not compute in).
    /// </summary>
    [Test]
    public void Float64IsRefusedOutsideTheSamplerInOneSentence()
    {
        using var d = Cuda.Allocate(DType.F64, 64);
        using var f = Cuda.Allocate(DType.F32, 64);
        var calls = new (string Op, Action Call)[]
        {
            ("gelu", () => Cuda.ActivationForward(Activation.Gelu, d, d, 8)),
            ("axpby", () => Cuda.Axpby(d, d, 8, 1, 1)),
            ("gemm", () => Cuda.Gemm(false, false, 2, 2, 2, 1, d, 0, 2, 0, d, 0, 2, 0, 0, d, 0, 2, 0)),
            ("layer norm", () => Cuda.LayerNormForward(d, null, null, null, null, d, f, f, 2, 4, 1, 1e-5)),
            ("mse", () => Cuda.MseForward(d, d, f, 2, 4)),
            ("sum of squares", () => Cuda.SumOfSquares(d, 8)),
            ("attention", () => Cuda.AttentionForward(d, d, d, 1, 2, 1, 8, 1.0)),
        };
        foreach (var (op, call) in calls)
        {
            var e = Assert.Catch(() => call(), op)!;
            TestContext.Out.WriteLine($"{op}: {e.GetType().Name}: {e.Message}");
            Assert.That(e, Is.InstanceOf<NotSupportedException>(), $"{op}: a dtype the op does not compute in, as on the CPU backend");
            Assert.That(e.Message, Does.StartWith("cuda").And.Contain("float64").And.EndWith("."), op);
        }
    }
}
