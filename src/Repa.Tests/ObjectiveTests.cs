using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Models;
using Repa.Runtime.Training;
using Repa.Tests.Checks;

namespace Repa.Tests;

/// <summary>
/// REPA's objective (loss.py SILoss): interpolants in closed form, Philox time/label draws (range, reproducibility,
/// statistics), the loss of a fresh SiT (output exactly 0) against hand computations, the linear path's direction,
/// backward reaching the parameters, and config validation.
/// </summary>
[TestFixture]
public class ObjectiveTests
{
    private static IBackend Backend => OpCheck.Backend;

    /// <summary>Depth 2, hidden 16, patch 2 on 4x4x2 (4 tokens), 3 classes, two projectors 8 -> 5 and 8 -> 7.</summary>
    private static readonly SiTConfig Micro = new()
    {
        Name = "micro", InputSize = 4, PatchSize = 2, InChannels = 2, HiddenSize = 16, Depth = 2, NumHeads = 2,
        NumClasses = 3, EncoderDepth = 1, ZDims = [5, 7], ProjectorDim = 8,
    };

    // ---- interpolant ----

    [TestCase(0.0, 1.0, 0.0)]
    [TestCase(0.5, 0.5, 0.5)]
    [TestCase(1.0, 0.0, 1.0)]
    public void LinearInterpolant(double t, double alpha, double sigma)
    {
        Objective.Interpolant("linear", t, out double a, out double s, out double da, out double ds);
        Assert.That((a, s, da, ds), Is.EqualTo((alpha, sigma, -1.0, 1.0)));
    }

    [Test]
    public void CosineInterpolant()
    {
        void Check(double t, double a, double s, double da, double ds)
        {
            Objective.Interpolant("cosine", t, out double ra, out double rs, out double rda, out double rds);
            Assert.That(ra, Is.EqualTo(a).Within(1e-15), $"alpha({t})");
            Assert.That(rs, Is.EqualTo(s).Within(1e-15), $"sigma({t})");
            Assert.That(rda, Is.EqualTo(da).Within(1e-15), $"alpha'({t})");
            Assert.That(rds, Is.EqualTo(ds).Within(1e-15), $"sigma'({t})");
        }
        double h = Math.Sqrt(0.5);
        Check(0, 1, 0, 0, Math.PI / 2);
        Check(0.5, h, h, -Math.PI / 2 * h, Math.PI / 2 * h);
        Check(1, 0, 1, -Math.PI / 2, 0);
        // The derivatives are those of alpha and sigma (central difference).
        const double t0 = 0.3, e = 1e-6;
        Objective.Interpolant("cosine", t0 + e, out double ap, out double sp, out _, out _);
        Objective.Interpolant("cosine", t0 - e, out double am, out double sm, out _, out _);
        Objective.Interpolant("cosine", t0, out _, out _, out double dA, out double dS);
        Assert.That((ap - am) / (2 * e), Is.EqualTo(dA).Within(1e-8));
        Assert.That((sp - sm) / (2 * e), Is.EqualTo(dS).Within(1e-8));
    }

    [Test]
    public void UnknownPathThrows()
    {
        var ex = Assert.Throws<ArgumentException>(() => Objective.Interpolant("vp", 0.5, out _, out _, out _, out _));
        Assert.That(ex!.Message, Does.StartWith("path_type must be linear or cosine, got 'vp'."));
    }

    // ---- times ----

    [TestCase("uniform", "linear")]
    [TestCase("lognormal", "linear")]
    [TestCase("lognormal", "cosine")]
    public void SampleTimesAreReproducibleAndInsideTheUnitInterval(string weighting, string path)
    {
        var obj = new Objective(new ObjectiveConfig(PathType: path, Weighting: weighting));
        var a = obj.SampleTimes(seed: 5, step: 17, n: 100_000);
        Assert.That(a.All(v => v > 0 && v < 1), Is.True, "t in (0, 1)");
        Assert.That(obj.SampleTimes(5, 17, 100_000), Is.EqualTo(a), "same seed and step");
        Assert.That(obj.SampleTimes(5, 18, 100_000), Is.Not.EqualTo(a), "another step");
        Assert.That(obj.SampleTimes(6, 17, 100_000), Is.Not.EqualTo(a), "another seed");
        // A prefix of a larger draw: the batch size does not change the first samples.
        Assert.That(obj.SampleTimes(5, 17, 7), Is.EqualTo(a.Take(7)));
        // Both distributions are symmetric about 1/2.
        Assert.That(a.Average(), Is.EqualTo(0.5).Within(0.005));
        double sd = Math.Sqrt(a.Select(v => (v - 0.5) * (v - 0.5)).Average());
        if (weighting == "uniform")
            Assert.That(sd, Is.EqualTo(Math.Sqrt(1.0 / 12)).Within(0.003));
        else
            Assert.That(sd, Is.LessThan(Math.Sqrt(1.0 / 12)), "logit-normal concentrates around 1/2");
    }

    [Test]
    public void LognormalLinearIsSigmoidOfAStandardNormal()
    {
        var obj = new Objective(new ObjectiveConfig(Weighting: "lognormal"));
        var t = obj.SampleTimes(seed: 9, step: 2, n: 50_000);
        var z = t.Select(v => Math.Log(v / (1 - v))).ToArray(); // logit
        double mean = z.Average(), sd = Math.Sqrt(z.Select(v => (v - mean) * (v - mean)).Average());
        Assert.That(mean, Is.EqualTo(0).Within(0.03));
        Assert.That(sd, Is.EqualTo(1).Within(0.02));
    }

    // ---- label dropout ----

    [Test]
    public void DropLabelsRateAndDeterminism()
    {
        var obj = new Objective(new ObjectiveConfig(ClassDropout: 0.1));
        const int n = 100_000, nullClass = 1000;
        var labels = Enumerable.Range(0, n).Select(i => i % 1000).ToArray();
        var a = obj.DropLabels(labels, nullClass, seed: 3, step: 11);
        double rate = a.Count(v => v == nullClass) / (double)n;
        Assert.That(rate, Is.EqualTo(0.1).Within(5 * Math.Sqrt(0.09 / n)));
        Assert.That(Enumerable.Range(0, n).All(i => a[i] == nullClass || a[i] == labels[i]), Is.True, "kept labels unchanged");
        Assert.That(labels, Is.EqualTo(Enumerable.Range(0, n).Select(i => i % 1000)), "input untouched");
        Assert.That(obj.DropLabels(labels, nullClass, 3, 11), Is.EqualTo(a), "same seed and step");
        Assert.That(obj.DropLabels(labels, nullClass, 3, 12), Is.Not.EqualTo(a), "another step");
        // Times and labels of one step come from different streams.
        Assert.That(Objective.Stream(11, Objective.TimePurpose), Is.Not.EqualTo(Objective.Stream(11, Objective.LabelPurpose)));
        var none = new Objective(new ObjectiveConfig(ClassDropout: 0)).DropLabels(labels, nullClass, 3, 11);
        Assert.That(none, Is.EqualTo(labels));
    }

    // ---- the loss ----

    private sealed record Batch(double[] X0, double[] Noise, double[] T, int[] Labels, double[][] Targets, int N);

    private static Batch MakeBatch(int n, double[] t, int seed)
    {
        var rng = new Random(seed);
        double[] R(long count) => Enumerable.Range(0, (int)count).Select(_ => 2 * rng.NextDouble() - 1).ToArray();
        int size = Micro.InChannels * Micro.InputSize * Micro.InputSize;
        var targets = Micro.ZDims.Select(z => R((long)n * Micro.Tokens * z)).ToArray();
        return new Batch(R(n * size), R(n * size), t, Enumerable.Range(0, n).Select(i => i % (Micro.NumClasses + 1)).ToArray(), targets, n);
    }

    private static int[] ImageShape(int n) => [n, Micro.InChannels, Micro.InputSize, Micro.InputSize];

    private static (Tensor x0, Tensor noise, Tensor labels, Tensor[] targets) Upload(Batch b, DType dtype) =>
    (
        OpCheck.Make(dtype, b.X0, ImageShape(b.N)),
        OpCheck.Make(dtype, b.Noise, ImageShape(b.N)),
        Tensor.FromArray(Backend, b.Labels, b.N),
        b.Targets.Select((v, j) => OpCheck.Make(dtype, v, b.N, Micro.Tokens, Micro.ZDims[j])).ToArray()
    );

    /// <summary>Mean over samples and encoders of the per-token negative cosine, all on the host.</summary>
    private static double HandCosine(Tensor[] projections, double[][] targets, int n)
    {
        double total = 0;
        for (int j = 0; j < targets.Length; j++)
        {
            var z = projections[j].ToDoubleArray();
            int dim = Micro.ZDims[j];
            for (int row = 0; row < n * Micro.Tokens; row++)
            {
                double dot = 0, nz = 0, nh = 0;
                for (int k = 0; k < dim; k++)
                {
                    double a = z[row * dim + k], b = targets[j][row * dim + k];
                    dot += a * b;
                    nz += a * a;
                    nh += b * b;
                }
                total += -dot / (Math.Max(Math.Sqrt(nz), 1e-12) * Math.Max(Math.Sqrt(nh), 1e-12)) / Micro.Tokens;
            }
        }
        return total / (targets.Length * n);
    }

    [TestCase("linear")]
    [TestCase("cosine")]
    public void FreshModelLossMatchesHandComputation(string path)
    {
        using var model = new SiT(Backend, DType.F64, Micro, seed: 4);
        var obj = new Objective(new ObjectiveConfig(PathType: path));
        var b = MakeBatch(3, [0.2, 0.5, 0.9], seed: 1);
        using var tape = new Tape();
        var (x0, noise, labels, targets) = Upload(b, DType.F64);
        var r = obj.Compute(model, x0, noise, b.T, labels, targets);

        // By hand: x_t, v, and (output = 0) denoise = mean of v^2.
        int size = b.X0.Length / b.N;
        var xt = new double[b.X0.Length];
        var v = new double[b.X0.Length];
        for (int i = 0; i < b.X0.Length; i++)
        {
            Objective.Interpolant(path, b.T[i / size], out double a, out double s, out double da, out double ds);
            xt[i] = a * b.X0[i] + s * b.Noise[i];
            v[i] = da * b.X0[i] + ds * b.Noise[i];
        }
        Assert.That(r.Output.ToDoubleArray().All(o => o == 0), Is.True, "a fresh SiT outputs exactly 0");
        Assert.That(r.Target.ToDoubleArray(), Is.EqualTo(v).Within(1e-15));
        double denoise = v.Select(e => e * e).Average();
        Assert.That(r.Denoise.Item(), Is.EqualTo(denoise).Within(1e-13));

        // The projections the model makes from the hand-built x_t.
        Tensor[] projections;
        using (Tape.NoGrad())
            (_, projections) = model.Forward(OpCheck.Make(DType.F64, xt, ImageShape(b.N)), OpCheck.Make(DType.F64, b.T, b.N), labels);
        for (int j = 0; j < projections.Length; j++)
            Assert.That(r.Projections[j].ToDoubleArray(), Is.EqualTo(projections[j].ToDoubleArray()).Within(1e-12));
        double proj = HandCosine(projections, b.Targets, b.N);
        Assert.That(proj, Is.InRange(-1.0, 1.0));
        Assert.That(r.Proj.Item(), Is.EqualTo(proj).Within(1e-12));
        Assert.That(r.Total.Item(), Is.EqualTo(denoise + 0.5 * proj).Within(1e-12));
        Assert.That(r.Total.Count, Is.EqualTo(1));
        Assert.That(r.Total.RequiresGrad, Is.True);
    }

    [Test]
    public void Float32MatchesFloat64()
    {
        var b = MakeBatch(2, [0.3, 0.7], seed: 2);
        var obj = new Objective();
        double[] Run(DType dtype)
        {
            using var model = new SiT(Backend, dtype, Micro, seed: 8);
            using var tape = new Tape();
            var (x0, noise, labels, targets) = Upload(b, dtype);
            var r = obj.Compute(model, x0, noise, b.T, labels, targets);
            return [r.Total.Item(), r.Denoise.Item(), r.Proj.Item()];
        }
        Assert.That(Run(DType.F32), Is.EqualTo(Run(DType.F64)).Within(2e-5));
    }

    [Test]
    public void LinearPathAtOneIsPureNoise()
    {
        // The opposite of the SiT repo: t = 1 is noise, t = 0 is data, and v = eps - x0.
        using var model = new SiT(Backend, DType.F64, Micro, seed: 5);
        var obj = new Objective();
        var b = MakeBatch(2, [1.0, 1.0], seed: 3);
        using var tape = new Tape();
        var (x0, noise, labels, targets) = Upload(b, DType.F64);
        var r = obj.Compute(model, x0, noise, b.T, labels, targets);
        Assert.That(r.Target.ToDoubleArray(), Is.EqualTo(b.Noise.Zip(b.X0, (e, x) => e - x)).Within(1e-15));
        using (Tape.NoGrad())
        {
            var (_, fromNoise) = model.Forward(noise, OpCheck.Make(DType.F64, b.T, 2), labels);
            var (_, fromData) = model.Forward(x0, OpCheck.Make(DType.F64, b.T, 2), labels);
            Assert.That(r.Projections[0].ToDoubleArray(), Is.EqualTo(fromNoise[0].ToDoubleArray()), "x_1 = noise");
            Assert.That(r.Projections[0].ToDoubleArray(), Is.Not.EqualTo(fromData[0].ToDoubleArray()), "x_1 is not data");
        }
        Objective.Interpolant("linear", 0, out double a0, out double s0, out _, out _);
        Assert.That((a0, s0), Is.EqualTo((1.0, 0.0)), "x_0 = data");
    }

    [Test]
    public void ZeroProjCoeffSkipsTheProjectionLoss()
    {
        using var model = new SiT(Backend, DType.F64, Micro, seed: 6);
        var obj = new Objective(new ObjectiveConfig(ProjCoeff: 0));
        var b = MakeBatch(2, [0.4, 0.6], seed: 4);
        using var tape = new Tape();
        var (x0, noise, labels, _) = Upload(b, DType.F64);
        var r = obj.Compute(model, x0, noise, b.T, labels, []); // no targets needed
        Assert.That(r.Total.Item(), Is.EqualTo(r.Denoise.Item()));
        Assert.That(r.Proj.Item(), Is.EqualTo(0));
        tape.Backward(r.Total);
        Assert.That(model["final_layer.linear.weight"].Grad!.ToDoubleArray().Any(g => g != 0), Is.True);
        var pg = model["projectors.0.4.weight"].Grad;
        Assert.That(pg == null || pg.ToDoubleArray().All(g => g == 0), Is.True, "no gradient reaches the projector");
    }

    [Test]
    public void BackwardReachesTheParameters()
    {
        using var model = new SiT(Backend, DType.F64, Micro, seed: 7);
        var obj = new Objective();
        var b = MakeBatch(3, [0.1, 0.5, 0.8], seed: 5);
        using var tape = new Tape();
        var (x0, noise, labels, targets) = Upload(b, DType.F64);
        var r = obj.Compute(model, x0, noise, b.T, labels, targets);
        tape.Backward(r.Total);
        foreach (var name in new[] { "final_layer.linear.weight", "final_layer.linear.bias", "projectors.0.4.weight", "projectors.1.4.weight", "projectors.0.0.weight" })
        {
            var g = model[name].Grad;
            Assert.That(g, Is.Not.Null, name);
            Assert.That(g!.ToDoubleArray().Any(v => v != 0) && g.ToDoubleArray().All(double.IsFinite), Is.True, $"{name} has a gradient");
        }
        // Targets are constants: no gradient is kept for them.
        Assert.That(targets.All(t => t.Grad == null), Is.True);
    }

    [Test]
    public void TensorTimesOverloadMatchesArrayOverload()
    {
        using var model = new SiT(Backend, DType.F64, Micro, seed: 9);
        var obj = new Objective(new ObjectiveConfig(PathType: "cosine"));
        var b = MakeBatch(2, [0.25, 0.75], seed: 6);
        using var tape = new Tape();
        var (x0, noise, labels, targets) = Upload(b, DType.F64);
        var a = obj.Compute(model, x0, noise, b.T, labels, targets);
        var c = obj.Compute(model, x0, noise, OpCheck.Make(DType.F64, b.T, 2), labels, targets);
        Assert.That(c.Total.Item(), Is.EqualTo(a.Total.Item()));
        Assert.That(c.Proj.Item(), Is.EqualTo(a.Proj.Item()));
    }

    [Test]
    public void NtXentProjectionLoss()
    {
        using var model = new SiT(Backend, DType.F64, Micro, seed: 10);
        var obj = new Objective(new ObjectiveConfig(ProjLoss: "ntxent", NtXentTemperature: 0.2, ProjCoeff: 1.0));
        var b = MakeBatch(2, [0.3, 0.6], seed: 7);
        using var tape = new Tape();
        var (x0, noise, labels, targets) = Upload(b, DType.F64);
        var r = obj.Compute(model, x0, noise, b.T, labels, targets);
        double expected = 0;
        for (int j = 0; j < targets.Length; j++)
            expected += Autograd.Ops.Mean(Autograd.Ops.NtXentLoss(r.Projections[j], targets[j], 0.2)).Item() / targets.Length;
        Assert.That(r.Proj.Item(), Is.EqualTo(expected).Within(1e-12));
        Assert.That(r.Total.Item(), Is.EqualTo(r.Denoise.Item() + expected).Within(1e-12));
        tape.Backward(r.Total);
        Assert.That(model["projectors.1.4.weight"].Grad!.ToDoubleArray().Any(g => g != 0), Is.True);
    }

    [Test]
    public void MismatchedTargetsThrow()
    {
        using var model = new SiT(Backend, DType.F64, Micro, seed: 11);
        var b = MakeBatch(2, [0.3, 0.6], seed: 8);
        using var tape = new Tape();
        var (x0, noise, labels, targets) = Upload(b, DType.F64);
        var obj = new Objective();
        var ex = Assert.Throws<ShapeMismatchException>(() => obj.Compute(model, x0, noise, b.T, labels, [targets[0]]));
        Assert.That(ex!.Message, Does.Contain("1 encoder targets for 2 projectors"));
        Assert.Throws<ShapeMismatchException>(() => obj.Compute(model, x0, noise, [0.5], labels, targets));
    }

    // ---- config ----

    [TestCase("PathType", "path_type must be linear or cosine, got 'vp'.")]
    [TestCase("Weighting", "weighting must be uniform or lognormal, got 'vp'.")]
    [TestCase("ProjLoss", "proj_loss must be cosine or ntxent, got 'vp'.")]
    public void ConfigRejectsUnknownNames(string field, string message)
    {
        var cfg = field switch
        {
            "PathType" => new ObjectiveConfig(PathType: "vp"),
            "Weighting" => new ObjectiveConfig(Weighting: "vp"),
            _ => new ObjectiveConfig(ProjLoss: "vp"),
        };
        Assert.That(Assert.Throws<ArgumentException>(() => cfg.Validate())!.Message, Is.EqualTo(message));
        Assert.That(Assert.Throws<ArgumentException>(() => new Objective(cfg))!.Message, Is.EqualTo(message));
    }

    [Test]
    public void ConfigRejectsOutOfRangeNumbers()
    {
        Assert.That(Assert.Throws<ArgumentException>(() => new ObjectiveConfig(ProjCoeff: -1).Validate())!.Message,
            Is.EqualTo("proj_coeff must be finite and >= 0, got -1."));
        Assert.That(Assert.Throws<ArgumentException>(() => new ObjectiveConfig(NtXentTemperature: 0).Validate())!.Message,
            Is.EqualTo("ntxent_temperature must be finite and > 0, got 0."));
        Assert.That(Assert.Throws<ArgumentException>(() => new ObjectiveConfig(ClassDropout: 1).Validate())!.Message,
            Is.EqualTo("class_dropout must be in [0, 1), got 1."));
        var defaults = new ObjectiveConfig();
        Assert.That(defaults.Validate(), Is.SameAs(defaults));
        Assert.That((defaults.PathType, defaults.Weighting, defaults.ProjCoeff, defaults.ProjLoss, defaults.ClassDropout),
            Is.EqualTo(("linear", "uniform", 0.5, "cosine", 0.1)));
    }
}
