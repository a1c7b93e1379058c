using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Diffusion;
using Repa.Runtime.Models;
using Repa.Tests.Checks;
using static Repa.Autograd.Ops;

namespace Repa.Tests;

/// <summary>
/// DiT's Gaussian diffusion in float64: the linear schedule against closed forms, space_timesteps index sets, the
/// posterior against Bayes' rule, the VLB op against independent formulas, q_sample statistics, and the DDPM/DDIM
/// samplers driven by the exact denoiser of a Gaussian data distribution.
/// </summary>
[TestFixture]
public class DiffusionTests
{
    private static IBackend Backend => OpCheck.Backend;

    private static readonly GaussianDiffusion Training = GaussianDiffusion.Create("");

    // ---- schedule ----

    [Test]
    public void LinearBetasAreNumpyLinspaceFrom1e4To002()
    {
        var betas = GaussianDiffusion.NamedBetaSchedule("linear", 1000);
        Assert.That(betas, Has.Length.EqualTo(1000));
        Assert.That(betas[0], Is.EqualTo(1e-4));
        Assert.That(betas[999], Is.EqualTo(0.02), "numpy sets the endpoint exactly");
        Assert.That(betas[499], Is.EqualTo(1e-4 + 499 * (0.02 - 1e-4) / 999).Within(1e-17));
        for (int i = 1; i < 1000; i++) Assert.That(betas[i] - betas[i - 1], Is.EqualTo(0.0199 / 999).Within(1e-15));
        // Scaled by 1000 / steps for other lengths (get_named_beta_schedule).
        var short100 = GaussianDiffusion.NamedBetaSchedule("linear", 100);
        Assert.That((short100[0], short100[99]), Is.EqualTo((1e-3, 0.2)));
    }

    [Test]
    public void AlphasCumprodMatchesTheSumOfLogs()
    {
        // Independent closed form: alphā_t = exp(sum_{i <= t} log(1 - beta_i)) with beta_i = 1e-4 + i (0.0199 / 999).
        double logSum = 0;
        for (int t = 0; t < 1000; t++)
        {
            logSum += Math.Log(1 - (t == 999 ? 0.02 : 1e-4 + t * (0.0199 / 999)));
            if (t is 0 or 1 or 499 or 999)
                Assert.That(Training.AlphasCumprod[t], Is.EqualTo(Math.Exp(logSum)).Within(1e-12 * Math.Exp(logSum)), $"t = {t}");
        }
        Assert.That(Training.AlphasCumprod[0], Is.EqualTo(1 - 1e-4).Within(1e-16));
        // log alphā_999 = -(sum beta + sum beta^2 / 2 + ...) = -10.1177..., the well-known alphā_T of about 4.04e-5.
        Assert.That(Training.AlphasCumprod[999], Is.EqualTo(4.0358e-5).Within(2e-8));
        Assert.That(Training.NumTimesteps, Is.EqualTo(1000));
        Assert.That(Training.TimestepMap, Is.EqualTo(Enumerable.Range(0, 1000)));
        // "" goes through SpacedDiffusion: the betas are recomputed as 1 - alphā_t / alphā_{t-1}, equal to rounding.
        var betas = GaussianDiffusion.NamedBetaSchedule("linear", 1000);
        for (int t = 0; t < 1000; t++) Assert.That(Training.Betas[t], Is.EqualTo(betas[t]).Within(1e-11 * betas[t]));
    }

    [Test]
    public void DerivedArraysFollowTheirDefinitions()
    {
        var d = Training;
        foreach (int t in new[] { 0, 1, 2, 250, 998, 999 })
        {
            double ab = d.AlphasCumprod[t], prev = t == 0 ? 1 : d.AlphasCumprod[t - 1], beta = d.Betas[t];
            Assert.That(d.AlphasCumprodPrev[t], Is.EqualTo(prev));
            Assert.That(d.AlphasCumprodNext[t], Is.EqualTo(t == 999 ? 0 : d.AlphasCumprod[t + 1]));
            Assert.That(d.SqrtAlphasCumprod[t] * d.SqrtAlphasCumprod[t], Is.EqualTo(ab).Within(1e-15));
            Assert.That(d.SqrtOneMinusAlphasCumprod[t], Is.EqualTo(Math.Sqrt(1 - ab)).Within(1e-15));
            Assert.That(d.LogOneMinusAlphasCumprod[t], Is.EqualTo(Math.Log(1 - ab)).Within(1e-13));
            Assert.That(d.SqrtRecipAlphasCumprod[t] * d.SqrtRecipAlphasCumprod[t] * ab, Is.EqualTo(1).Within(1e-14));
            Assert.That(d.SqrtRecipm1AlphasCumprod[t], Is.EqualTo(Math.Sqrt((1 - ab) / ab)).Within(1e-12 * Math.Sqrt((1 - ab) / ab)));
            Assert.That(d.LogBetas[t], Is.EqualTo(Math.Log(beta)));
            Assert.That(d.PosteriorLogVarianceClipped[t], Is.EqualTo(Math.Log(d.PosteriorVariance[t == 0 ? 1 : t])));
        }
        Assert.That(d.PosteriorVariance[0], Is.EqualTo(0), "no uncertainty about x0 given x_0");
    }

    [Test]
    public void CosineScheduleFollowsItsAlphaBar()
    {
        static double F(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
        var d = GaussianDiffusion.Create("", "squaredcos_cap_v2");
        foreach (int t in new[] { 0, 100, 500, 900 }) Assert.That(d.AlphasCumprod[t], Is.EqualTo(F((t + 1) / 1000.0) / F(0)).Within(1e-12));
        Assert.That(d.Betas[999], Is.EqualTo(0.999).Within(1e-9), "capped at max_beta");
        Assert.That(() => GaussianDiffusion.NamedBetaSchedule("quad", 10), Throws.ArgumentException.With.Message.Contains("quad"));
    }

    // ---- respacing ----

    [Test]
    public void SpaceTimesteps250TakesRoundedStridesOf999Over249()
    {
        var steps = GaussianDiffusion.SpaceTimesteps(1000, "250");
        // k (L - 1) / (K - 1) = 999 k / 249 is never a half integer (249 is odd and 83 | k only where it is an integer),
        // so integer rounding of the exact fraction is the reference's round() of its accumulated float.
        var expected = Enumerable.Range(0, 250).Select(k => (2 * 999 * k + 249) / (2 * 249)).ToArray();
        Assert.That(steps, Is.EqualTo(expected));
        Assert.That(steps.Take(6), Is.EqualTo(new[] { 0, 4, 8, 12, 16, 20 }));
        Assert.That(steps[^1], Is.EqualTo(999));
    }

    [Test]
    public void SpaceTimestepsDdimAndSections()
    {
        Assert.That(GaussianDiffusion.SpaceTimesteps(1000, "ddim50"), Is.EqualTo(Enumerable.Range(0, 50).Select(k => 20 * k)));
        Assert.That(GaussianDiffusion.SpaceTimesteps(1000, "ddim250"), Is.EqualTo(Enumerable.Range(0, 250).Select(k => 4 * k)));
        Assert.That(GaussianDiffusion.SpaceTimesteps(1000, "10"), Is.EqualTo(Enumerable.Range(0, 10).Select(k => 111 * k)));
        Assert.That(GaussianDiffusion.SpaceTimesteps(1000, "1000"), Is.EqualTo(Enumerable.Range(0, 1000)));
        // The docstring's example: 300 steps as [10, 15, 20] over three sections of 100.
        var sections = GaussianDiffusion.SpaceTimesteps(300, "10,15,20");
        Assert.That(sections, Has.Length.EqualTo(45));
        Assert.That(sections.Take(10), Is.EqualTo(Enumerable.Range(0, 10).Select(k => 11 * k)));
        Assert.That((sections[10], sections[24], sections[25], sections[44]), Is.EqualTo((100, 199, 200, 299)));
        // Uneven sections: 11 steps as [2, 1] -> sections of 6 (0..5) and 5 (6..10); a count of 1 takes the start.
        Assert.That(GaussianDiffusion.SpaceTimesteps(11, "2,1"), Is.EqualTo(new[] { 0, 5, 6 }));
        Assert.That(() => GaussianDiffusion.SpaceTimesteps(1000, "ddim999"), Throws.ArgumentException.With.Message.Contains("ddim999"));
        Assert.That(() => GaussianDiffusion.SpaceTimesteps(10, "11"), Throws.ArgumentException.With.Message.Contains("10 steps into 11"));
        Assert.That(() => GaussianDiffusion.SpaceTimesteps(10, "abc"), Throws.ArgumentException.With.Message.Contains("'abc'"));
    }

    [TestCase("250"), TestCase("ddim50"), TestCase("10")]
    public void RespacedProcessKeepsAlphasCumprodAtTheKeptSteps(string respacing)
    {
        var d = GaussianDiffusion.Create(respacing);
        var kept = GaussianDiffusion.SpaceTimesteps(1000, respacing);
        Assert.That(d.TimestepMap, Is.EqualTo(kept));
        Assert.That(d.NumTimesteps, Is.EqualTo(kept.Length));
        Assert.That(d.OriginalNumSteps, Is.EqualTo(1000));
        for (int i = 0; i < kept.Length; i++)
        {
            double original = Training.AlphasCumprod[kept[i]];
            Assert.That(d.AlphasCumprod[i], Is.EqualTo(original).Within(1e-12 * original), $"step {i} = original {kept[i]}");
        }
        // The first kept step is 0, so the respaced beta_0 is the original one.
        Assert.That(d.Betas[0], Is.EqualTo(Training.Betas[0]).Within(1e-16));
    }

    // ---- posterior ----

    [TestCase(""), TestCase("250")]
    public void PosteriorIsBayesRuleForScalarGaussians(string respacing)
    {
        // q(x_{t-1} | x0) = N(sqrt(ab_prev) x0, 1 - ab_prev), q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t):
        // the posterior precision is the sum of 1 / (1 - ab_prev) and alpha_t / beta_t, its mean the precision-weighted sum.
        var d = GaussianDiffusion.Create(respacing);
        double x0 = 0.37, xt = -1.3;
        for (int t = 1; t < d.NumTimesteps; t += 37)
        {
            double abPrev = d.AlphasCumprod[t - 1], beta = d.Betas[t], alpha = 1 - beta;
            double precision = 1 / (1 - abPrev) + alpha / beta;
            double mean = (Math.Sqrt(abPrev) * x0 / (1 - abPrev) + Math.Sqrt(alpha) * xt / beta) / precision;
            var got = new double[1];
            d.QPosteriorMean([x0], [xt], [t], got);
            Assert.That(got[0], Is.EqualTo(mean).Within(1e-12), $"mean at t = {t}");
            Assert.That(d.PosteriorVariance[t], Is.EqualTo(1 / precision).Within(1e-12 / precision), $"variance at t = {t}");
        }
    }

    [Test]
    public void PMeanVarianceInterpolatesTheLogVarianceAndInvertsEps()
    {
        var d = Training;
        // One sample, 2 channels of 1 pixel: eps = (0.5, -2), v = (-1, 1) -> min and max of the range.
        double[] x = [0.8, -0.4], output = [0.5, -2, -1, 1];
        int[] t = [400];
        var mean = new double[2];
        var logVar = new double[2];
        var x0 = new double[2];
        d.PMeanVariance(output, x, t, 2, false, mean, logVar, x0);
        Assert.That(logVar, Is.EqualTo(new[] { d.PosteriorLogVarianceClipped[400], d.LogBetas[400] }));
        double ab = d.AlphasCumprod[400];
        for (int k = 0; k < 2; k++)
        {
            // x_t = sqrt(ab) x0 + sqrt(1 - ab) eps.
            Assert.That(Math.Sqrt(ab) * x0[k] + Math.Sqrt(1 - ab) * output[k], Is.EqualTo(x[k]).Within(1e-12));
            var posterior = new double[1];
            d.QPosteriorMean([x0[k]], [x[k]], t, posterior);
            Assert.That(mean[k], Is.EqualTo(posterior[0]).Within(1e-12));
        }
        d.PMeanVariance(output, x, t, 2, true, mean, logVar, x0);
        Assert.That(x0.All(v => v is >= -1 and <= 1), Is.True, "clip_denoised clamps x0_hat to [-1, 1]");
        Assert.That(() => d.PMeanVariance(new double[2], x, t, 2, false, mean, logVar, x0), Throws.ArgumentException.With.Message.Contains("twice"));
    }

    // ---- the VLB op against independent float64 formulas ----

    private static double[] Vlb(double[] v, double[] mean, double[] trueMean, double[] x0, double[] stepParams, int n)
    {
        using var tape = new Tape();
        int inner = v.Length / n;
        Tensor T(double[] a, params int[] shape) => Tensor.FromArray(Backend, a, shape);
        return DiffusionVlbTerm(T(v, n, inner), T(mean, n, inner), T(trueMean, n, inner), T(x0, n, inner), T(stepParams, n, 4)).ToDoubleArray();
    }

    [Test]
    public void KlTermIsTheGaussianKlInBits()
    {
        // KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2, averaged, / ln 2.
        double minLog = -3, maxLog = -1, trueLogVar = -2.5;
        double[] v = [-1, 0, 0.5, 1], mean = [0.1, -0.2, 0.3, 0.0], trueMean = [0.1, 0.5, -0.3, 1.0];
        double expected = 0;
        for (int i = 0; i < 4; i++)
        {
            double logVar = (v[i] + 1) / 2 * maxLog + (1 - (v[i] + 1) / 2) * minLog;
            double s1 = Math.Exp(trueLogVar / 2), s2 = Math.Exp(logVar / 2), dm = trueMean[i] - mean[i];
            expected += Math.Log(s2 / s1) + (s1 * s1 + dm * dm) / (2 * s2 * s2) - 0.5;
        }
        expected /= 4 * Math.Log(2);
        var got = Vlb(v, mean, trueMean, new double[4], [minLog, maxLog, trueLogVar, 0], 1);
        Assert.That(got[0], Is.EqualTo(expected).Within(1e-14));
        // Equal distributions: KL = 0.
        Assert.That(Vlb([-1], [0.4], [0.4], [0], [-2, -1, -2, 0], 1)[0], Is.EqualTo(0).Within(1e-16));
    }

    [Test]
    public void DecoderTermIsTheDiscretisedGaussianNllInBits()
    {
        // 0.5 (1 + tanh(u)) = sigmoid(2u): the reference's tanh approximation of the normal CDF in another form.
        static double Cdf(double x) => 1 / (1 + Math.Exp(-2 * Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
        double minLog = -8, maxLog = -6;
        double[] x0 = [-1, 1, 0.2, -0.5], mean = [-0.99, 1.01, 0.21, -0.5], v = [0.3, -0.5, 1, -1];
        double expected = 0;
        for (int i = 0; i < 4; i++)
        {
            double logVar = (v[i] + 1) / 2 * maxLog + (1 - (v[i] + 1) / 2) * minLog, sd = Math.Exp(logVar / 2);
            double upper = Cdf((x0[i] - mean[i] + 1 / 255.0) / sd), lower = Cdf((x0[i] - mean[i] - 1 / 255.0) / sd);
            // Edge bins are open-ended: below -0.999 everything under the upper edge, above 0.999 everything over the lower.
            double p = x0[i] < -0.999 ? upper : x0[i] > 0.999 ? 1 - lower : upper - lower;
            expected -= Math.Log(p);
        }
        expected /= 4 * Math.Log(2);
        var got = Vlb(v, mean, new double[4], x0, [minLog, maxLog, -7, 1], 1);
        Assert.That(got[0], Is.EqualTo(expected).Within(1e-12 * expected));
        // A tight decoder centred on the pixel puts nearly all mass in its bin: about 0 bits. A far one is clamped at 1e-12.
        Assert.That(Vlb([-1], [0.5], [0], [0.5], [-20, -19, -20, 1], 1)[0], Is.EqualTo(0).Within(1e-9));
        Assert.That(Vlb([-1], [0.9], [0], [-0.5], [-20, -19, -20, 1], 1)[0], Is.EqualTo(-Math.Log(1e-12) / Math.Log(2)).Within(1e-9));
    }

    [Test]
    public void VlbPicksDecoderOrKlPerSample()
    {
        double[] v = [0.2, -0.3], mean = [0.1, 0.2], trueMean = [0.0, 0.4], x0 = [0.1, 0.15];
        var both = Vlb(v, mean, trueMean, x0, [-9, -7, -9, 1, -4, -3, -4, 0], 2);
        var decoder = Vlb([0.2], [0.1], [0.0], [0.1], [-9, -7, -9, 1], 1);
        var kl = Vlb([-0.3], [0.2], [0.4], [0.15], [-4, -3, -4, 0], 1);
        Assert.That(both, Is.EqualTo(new[] { decoder[0], kl[0] }));
    }

    [Test]
    public void VlbRefusesAMeanThatRequiresGrad()
    {
        using var tape = new Tape();
        var a = Tensor.FromArray(Backend, new double[] { 0.1, 0.2 }, 1, 2);
        var mean = Tensor.FromArray(Backend, new double[] { 0.1, 0.2 }, 1, 2);
        mean.RequiresGrad = true;
        var p = Tensor.FromArray(Backend, new double[] { -2, -1, -2, 0 }, 1, 4);
        Assert.That(() => DiffusionVlbTerm(a, mean, a, a, p), Throws.InstanceOf<ShapeMismatchException>().With.Message.Contains("detach"));
        Assert.That(() => DiffusionVlbTerm(a, a, a, a, Tensor.FromArray(Backend, new double[3], 1, 3)), Throws.InstanceOf<ShapeMismatchException>());
    }

    // ---- q_sample ----

    [Test]
    public void QSampleHasTheForwardMarginal()
    {
        const int m = 1 << 15;
        const double x0Value = 0.7;
        var x0 = Enumerable.Repeat(x0Value, m).ToArray();
        var noise = new double[m];
        Philox.Normal(11, 0, 0, noise);
        foreach (int t in new[] { 0, 499, 999 })
        {
            var xt = new double[m];
            Training.QSample(x0, Enumerable.Repeat(t, 1).ToArray(), noise, xt);
            double ab = Training.AlphasCumprod[t];
            double mean = xt.Average(), variance = xt.Select(v => (v - mean) * (v - mean)).Sum() / (m - 1);
            Assert.That(mean, Is.EqualTo(Math.Sqrt(ab) * x0Value).Within(5 * Math.Sqrt((1 - ab) / m)), $"mean at t = {t}");
            Assert.That(variance, Is.EqualTo(1 - ab).Within(5 * (1 - ab) * Math.Sqrt(2.0 / m)), $"variance at t = {t}");
        }
    }

    // ---- samplers with the exact denoiser of Gaussian data ----

    /// <summary>
    /// The exact eps-predictor and reverse variance for data x0 ~ N(mu, s^2) i.i.d. per element, on the process
    /// <paramref name="d"/> (it is called with original timesteps, so it looks up alphā in the unspaced process):
    /// x_t ~ N(sqrt(ab) mu, V), V = ab s^2 + 1 - ab; E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / V; the true reverse
    /// variance of the (respaced) chain is beta_tilde + coef1^2 Var(x0 | x_t), with Var(x0 | x_t) = s^2 (1 - ab) / V, and
    /// the variance value v puts that inside the learned range (min_log .. max_log).
    /// </summary>
    private static DiffusionModel GaussianOracle(GaussianDiffusion d, double mu, double s, int channels)
    {
        return (x, timesteps, labels, output) =>
        {
            int n = timesteps.Length, inner = x.Length / n;
            for (int j = 0; j < n; j++)
            {
                int original = timesteps[j], i = IndexOf(d.TimestepMap, original);
                double ab = Training.AlphasCumprod[original], abPrev = i == 0 ? 1 : Training.AlphasCumprod[d.TimestepMap[i - 1]];
                double variance = ab * s * s + 1 - ab;
                double v = 0;
                if (i > 0)
                {
                    double beta = 1 - ab / abPrev, posterior = beta * (1 - abPrev) / (1 - ab), coef1 = beta * Math.Sqrt(abPrev) / (1 - ab);
                    double exact = posterior + coef1 * coef1 * s * s * (1 - ab) / variance;
                    v = 2 * (Math.Log(exact) - Math.Log(posterior)) / (Math.Log(beta) - Math.Log(posterior)) - 1;
                }
                for (int k = 0; k < inner; k++)
                {
                    output[2 * j * inner + k] = Math.Sqrt(1 - ab) * (x[j * inner + k] - Math.Sqrt(ab) * mu) / variance;
                    output[2 * j * inner + inner + k] = v;
                }
            }
        };
    }

    private static int IndexOf(IReadOnlyList<int> list, int value)
    {
        for (int i = 0; i < list.Count; i++) if (list[i] == value) return i;
        throw new AssertionException($"timestep {value} is not in the map");
    }

    private static (double mean, double variance) Stats(double[] x)
    {
        double mean = x.Average();
        return (mean, x.Select(v => (v - mean) * (v - mean)).Sum() / (x.Length - 1));
    }

    [Test]
    public void DdpmWithTheExactDenoiserReproducesTheGaussian()
    {
        const double mu = 0.3, s = 0.5;
        var d = GaussianDiffusion.Create("250");
        int[] shape = [8, 1, 64, 64];
        int m = 8 * 64 * 64;
        int steps = 0;
        var x = d.PSampleLoop(GaussianOracle(d, mu, s, 1), shape, new int[8], seed: 5, onStep: k => steps = k);
        Assert.That(steps, Is.EqualTo(250));
        var (mean, variance) = Stats(x);
        // Every step samples the exact reverse conditional, so only Monte Carlo error remains (and a 1e-4 relative
        // variance deficit from the noise-free last step).
        Assert.That(mean, Is.EqualTo(mu).Within(5 * s / Math.Sqrt(m)));
        Assert.That(variance, Is.EqualTo(s * s).Within(5 * s * s * Math.Sqrt(2.0 / m)));
        // Reproducible, and a sample depends on its index, not on the batch it was drawn in.
        var again = d.PSampleLoop(GaussianOracle(d, mu, s, 1), [2, 1, 64, 64], new int[2], seed: 5, firstSample: 3);
        Assert.That(again, Is.EqualTo(x.AsSpan(3 * 4096, 2 * 4096).ToArray()));
    }

    [TestCase("250", false), TestCase("ddim50", true), TestCase("10", true)]
    public void APointMassIsReachedExactly(string respacing, bool ddim)
    {
        // s = 0: x0_hat = mu exactly at every step, and the last step (alphā_prev = 1) returns x0_hat without noise.
        const double mu = -0.42;
        var d = GaussianDiffusion.Create(respacing);
        var model = GaussianOracle(d, mu, 0, 1);
        var x = ddim ? d.DdimSampleLoop(model, [2, 1, 3, 3], [0, 1], seed: 1) : d.PSampleLoop(model, [2, 1, 3, 3], [0, 1], seed: 1);
        Assert.That(x, Is.All.EqualTo(mu).Within(1e-12));
    }

    [Test]
    public void DdimRotatesPureNoiseByTheAnglesOfTheSchedule()
    {
        // Data N(0, 1): every marginal is N(0, 1) and eps_hat = sqrt(1 - ab) x. A DDIM step maps x to
        // (sqrt(ab_prev ab) + sqrt((1 - ab_prev)(1 - ab))) x = cos(theta_prev - theta) x with theta = acos(sqrt(ab)), so
        // the whole run scales x_T by the product of the cosines of the angle steps (a known DDIM discretisation loss).
        var d = GaussianDiffusion.Create("ddim50");
        var x = d.DdimSampleLoop(GaussianOracle(d, 0, 1, 1), [1, 1, 4, 4], [0], seed: 9);
        var start = new double[16];
        Philox.Normal(9, GaussianDiffusion.InitialNoiseStream, 0, start);
        double factor = 1;
        for (int i = d.NumTimesteps - 1; i >= 0; i--)
            factor *= Math.Cos(Math.Acos(Math.Sqrt(d.AlphasCumprodPrev[i])) - Math.Acos(Math.Sqrt(d.AlphasCumprod[i])));
        for (int k = 0; k < 16; k++) Assert.That(x[k], Is.EqualTo(factor * start[k]).Within(1e-12));
        Assert.That(factor, Is.LessThan(1).And.GreaterThan(0.9));
    }

    [Test]
    public void DdimWithTheExactDenoiserApproximatesTheGaussian()
    {
        const double mu = 0.3, s = 0.5;
        var d = GaussianDiffusion.Create("ddim250");
        int[] shape = [4, 1, 64, 64];
        var x = d.DdimSampleLoop(GaussianOracle(d, mu, s, 1), shape, new int[4], seed: 2);
        var (mean, variance) = Stats(x);
        // Deterministic but not exact: 250 DDIM steps lose about 3.5% of the variance here (as the N(0, 1) case above
        // shows); eta = 1 uses the posterior variance, which lacks the Var(x0 | x_t) term, and loses about as much.
        Assert.That(mean, Is.EqualTo(mu).Within(5 * s / Math.Sqrt(x.Length)));
        Assert.That(variance, Is.EqualTo(s * s).Within(0.05 * s * s));
        Assert.That(d.DdimSampleLoop(GaussianOracle(d, mu, s, 1), shape, new int[4], seed: 2), Is.EqualTo(x), "eta 0 is deterministic");
        var stochastic = d.DdimSampleLoop(GaussianOracle(d, mu, s, 1), shape, new int[4], seed: 2, eta: 1);
        Assert.That(stochastic, Is.Not.EqualTo(x));
        var (mean1, variance1) = Stats(stochastic);
        Assert.That(mean1, Is.EqualTo(mu).Within(5 * s / Math.Sqrt(x.Length)));
        Assert.That(variance1, Is.EqualTo(s * s).Within(0.05 * s * s));
    }

    // ---- models: guidance and the DiT adapter ----

    [Test]
    public void GuidanceCombinesTheFirstThreeChannelsLikeDiT()
    {
        // A fake model with C = 2 (4 output channels of 1 pixel): output channel k = label * 10 + k + x.
        var seen = new List<int>();
        DiffusionModel model = (x, t, y, output) =>
        {
            seen.AddRange(y.ToArray());
            for (int j = 0; j < t.Length; j++)
                for (int k = 0; k < 4; k++) output[4 * j + k] = y[j] * 10 + k + x[2 * j] + t[j];
        };
        var guided = DiffusionModels.WithGuidance(model, channels: 2, scale: 4, nullClass: 7);
        var o = new double[8];
        guided([0.5, 0.5, 1.0, 1.0], [3, 3], [1, 2], o);
        Assert.That(seen, Is.EqualTo(new[] { 1, 2, 7, 7 }), "[y; null]");
        for (int j = 0; j < 2; j++)
        {
            double x = j == 0 ? 0.5 : 1.0;
            int y = j + 1;
            for (int k = 0; k < 4; k++)
            {
                double cond = y * 10 + k + x + 3, uncond = 70 + k + x + 3;
                Assert.That(o[4 * j + k], Is.EqualTo(k < 3 ? uncond + 4 * (cond - uncond) : cond), $"sample {j} channel {k}");
            }
        }
        var all = DiffusionModels.WithGuidance(model, channels: 2, scale: 4, nullClass: 7, guidedChannels: 2);
        all([0.5, 0.5, 1.0, 1.0], [3, 3], [1, 2], o);
        Assert.That(o[2], Is.EqualTo(10 + 2 + 0.5 + 3), "guiding the C eps channels leaves the variance channels conditional");
    }

    [Test]
    public void DiTAdapterFeedsTheModelAndDdimRunsOnIt()
    {
        var cfg = SiTConfig.Preset("DiT-T/4") with { InputSize = 8 };
        using var model = new SiT(Backend, DType.F32, cfg, seed: 3);
        var d = GaussianDiffusion.Create("ddim5");
        // A fresh DiT outputs eps = 0, v = 0: DDIM then rescales x_T by 1 / sqrt(alphā) of its first (noisiest) step.
        var x = d.DdimSampleLoop(DiffusionModels.FromSiT(model), [2, 1, 8, 8], [1, 10], seed: 4);
        var start = new double[128];
        Philox.Normal(4, GaussianDiffusion.InitialNoiseStream, 0, start);
        Assert.That(d.TimestepMap, Is.EqualTo(new[] { 0, 200, 400, 600, 800 }));
        for (int k = 0; k < 128; k++) Assert.That(x[k], Is.EqualTo(start[k] / Math.Sqrt(Training.AlphasCumprod[800])).Within(1e-9 * Math.Abs(x[k]) + 1e-12));
        using var sit = new SiT(Backend, DType.F32, SiTConfig.Tiny, seed: 3);
        Assert.That(() => DiffusionModels.FromSiT(sit), Throws.ArgumentException.With.Message.Contains("learned variance"));
    }
}
