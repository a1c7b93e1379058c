using System.Text.Json;
using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime;
using Repa.Runtime.Diffusion;
using Repa.Runtime.Models;
using Repa.Runtime.Training;
using Repa.Tests.Checks;
using static Repa.Autograd.Ops;

namespace Repa.Tests;

/// <summary>
/// DiT's hybrid training loss: loss = mse(eps) + vb, vb recomputed here from the model's output with independent float64
/// formulas, the stop-gradient on the mean, timestep draws, and short `train --objective ddpm` runs.
/// </summary>
[TestFixture]
public class DdpmObjectiveTests
{
    private static IBackend Backend => OpCheck.Backend;

    /// <summary>A small DiT (2 channels of 4x4, patch 2) with its zero-initialised layers perturbed so every output is live.</summary>
    private static SiT MicroDiT(DType dtype)
    {
        var cfg = new SiTConfig
        {
            Name = "dit-micro", InputSize = 4, PatchSize = 2, InChannels = 2, HiddenSize = 16, Depth = 2, NumHeads = 2,
            NumClasses = 3, EncoderDepth = 1, ZDims = [], LearnSigma = true,
        };
        var model = new SiT(Backend, dtype, cfg, seed: 5);
        var rng = new Random(3);
        foreach (var (name, tensor) in model.StateDict())
        {
            if (!name.Contains("adaLN_modulation") && !name.StartsWith("final_layer.linear")) continue;
            var values = Enumerable.Range(0, (int)tensor.Count).Select(_ => 0.3 * (2 * rng.NextDouble() - 1)).ToArray();
            if (dtype == DType.F64) Backend.Upload<double>(values, tensor.Buffer);
            else Backend.Upload<float>(values.Select(v => (float)v).ToArray(), tensor.Buffer);
        }
        return model;
    }

    private static double[] Values(int count, int seed, double scale = 1) =>
        Enumerable.Range(0, count).Select(i => scale * Math.Sin(seed * 7.1 + i * 1.37)).ToArray();

    [Test]
    public void LossIsMsePlusTheVlbOfTheFrozenMean()
    {
        using var model = MicroDiT(DType.F64);
        var objective = new DdpmObjective();
        var d = objective.Diffusion;
        const int n = 3, c = 2, inner = 2 * 16;
        // x0 on [-1, 1] with pixels exactly at -1 and 1, so the t = 0 sample exercises the open-ended bins.
        var x0 = Values(n * inner, 1);
        x0[0] = -1;
        x0[1] = 1;
        var noise = Values(n * inner, 2);
        double[] t = [0, 1, 731];
        using var tape = new Tape();
        var loss = objective.Compute(model, Tensor.FromArray(Backend, x0, n, c, 4, 4), Tensor.FromArray(Backend, noise, n, c, 4, 4), t,
            Tensor.FromArray(Backend, new[] { 0, 2, 3 }, n), []);
        Assert.That(loss.Output.Shape, Is.EqualTo(new[] { n, c, 4, 4 }));
        Assert.That(loss.Target.ToDoubleArray(), Is.EqualTo(noise));
        Assert.That(loss.Proj.Item(), Is.EqualTo(0));

        // Independently: x_t, the model's [eps | v] on it, then DiT's mse and vb per sample.
        var xt = new double[n * inner];
        for (int s = 0; s < n; s++)
        {
            int step = (int)t[s];
            for (int i = 0; i < inner; i++)
                xt[s * inner + i] = Math.Sqrt(d.AlphasCumprod[step]) * x0[s * inner + i] + Math.Sqrt(1 - d.AlphasCumprod[step]) * noise[s * inner + i];
        }
        var output = model.Forward(Tensor.FromArray(Backend, xt, n, c, 4, 4), Tensor.FromArray(Backend, t, n), Tensor.FromArray(Backend, new[] { 0, 2, 3 }, n))
            .Output.ToDoubleArray();
        static double Cdf(double x) => 1 / (1 + Math.Exp(-2 * Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
        double mse = 0, vb = 0;
        for (int s = 0; s < n; s++)
        {
            int step = (int)t[s];
            double ab = d.AlphasCumprod[step], abPrev = step == 0 ? 1 : d.AlphasCumprod[step - 1], beta = d.Betas[step];
            double posteriorVar = beta * (1 - abPrev) / (1 - ab);
            double minLog = Math.Log(step == 0 ? d.Betas[1] * (1 - d.AlphasCumprod[0]) / (1 - d.AlphasCumprod[1]) : posteriorVar), maxLog = Math.Log(beta);
            double sampleMse = 0, sampleVb = 0;
            for (int i = 0; i < inner; i++)
            {
                double eps = output[2 * s * inner + i], v = output[2 * s * inner + inner + i], x = xt[s * inner + i], clean = x0[s * inner + i];
                sampleMse += (eps - noise[s * inner + i]) * (eps - noise[s * inner + i]);
                double logVar = (v + 1) / 2 * maxLog + (1 - (v + 1) / 2) * minLog;
                double x0Hat = (x - Math.Sqrt(1 - ab) * eps) / Math.Sqrt(ab);
                // Posterior mean by Bayes' rule (precision-weighted), for the model's x0_hat and for the true x0.
                double Mean(double start) => step == 0 ? start
                    : (Math.Sqrt(abPrev) * start / (1 - abPrev) + Math.Sqrt(1 - beta) * x / beta) * posteriorVar;
                double modelMean = Mean(x0Hat), trueMean = Mean(clean);
                if (step == 0)
                {
                    double sd = Math.Exp(logVar / 2), upper = Cdf((clean - modelMean + 1 / 255.0) / sd), lower = Cdf((clean - modelMean - 1 / 255.0) / sd);
                    double p = clean < -0.999 ? upper : clean > 0.999 ? 1 - lower : upper - lower;
                    sampleVb -= Math.Log(Math.Max(p, 1e-12));
                }
                else
                {
                    double s1 = Math.Sqrt(posteriorVar), s2 = Math.Exp(logVar / 2), dm = trueMean - modelMean;
                    sampleVb += Math.Log(s2 / s1) + (s1 * s1 + dm * dm) / (2 * s2 * s2) - 0.5;
                }
            }
            mse += sampleMse / inner / n;
            vb += sampleVb / inner / Math.Log(2) / n;
        }
        Assert.That(loss.Denoise.Item(), Is.EqualTo(mse).Within(1e-12 * mse));
        Assert.That(loss.Vb!.Item(), Is.EqualTo(vb).Within(1e-9 * vb));
        Assert.That(loss.Total.Item(), Is.EqualTo(mse + vb).Within(1e-12 * (mse + vb)));
        Assert.That(vb, Is.GreaterThan(0));
    }

    [Test]
    public void TheVlbTrainsOnlyTheVarianceChannels()
    {
        // Back-propagating vb alone: the final linear's eps rows (feature index (pr p + pc) 2C + ch with ch < C) get no
        // gradient, its variance rows do; the mse alone gives the opposite.
        using var model = MicroDiT(DType.F64);
        var objective = new DdpmObjective();
        var x0 = Tensor.FromArray(Backend, Values(64, 1, 0.8), 2, 2, 4, 4);
        var noise = Tensor.FromArray(Backend, Values(64, 2), 2, 2, 4, 4);
        var y = Tensor.FromArray(Backend, new[] { 1, 3 }, 2);
        (bool epsRows, bool varRows) Touched(Func<LossResult, Tensor> part)
        {
            foreach (var p in model.Parameters()) p.ZeroGrad();
            using var tape = new Tape();
            tape.Backward(part(objective.Compute(model, x0, noise, [0, 500], y, [])));
            var g = model["final_layer.linear.weight"].Grad!.ToDoubleArray();
            bool eps = false, variance = false;
            for (int row = 0; row < 16; row++)
            {
                bool any = g.Skip(row * 16).Take(16).Any(v => v != 0);
                if (row % 4 < 2) eps |= any;
                else variance |= any;
            }
            return (eps, variance);
        }
        Assert.That(Touched(l => l.Vb!), Is.EqualTo((false, true)), "vb: variance rows only (the mean is frozen)");
        Assert.That(Touched(l => l.Denoise), Is.EqualTo((true, false)), "mse: eps rows only");
    }

    [Test]
    public void RepaOnDiTAddsTheProjectionLoss()
    {
        var cfg = new SiTConfig
        {
            Name = "dit-micro-repa", InputSize = 4, PatchSize = 2, InChannels = 1, HiddenSize = 16, Depth = 2, NumHeads = 2,
            NumClasses = 3, EncoderDepth = 1, ZDims = [5], ProjectorDim = 8, LearnSigma = true,
        };
        using var model = new SiT(Backend, DType.F64, cfg, seed: 2);
        using var tape = new Tape();
        var objective = new DdpmObjective(new ObjectiveConfig(ProjCoeff: 0.5));
        var x = Tensor.FromArray(Backend, Values(32, 1, 0.5), 2, 1, 4, 4);
        var target = Tensor.FromArray(Backend, Values(40, 3), 2, 4, 5);
        var loss = objective.Compute(model, x, Tensor.FromArray(Backend, Values(32, 2), 2, 1, 4, 4), [3, 900], Tensor.FromArray(Backend, new[] { 0, 1 }, 2), [target]);
        double proj = CosineAlignmentLoss(loss.Projections[0], target).ToDoubleArray().Average();
        Assert.That(loss.Proj.Item(), Is.EqualTo(proj).Within(1e-12));
        Assert.That(loss.Total.Item(), Is.EqualTo(loss.Denoise.Item() + loss.Vb!.Item() + 0.5 * proj).Within(1e-12));
        Assert.That(() => objective.Compute(model, x, x, [3, 900], Tensor.FromArray(Backend, new[] { 0, 1 }, 2), []),
            Throws.InstanceOf<ShapeMismatchException>().With.Message.Contains("encoder targets"));
    }

    [Test]
    public void TimestepsAreUniformIntegersPerStep()
    {
        var objective = new DdpmObjective();
        var t = objective.SampleTimes(seed: 1, step: 3, n: 20000);
        Assert.That(t.All(v => v >= 0 && v <= 999 && v == Math.Floor(v)), Is.True);
        Assert.That(t.Average(), Is.EqualTo(499.5).Within(5 * 288.7 / Math.Sqrt(t.Length)));
        Assert.That(t.Distinct().Count(), Is.EqualTo(1000));
        Assert.That(objective.SampleTimes(1, 3, 5), Is.EqualTo(t.Take(5)));
        Assert.That(objective.SampleTimes(1, 4, 5), Is.Not.EqualTo(t.Take(5)));
    }

    [Test]
    public void ComputeRejectsModelsAndTimestepsThatDoNotFit()
    {
        using var tape = new Tape();
        var objective = new DdpmObjective();
        using var sit = new SiT(Backend, DType.F64, SiTConfig.Tiny with { InputSize = 4, PatchSize = 2, Depth = 1, EncoderDepth = 1, ZDims = [] }, 1);
        var x = Tensor.FromArray(Backend, new double[16], 1, 1, 4, 4);
        var y = Tensor.FromArray(Backend, new[] { 0 }, 1);
        Assert.That(() => objective.Compute(sit, x, x, [5], y, []), Throws.ArgumentException.With.Message.Contains("learned variance"));
        using var dit = MicroDiT(DType.F64);
        var x2 = Tensor.FromArray(Backend, new double[32], 1, 2, 4, 4);
        Assert.That(() => objective.Compute(dit, x2, x2, [1000], y, []), Throws.ArgumentException.With.Message.Contains("0..999"));
        Assert.That(() => objective.Compute(dit, x2, x2, [2.5], y, []), Throws.ArgumentException.With.Message.Contains("integer"));
    }

    // ---- train --objective ddpm ----

    [Test]
    public void TrainingDiTWithTheDdpmObjectiveRunsAndRecordsIt()
    {
        TrainerTests.Data();
        string folder = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            var o = new StringWriter();
            var e = new StringWriter();
            int code = Cli.Run(["train", "--config", "DiT-T/2", "--objective", "ddpm", "--encoder", "none", "--proj-coeff", "0",
                "--steps", "2", "--batch", "4", "--threads", "2", "--out", folder, "--sample-grid", "false"], o, e);
            Assert.That(code, Is.EqualTo(0), e.ToString());
            Assert.That(o.ToString(), Does.Contain("objective: ddpm (1000 steps").And.Contain(", vb "));
            var steps = File.ReadAllLines(Path.Combine(folder, "metrics.jsonl")).Select(l => JsonSerializer.Deserialize<StepMetrics>(l)!).ToList();
            Assert.That(steps, Has.Count.EqualTo(2));
            foreach (var m in steps)
            {
                Assert.That(new[] { m.Loss, m.Denoise, m.Vb, m.GradNorm }.All(double.IsFinite), Is.True);
                Assert.That(m.Vb, Is.GreaterThan(0));
                // Fresh DiT predicts eps = 0: the mse is about E[eps^2] = 1.
                Assert.That(m.Denoise, Is.InRange(0.5, 2.0));
                Assert.That(m.Loss, Is.EqualTo(m.Denoise + m.Vb).Within(1e-5 * m.Loss));
            }
            using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "config.json")));
            Assert.That(config.RootElement.GetProperty("objective").GetString(), Is.EqualTo("ddpm"));
            Assert.That(config.RootElement.GetProperty("learn_sigma").GetBoolean(), Is.True);
            Assert.That(config.RootElement.GetProperty("model").GetString(), Is.EqualTo("DiT-T/2"));
            var (loaded, _) = ForwardCommand.LoadConfig(Path.Combine(folder, "config.json"));
            Assert.That((loaded.LearnSigma, loaded.OutChannels), Is.EqualTo((true, 2)), "forward rebuilds the DiT");
        }
        finally
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, true);
        }
    }

    [TestCase(new[] { "train", "--objective", "ddpm", "--proj-coeff", "0", "--encoder", "none" }, "--objective ddpm needs a DiT preset")]
    [TestCase(new[] { "train", "--config", "DiT-T/2", "--proj-coeff", "0", "--encoder", "none" }, "DiT-T/2 learns a variance")]
    [TestCase(new[] { "train", "--objective", "edm" }, "--objective must be one of")]
    public void ObjectiveAndPresetMustAgree(string[] args, string message)
    {
        TrainerTests.Data();
        CliRun.AssertOneSentenceError(args, message);
    }
}
