using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Models;
using Repa.Runtime.Sampling;

namespace Repa.Tests;

/// <summary>
/// REPA's samplers against closed forms: for data N(mu, s^2) the exact velocity of both paths is affine in x, so the
/// ODE's exact flow map (x0 = mu + s x1) and the exact law of the discrete SDE are known; plus guidance bookkeeping
/// with recording models, and reproducibility.
/// </summary>
[TestFixture]
public class SamplerTests
{
    private const double Mu = 0.3, S = 0.5;

    /// <summary>Data N(mu, s^2) per element carried along x_t = alpha x0 + sigma eps: the exact velocity and score.</summary>
    private sealed record GaussianPath(string Path)
    {
        public (double A, double B, double DA, double DB) Coefficients(double t) => Path == "linear"
            ? (1 - t, t, -1, 1)
            : (Math.Cos(Math.PI * t / 2), Math.Sin(Math.PI * t / 2), -Math.PI / 2 * Math.Sin(Math.PI * t / 2), Math.PI / 2 * Math.Cos(Math.PI * t / 2));

        public double Variance(double t)
        {
            var (a, b, _, _) = Coefficients(t);
            return a * a * S * S + b * b;
        }

        public double Mean(double t) => Coefficients(t).A * Mu;

        /// <summary>v(x, t) = E[alpha' x0 + sigma' eps | x_t = x] = Slope x + Intercept.</summary>
        public (double Slope, double Intercept) Velocity(double t)
        {
            var (a, b, da, db) = Coefficients(t);
            double slope = (da * a * S * S + db * b) / Variance(t);
            return (slope, da * Mu - slope * a * Mu);
        }

        public void Model(ReadOnlySpan<double> x, double t, ReadOnlySpan<int> labels, Span<double> v)
        {
            var (k, c) = Velocity(t);
            for (int i = 0; i < x.Length; i++) v[i] = k * x[i] + c;
        }

        /// <summary>The SDE drift v - (w/2) score with the true score -(x - mean) / variance: slope and intercept.</summary>
        public (double Slope, double Intercept) Drift(double t)
        {
            var (k, c) = Velocity(t);
            double half = FlowSampler.Diffusion(t) / 2, variance = Variance(t);
            return (k + half / variance, c - half * Mean(t) / variance);
        }
    }

    private static double[] Run(GaussianPath path, SamplerOptions options, int samples, out double[] initial, int size = 8)
    {
        var labels = new int[samples];
        initial = new double[samples * size];
        FlowSampler.InitialNoise(options.Seed, 0, size, initial);
        var x = (double[])initial.Clone();
        FlowSampler.Run(path.Model, x, labels, 1, options with { PathType = path.Path });
        return x;
    }

    private static (double Mean, double Variance) Moments(double[] x)
    {
        double mean = x.Average();
        return (mean, x.Sum(v => (v - mean) * (v - mean)) / (x.Length - 1));
    }

    /// <summary>Largest distance of the ODE's samples from the exact flow map x0 = mu + s x1 of the Gaussian.</summary>
    private static double FlowError(GaussianPath path, SamplerOptions options)
    {
        var x = Run(path, options with { Mode = SamplerMode.Ode }, 256, out var initial);
        return x.Select((v, i) => Math.Abs(v - (Mu + S * initial[i]))).Max();
    }

    [TestCase("linear")]
    [TestCase("cosine")]
    public void OdeEulerConvergesAtFirstOrderAndHeunAtSecond(string pathType)
    {
        var path = new GaussianPath(pathType);
        var euler = new[] { 20, 40, 80 }.Select(n => FlowError(path, new SamplerOptions { Steps = n })).ToArray();
        var heun = new[] { 20, 40, 80 }.Select(n => FlowError(path, new SamplerOptions { Steps = n, Heun = true })).ToArray();
        TestContext.Out.WriteLine($"{pathType}: Euler errors {string.Join(", ", euler)}; Heun errors {string.Join(", ", heun)}");
        for (int i = 0; i < 2; i++)
        {
            Assert.That(euler[i] / euler[i + 1], Is.InRange(1.7, 2.3), "Euler: halving the step halves the error");
            Assert.That(heun[i] / heun[i + 1], Is.InRange(3.4, 4.6), "Heun: halving the step quarters the error");
        }
        for (int i = 0; i < 3; i++) Assert.That(heun[i], Is.LessThan(euler[i] / 2), "Heun is more accurate at the same number of steps");
        Assert.That(heun[2], Is.LessThan(euler[2] / 5), "and clearly so at 80 steps");
    }

    [TestCase("linear", false)]
    [TestCase("linear", true)]
    [TestCase("cosine", false)]
    [TestCase("cosine", true)]
    public void OdeSamplesTheGaussian(string pathType, bool heun)
    {
        const int steps = 50, samples = 8192, size = 8;
        var x = Run(new GaussianPath(pathType), new SamplerOptions { Mode = SamplerMode.Ode, Steps = steps, Heun = heun }, samples, out _, size);
        var (mean, variance) = Moments(x);
        // Statistical error (5 sigma over M = 65536 values) plus the discretisation error bound of the flow map (1/N).
        double m = samples * size, discretisation = heun ? 1.0 / (steps * steps) : 1.0 / steps;
        Assert.That(mean, Is.EqualTo(Mu).Within(5 * S / Math.Sqrt(m) + discretisation));
        Assert.That(variance, Is.EqualTo(S * S).Within(5 * S * S * Math.Sqrt(2 / m) + 2 * S * discretisation));
    }

    /// <summary>
    /// The exact law of REPA's discrete SDE for an affine drift: each stochastic step maps N(m, V) to
    /// N(m + dt (c m + d), (1 + c dt)^2 V + w |dt|), the last one without the noise term.
    /// </summary>
    private static (double Mean, double Variance) DiscreteSdeLaw(GaussianPath path, int steps)
    {
        var grid = FlowSampler.TimeGrid(new SamplerOptions { Steps = steps });
        double m = 0, v = 1;
        for (int i = 0; i < steps; i++)
        {
            double t = grid[i], dt = grid[i + 1] - t;
            var (c, d) = path.Drift(t);
            m += dt * (c * m + d);
            v = (1 + c * dt) * (1 + c * dt) * v + (i < steps - 1 ? FlowSampler.Diffusion(t) * Math.Abs(dt) : 0);
        }
        return (m, v);
    }

    /// <summary>What an exact solver up to t = 0.04 followed by REPA's deterministic last step gives.</summary>
    private static (double Mean, double Variance) CutoffLaw(GaussianPath path)
    {
        const double t = FlowSampler.SdeLastTime, dt = -t;
        var (c, d) = path.Drift(t);
        double m = path.Mean(t);
        return (m + dt * (c * m + d), (1 + c * dt) * (1 + c * dt) * path.Variance(t));
    }

    [TestCase("linear")]
    [TestCase("cosine")]
    public void SdeSamplesTheExactLawOfItsDiscreteSchemeWhichApproachesTheGaussian(string pathType)
    {
        const int samples = 8192, size = 8, steps = 250;
        var path = new GaussianPath(pathType);
        var x = Run(path, new SamplerOptions { Mode = SamplerMode.Sde, Steps = steps }, samples, out _, size);
        var (mean, variance) = Moments(x);
        var (lawMean, lawVariance) = DiscreteSdeLaw(path, steps);
        var (cutMean, cutVariance) = CutoffLaw(path);
        TestContext.Out.WriteLine($"{pathType}: samples ({mean:F5}, {variance:F5}); scheme ({lawMean:F5}, {lawVariance:F5}); exact to 0.04 + last step ({cutMean:F5}, {cutVariance:F5}); data ({Mu}, {S * S})");
        double m = samples * size;
        // The samples follow the scheme's own law up to sampling error (5 sigma)...
        Assert.That(mean, Is.EqualTo(lawMean).Within(5 * Math.Sqrt(lawVariance / m)));
        Assert.That(variance, Is.EqualTo(lawVariance).Within(5 * lawVariance * Math.Sqrt(2 / m)));
        // ...which is within O(1/N) of an exact solve to t = 0.04 followed by the deterministic last step...
        Assert.That(lawMean, Is.EqualTo(cutMean).Within(1.0 / steps));
        Assert.That(lawVariance, Is.EqualTo(cutVariance).Within(1.0 / steps));
        foreach (int coarse in new[] { 25, 50 })
        {
            var (cm, cv) = DiscreteSdeLaw(path, coarse);
            Assert.That(Math.Abs(cv - cutVariance), Is.GreaterThan(Math.Abs(lawVariance - cutVariance)), $"{coarse} steps are less accurate than {steps}");
            Assert.That(Math.Abs(cv - cutVariance), Is.LessThan(2.0 / coarse), $"first order in 1/N at {coarse} steps");
            Assert.That(Math.Abs(cm - cutMean), Is.LessThan(2.0 / coarse));
        }
        // ...and that is the data distribution up to the bias REPA's early stop at 0.04 leaves (a few % of the variance).
        Assert.That(cutMean, Is.EqualTo(Mu).Within(0.01));
        Assert.That(cutVariance, Is.EqualTo(S * S).Within(0.05 * S * S));
        Assert.That(mean, Is.EqualTo(Mu).Within(0.01));
        Assert.That(variance, Is.EqualTo(S * S).Within(0.05 * S * S));
    }

    [Test]
    public void TimeGridsAreReposLinspaces()
    {
        Assert.That(FlowSampler.TimeGrid(new SamplerOptions { Mode = SamplerMode.Ode, Steps = 4 }), Is.EqualTo(new[] { 1, 0.75, 0.5, 0.25, 0 }));
        var sde = FlowSampler.TimeGrid(new SamplerOptions { Mode = SamplerMode.Sde, Steps = 4 });
        Assert.That(sde, Is.EqualTo(new[] { 1, 0.68, 0.36, 0.04, 0 }).Within(1e-15));
        Assert.That((sde[0], sde[3], sde[4]), Is.EqualTo((1.0, 0.04, 0.0)), "both ends exact");
        Assert.That(FlowSampler.TimeGrid(new SamplerOptions { Mode = SamplerMode.Sde, Steps = 1 }), Is.EqualTo(new[] { 1.0, 0.0 }));
        // torch.linspace: the second half counts back from the end, so 0.1 * 3 comes out as 0.30000000000000004 there.
        Assert.That(FlowSampler.Linspace(1, 0, 11)[7], Is.EqualTo(0 - (-0.1) * 3));
        Assert.That(FlowSampler.Linspace(1, 0, 11)[3], Is.EqualTo(1 + -0.1 * 3));
    }

    [Test]
    public void ScoreFromVelocityIsTheTrueScoreOfTheGaussianOnBothPaths()
    {
        foreach (var p in new[] { "linear", "cosine" })
        {
            var path = new GaussianPath(p);
            foreach (double t in new[] { 0.04, 0.3, 0.7, 1.0 })
            {
                double[] x = [-1.5, 0.2, 2.0];
                var v = new double[3];
                path.Model(x, t, new int[3], v);
                var score = new double[3];
                FlowSampler.ScoreFromVelocity(p, t, v, x, score);
                for (int i = 0; i < 3; i++)
                    Assert.That(score[i], Is.EqualTo(-(x[i] - path.Mean(t)) / path.Variance(t)).Within(1e-12), $"{p} t={t}");
            }
        }
    }

    /// <summary>Records every model call and returns v = 1 for real labels and 0 for the null class.</summary>
    private sealed class RecordingModel(int nullClass)
    {
        public List<(double T, int[] Labels)> Calls { get; } = [];

        public void Model(ReadOnlySpan<double> x, double t, ReadOnlySpan<int> labels, Span<double> v)
        {
            Calls.Add((t, labels.ToArray()));
            int size = x.Length / labels.Length;
            for (int i = 0; i < labels.Length; i++) v.Slice(i * size, size).Fill(labels[i] == nullClass ? 0 : 1);
        }
    }

    private static readonly int[] Labels = [2, 0, 1];
    private const int Null = 3;

    [Test]
    public void OdeGuidanceIsAppliedExactlyAtTheGridTimesInsideTheInterval()
    {
        var model = new RecordingModel(Null);
        var options = new SamplerOptions { Mode = SamplerMode.Ode, Steps = 10, CfgScale = 3, GuidanceLow = 0.25, GuidanceHigh = 0.65 };
        var x = new double[Labels.Length * 2];
        FlowSampler.Run(model.Model, x, Labels, Null, options);
        Assert.That(model.Calls.Select(c => c.T), Is.EqualTo(Enumerable.Range(0, 10).Select(i => 1 - i / 10.0)).Within(1e-12));
        double[] guided = [0.6, 0.5, 0.4, 0.3];
        foreach (var (t, labels) in model.Calls)
        {
            bool inside = guided.Any(g => Math.Abs(g - t) < 1e-9);
            Assert.That(labels, Is.EqualTo(inside ? new[] { 2, 0, 1, Null, Null, Null } : Labels), $"labels at t = {t}");
        }
        // v = 1 unguided, 0 + 3 (1 - 0) = 3 guided: x0 = x1 - (6 x 1 + 4 x 3) / 10.
        Assert.That(x, Is.All.EqualTo(-(6 * 1 + 4 * 3) / 10.0).Within(1e-12));
    }

    [Test]
    public void HeunCorrectionFollowsTheGuidanceOfItsStepStartAndIntervalEndsAreInclusive()
    {
        var model = new RecordingModel(Null);
        var options = new SamplerOptions { Mode = SamplerMode.Ode, Steps = 10, Heun = true, CfgScale = 2, GuidanceLow = 0.5, GuidanceHigh = 0.5 };
        FlowSampler.Run(model.Model, new double[Labels.Length], Labels, Null, options);
        Assert.That(model.Calls, Has.Count.EqualTo(19), "two calls per step, one on the last");
        var doubled = model.Calls.Where(c => c.Labels.Length == 2 * Labels.Length).Select(c => c.T).ToArray();
        // Step 0.5 -> 0.4 is guided (t_cur = 0.5 in [0.5, 0.5]): its Euler call at 0.5 and its correction at 0.4.
        // Step 0.6 -> 0.5 is not guided although its correction runs at t = 0.5.
        Assert.That(doubled, Is.EqualTo(new[] { 0.5, 0.4 }).Within(1e-12));
        Assert.That(model.Calls.Count(c => Math.Abs(c.T - 0.5) < 1e-12 && c.Labels.Length == Labels.Length), Is.EqualTo(1));
    }

    [Test]
    public void SdeGuidanceActsOnTheDrift()
    {
        // A velocity that depends on the label only: v = 1 (cond), 0 (null). The guided drift is
        // d_u + s (d_c - d_u) with d = v - t score and score = (-(1 - t) v - x) / t on the linear path.
        var model = new RecordingModel(Null);
        const double scale = 2.5;
        var options = new SamplerOptions { Mode = SamplerMode.Sde, Steps = 1, CfgScale = scale }; // one deterministic step from t = 1
        double[] x = [0.7, -0.2, 1.1];
        var start = (double[])x.Clone();
        FlowSampler.Run(model.Model, x, Labels, Null, options);
        Assert.That(model.Calls.Single().Labels, Is.EqualTo(new[] { 2, 0, 1, Null, Null, Null }));
        for (int i = 0; i < 3; i++)
        {
            double Drift(double v) => v - 1.0 * ((-(1 - 1.0) * v - start[i]) / 1.0);
            double guided = Drift(0) + scale * (Drift(1) - Drift(0));
            Assert.That(x[i], Is.EqualTo(start[i] - guided).Within(1e-12));
        }
    }

    [TestCase(SamplerMode.Ode)]
    [TestCase(SamplerMode.Sde)]
    public void ScaleOneEvaluatesASingleBatchWithTheRealLabels(SamplerMode mode)
    {
        var model = new RecordingModel(Null);
        FlowSampler.Run(model.Model, new double[Labels.Length * 4], Labels, Null, new SamplerOptions { Mode = mode, Steps = 6, CfgScale = 1 });
        Assert.That(model.Calls, Has.Count.EqualTo(6));
        Assert.That(model.Calls.Select(c => c.Labels), Is.All.EqualTo(Labels));
    }

    [TestCase(SamplerMode.Ode, false)]
    [TestCase(SamplerMode.Ode, true)]
    [TestCase(SamplerMode.Sde, false)]
    public void GuidanceChangesNothingWhenTheModelIgnoresTheLabel(SamplerMode mode, bool heun)
    {
        var path = new GaussianPath("linear");
        var options = new SamplerOptions { Mode = mode, Heun = heun, Steps = 12, Seed = 5 };
        var plain = FlowSampler.Sample(path.Model, Labels, Null, 16, options);
        var guided = FlowSampler.Sample(path.Model, Labels, Null, 16, options with { CfgScale = 4, GuidanceLow = 0.2, GuidanceHigh = 0.9 });
        Assert.That(guided, Is.EqualTo(plain), "u + s (c - u) = u exactly when c = u");
    }

    [Test]
    public void TheSameSeedGivesTheSameSamplesWhateverTheSplit()
    {
        var path = new GaussianPath("cosine");
        var options = new SamplerOptions { Mode = SamplerMode.Sde, Steps = 20, Seed = 11 };
        int[] labels = [0, 1, 2, 3, 4, 5, 6];
        const int size = 5;
        var whole = FlowSampler.Sample(path.Model, labels, 10, size, options);
        var first = FlowSampler.Sample(path.Model, labels.AsSpan(0, 3), 10, size, options, firstSample: 0);
        var rest = FlowSampler.Sample(path.Model, labels.AsSpan(3), 10, size, options, firstSample: 3);
        Assert.That(first.Concat(rest), Is.EqualTo(whole), "samples depend on their index, not on the call they were drawn in");
        Assert.That(FlowSampler.Sample(path.Model, labels, 10, size, options), Is.EqualTo(whole));
        Assert.That(FlowSampler.Sample(path.Model, labels, 10, size, options with { Seed = 12 }), Is.Not.EqualTo(whole));
    }

    [Test]
    public void ProgressReportsEveryStep()
    {
        var seen = new List<SamplerProgress>();
        FlowSampler.Sample(new GaussianPath("linear").Model, Labels, Null, 2, new SamplerOptions { Steps = 5 }, progress: seen.Add);
        Assert.That(seen.Select(p => p.Step), Is.EqualTo(new[] { 1, 2, 3, 4, 5 }));
        Assert.That(seen.Select(p => p.Steps), Is.All.EqualTo(5));
        Assert.That(seen[^1].Time, Is.EqualTo(0.0));
    }

    [TestCase(0, false, 1.0, 0.0, 1.0, "--steps")]
    [TestCase(10, true, 1.0, 0.0, 1.0, "Heun")]
    [TestCase(10, false, 0.5, 0.0, 1.0, "--cfg")]
    [TestCase(10, false, 2.0, 0.8, 0.2, "--guidance-low")]
    public void BadOptionsAreOneSentence(int steps, bool heun, double cfg, double low, double high, string names)
    {
        var options = new SamplerOptions { Mode = SamplerMode.Sde, Steps = steps, Heun = heun, CfgScale = cfg, GuidanceLow = low, GuidanceHigh = high };
        var e = Assert.Throws<ArgumentException>(() => options.Validate());
        Assert.That(e!.Message, Does.Contain(names));
    }

    /// <summary>A small SiT with every weight random (a fresh one outputs exactly zero), fp32 on the CPU.</summary>
    internal static SiT RandomSiT(IBackend backend)
    {
        var config = SiTConfig.Tiny with { Name = "SiT-T/4", PatchSize = 4, Depth = 2, InputSize = 16, EncoderDepth = 1, ZDims = [] };
        var model = new SiT(backend, DType.F32, config, 3);
        ulong stream = 0;
        foreach (var (_, p) in model.NamedParameters())
        {
            var values = new float[p.Count];
            Philox.Normal(99, stream++, 0, values);
            for (int i = 0; i < values.Length; i++) values[i] *= 0.05f;
            backend.Upload<float>(values, p.Buffer);
        }
        return model;
    }

    [Test]
    public void SiTSamplesDoNotDependOnModelBatchOrGroupSize()
    {
        using var backend = new CpuBackend(2);
        using var model = RandomSiT(backend);
        int[] labels = [0, 3, 10, 7, 7];
        var options = new SamplerOptions { Mode = SamplerMode.Sde, Steps = 4, CfgScale = 1.5, Seed = 2 };
        var reference = SiTSampling.Generate(model, labels, options, modelBatch: 16);
        var chunked = SiTSampling.Generate(model, labels, options, modelBatch: 3, groupSize: 2);
        Assert.That(reference.All(double.IsFinite) && reference.Any(v => Math.Abs(v) > 0.1), Is.True);
        Assert.That(chunked, Is.EqualTo(reference).Within(1e-5), "the same samples, up to fp32 GEMM rounding of other batch shapes");
        Assert.That(SiTSampling.Generate(model, labels, options, modelBatch: 16), Is.EqualTo(reference), "and bit for bit on a rerun");
    }

    [Test]
    public void BatchedModelRunsTheSiTInFloat32WithoutATape()
    {
        using var backend = new CpuBackend(2);
        using var model = RandomSiT(backend);
        var runner = BatchedModel.ForSiT(model, chunk: 2);
        int size = runner.SampleSize, n = 3;
        var x = new double[n * size];
        Philox.Normal(1, 0, 0, x);
        int[] labels = [1, 10, 4];
        var output = new double[n * size];
        runner.Run(x, 0.37, labels, output);
        using var tape = new Tape();
        var xs = Tensor.FromArray(backend, x.Select(v => (float)v).ToArray(), n, 1, 16, 16);
        var (direct, _) = model.Forward(xs, Tensor.FromArray(backend, new[] { 0.37f, 0.37f, 0.37f }, n), Tensor.FromArray(backend, labels, n));
        Assert.That(output, Is.EqualTo(direct.ToFloatArray().Select(v => (double)v)).Within(1e-5));
        Assert.That(tape.NodeCount, Is.GreaterThan(0), "the direct forward recorded on this tape...");
        int before = tape.NodeCount;
        runner.Run(x, 0.37, labels, output);
        Assert.That(tape.NodeCount, Is.EqualTo(before), "...the runner records nothing");
    }
}
