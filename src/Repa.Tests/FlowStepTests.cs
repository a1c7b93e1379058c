using NUnit.Framework;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Sampling;

namespace Repa.Tests;

/// <summary>
/// The CPU backend's sampler step (the reference of every backend) against the host formulas FlowSampler used before
/// the op existed, written out here element by element (bit for bit), against closed forms, and its checks.
/// </summary>
[TestFixture]
public class FlowStepTests
{
    private const int N = 5003; // odd, and long enough that two threads and several noise batches share the work

    private static readonly CpuBackend Cpu = new(2);

    private static double[] Random(int n, ulong stream, double scale)
    {
        var v = new double[n];
        Philox.Normal(8, stream, 0, v);
        for (int i = 0; i < n; i++) v[i] *= scale;
        return v;
    }

    private static DeviceBuffer Buffer(double[] values)
    {
        var b = Cpu.Allocate(DType.F64, values.Length);
        Cpu.Upload<double>(values, b);
        return b;
    }

    private static double[] Read(DeviceBuffer b)
    {
        var v = new double[b.Length];
        Cpu.Download<double>(b, v);
        return v;
    }

    /// <summary>FlowSampler's former Evaluator: per half the drift v - h s with s from ScoreFromVelocity, then u + scale (c - u).</summary>
    private static double[] FormerDirection(double[] output, double[] x, double? scale, string? path, double t)
    {
        int n = x.Length;
        var halves = new List<double[]> { output[..n] };
        if (scale.HasValue) halves.Add(output[n..(2 * n)]);
        if (path != null)
        {
            var score = new double[n];
            double halfDiffusion = 0.5 * FlowSampler.Diffusion(t);
            foreach (var h in halves)
            {
                FlowSampler.ScoreFromVelocity(path, t, h, x, score);
                for (int k = 0; k < n; k++) h[k] -= halfDiffusion * score[k];
            }
        }
        if (!scale.HasValue) return halves[0];
        var (c, u) = (halves[0], halves[1]);
        var d = new double[n];
        for (int k = 0; k < n; k++) d[k] = u[k] + scale.Value * (c[k] - u[k]);
        return d;
    }

    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (var dtype in new[] { DType.F64, DType.F32 })
            foreach (double? scale in new double?[] { null, 3.5 })
                foreach (var path in new[] { null, "linear", "cosine" })
                    yield return new TestCaseData(dtype, scale, path).SetArgDisplayNames(dtype.Name(), scale.HasValue ? "guided" : "unguided", path ?? "velocity");
    }

    [TestCaseSource(nameof(Cases))]
    public void EveryUpdateIsTheFormerHostLoopBitForBit(DType dtype, double? scale, string? path)
    {
        const double t = 0.62, dt = -0.08;
        var x = Random(N, 1, 1.2);
        var raw = Random(scale.HasValue ? 2 * N : N, 2, 0.9);
        if (dtype == DType.F32) raw = raw.Select(v => (double)(float)v).ToArray(); // what a float32 output widens to
        using var output = Cpu.Allocate(dtype, raw.Length);
        if (dtype == DType.F32) Cpu.Upload<float>(raw.Select(v => (float)v).ToArray(), output);
        else Cpu.Upload<double>(raw, output);
        var drift = path == null ? (ScoreDrift?)null : FlowSampler.Drift(path, t);
        var d = FormerDirection(raw, x, scale, path, t);

        // Euler with its direction saved, into another buffer: xNext[k] = x[k] + dt * d[k].
        using var state = Buffer(x);
        using var next = Cpu.Allocate(DType.F64, N);
        using var saved = Cpu.Allocate(DType.F64, N);
        var euler = new FlowStepCoefficients(FlowUpdate.Euler, dt) { GuidanceScale = scale, Drift = drift };
        Cpu.FlowStep(euler, state, output, saved, next, N);
        Assert.That(Read(next), Is.EqualTo(x.Select((v, k) => v + dt * d[k])), "Euler");
        Assert.That(Read(saved), Is.EqualTo(d), "the saved direction");
        Assert.That(Read(state), Is.EqualTo(x), "the state is untouched when the destination is another buffer");

        // Heun: x[k] += dt * (0.5 * d[k] + 0.5 * dPrime[k]), with dPrime from another model output.
        var rawPrime = Random(raw.Length, 3, 0.7).Select(v => dtype == DType.F32 ? (double)(float)v : v).ToArray();
        using var outputPrime = Cpu.Allocate(dtype, rawPrime.Length);
        if (dtype == DType.F32) Cpu.Upload<float>(rawPrime.Select(v => (float)v).ToArray(), outputPrime);
        else Cpu.Upload<double>(rawPrime, outputPrime);
        var dPrime = FormerDirection(rawPrime, x, scale, path, t);
        Cpu.FlowStep(euler with { Update = FlowUpdate.Heun }, state, outputPrime, saved, state, N);
        var heun = x.Select((v, k) => v + dt * (0.5 * d[k] + 0.5 * dPrime[k])).ToArray();
        Assert.That(Read(state), Is.EqualTo(heun), "Heun, in place");

        // Euler-Maruyama: x[k] = x[k] + d[k] * dt + noiseScale * (eps[k] * sqrtDt), eps from Philox at the sample offset.
        Cpu.Upload<double>(x, state);
        const ulong offset = 4 * 77 + 1;
        double noiseScale = Math.Sqrt(FlowSampler.Diffusion(t)), sqrtDt = Math.Sqrt(Math.Abs(dt));
        var sde = new FlowStepCoefficients(FlowUpdate.EulerMaruyama, dt)
        {
            GuidanceScale = scale, Drift = drift, Noise = new StepNoise(9, FlowSampler.NoiseStream(4), offset, noiseScale, sqrtDt),
        };
        Cpu.FlowStep(sde, state, output, null, state, N);
        var eps = new double[N];
        Philox.Normal(9, FlowSampler.NoiseStream(4), offset, eps);
        Assert.That(Read(state), Is.EqualTo(x.Select((v, k) => v + d[k] * dt + noiseScale * (eps[k] * sqrtDt))), "Euler-Maruyama");
    }

    [Test]
    public void ClosedForms()
    {
        // Constant velocity c: Euler moves by dt c; Heun with d0 = d = c moves the same (0.5 c + 0.5 c = c exactly).
        var x = Random(9, 4, 1);
        using var state = Buffer(x);
        using var velocity = Buffer(Enumerable.Repeat(0.75, 9).ToArray());
        using var saved = Cpu.Allocate(DType.F64, 9);
        using var next = Cpu.Allocate(DType.F64, 9);
        var euler = new FlowStepCoefficients(FlowUpdate.Euler, -0.25);
        Cpu.FlowStep(euler, state, velocity, saved, next, 9);
        Cpu.FlowStep(euler with { Update = FlowUpdate.Heun }, state, velocity, saved, state, 9);
        Assert.That(Read(next), Is.EqualTo(x.Select(v => v - 0.1875)).Within(1e-15));
        Assert.That(Read(state), Is.EqualTo(Read(next)));

        // Guidance: u + s (c - u) with c = 2, u = -1, s = 3 is 8 everywhere.
        using var halves = Buffer([.. Enumerable.Repeat(2.0, 9), .. Enumerable.Repeat(-1.0, 9)]);
        Cpu.FlowStep(euler with { GuidanceScale = 3 }, state, halves, saved, next, 9);
        Assert.That(Read(saved), Is.All.EqualTo(8.0));

        // The linear path's score is (-(1 - t) v - x) / t, the cosine path's denominator is 1; h = w(t) / 2 = t.
        var linear = FlowSampler.Drift("linear", 0.62);
        Assert.That(linear.Ratio, Is.EqualTo(-0.38).Within(1e-15));
        Assert.That(linear.Variance, Is.EqualTo(0.62).Within(1e-15));
        Assert.That(linear.HalfDiffusion, Is.EqualTo(0.62));
        Assert.That(FlowSampler.Drift("cosine", 0.37).Variance, Is.EqualTo(1).Within(1e-15));
        // With v = 0 and x = 1 on the linear path: s = -1 / t, d = 0 - t (-1 / t) = 1.
        using var one = Buffer(Enumerable.Repeat(1.0, 9).ToArray());
        using var zero = Buffer(new double[9]);
        Cpu.FlowStep(euler with { Drift = linear }, one, zero, saved, next, 9);
        Assert.That(Read(saved), Is.All.EqualTo(1.0).Within(1e-15));
    }

    [Test]
    public void BadBuffersAreOneSentence()
    {
        using var x = Cpu.Allocate(DType.F64, 4);
        using var f32 = Cpu.Allocate(DType.F32, 4);
        using var i32 = Cpu.Allocate(DType.I32, 4);
        var euler = new FlowStepCoefficients(FlowUpdate.Euler, -0.1);
        void Fails(Action call, string part) =>
            Assert.That(Assert.Throws<ArgumentException>(call)!.Message, Does.Contain(part).And.StartWith("flow step: ").And.EndWith("."));
        Fails(() => Cpu.FlowStep(euler, f32, f32, null, x, 4), "the state x cpu buffer float32[4] must be float64");
        Fails(() => Cpu.FlowStep(euler, x, i32, null, x, 4), "must be float32 or float64 on the cpu");
        Fails(() => Cpu.FlowStep(euler, x, x, null, x, 5), "shorter than the 5 elements");
        Fails(() => Cpu.FlowStep(euler with { GuidanceScale = 2 }, x, x, null, x, 4), "fewer than 8 values");
        Fails(() => Cpu.FlowStep(euler with { Update = FlowUpdate.Heun }, x, x, null, x, 4), "Heun's correction needs the direction");
        Fails(() => Cpu.FlowStep(euler with { Update = FlowUpdate.EulerMaruyama }, x, x, null, x, 4), "needs its noise");
        Fails(() => Cpu.FlowStep(euler with { Noise = new StepNoise(1, 1, 0, 1, 1) }, x, x, null, x, 4), "only Euler-Maruyama steps take noise");
        Fails(() => Cpu.FlowStep(euler, x, f32, x, x, 4), "a buffer of its own");
    }
}
