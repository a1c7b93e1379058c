using NUnit.Framework;
using Repa.Kernels;

namespace Repa.Tests;

/// <summary>Philox4x32-10: Random123 known answers, slice/thread independence, and the distributions' moments and shape.</summary>
[TestFixture]
public class PhiloxTests
{
    // Random123 kat_vectors give ctr = {c0, c1, c2, c3} and key = {k0, k1}. Block takes
    // key = k1:k0, counterHi = c3:c2, counterLo = c1:c0 (high word first in each 64-bit value).
    [TestCase(0ul, 0ul, 0ul, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u)]
    [TestCase(0xffffffff_fffffffful, 0xffffffff_fffffffful, 0xffffffff_fffffffful, 0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu)]
    // ctr (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), key (0xa4093822, 0x299f31d0).
    [TestCase(0x299f31d0_a4093822ul, 0x03707344_13198a2eul, 0x85a308d3_243f6a88ul, 0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u)]
    public void KnownAnswers(ulong key, ulong counterHi, ulong counterLo, uint e0, uint e1, uint e2, uint e3)
    {
        Assert.That(Philox.Block(key, counterHi, counterLo), Is.EqualTo((e0, e1, e2, e3)));
    }

    [Test]
    public void FillsUseTheDocumentedWordsAndMaps()
    {
        const ulong seed = 0x1234_5678_9abc_def0, stream = 7, offset = 13;
        var bits = new uint[11];
        var uf = new float[11];
        var ud = new double[11];
        var nd = new double[11];
        var nf = new float[11];
        Philox.Bits(seed, stream, offset, bits);
        Philox.Uniform(seed, stream, offset, uf);
        Philox.Uniform(seed, stream, offset, ud);
        Philox.Normal(seed, stream, offset, nd);
        Philox.Normal(seed, stream, offset, nf);
        for (int i = 0; i < bits.Length; i++)
        {
            ulong g = offset + (ulong)i;
            var (w0, w1, w2, w3) = Philox.Block(seed, stream, g / 4);
            uint[] w = [w0, w1, w2, w3];
            int j = (int)(g % 4);
            Assert.That(bits[i], Is.EqualTo(w[j]), $"bits[{i}]");
            Assert.That(uf[i], Is.EqualTo(((w[j] >> 8) + 1) / 16777216.0f), $"uniform f32[{i}]");
            Assert.That(ud[i], Is.EqualTo((w[j] + 1.0) / 4294967296.0), $"uniform f64[{i}]");
            uint a = w[j & 2], b = w[(j & 2) + 1];
            double r = Math.Sqrt(-2 * Math.Log((a + 1.0) / 4294967296.0)), t = 2 * Math.PI * (b + 0.5) / 4294967296.0;
            double z = (j & 1) == 0 ? r * Math.Sin(t) : r * Math.Cos(t);
            Assert.That(nd[i], Is.EqualTo(z).Within(1e-14), $"normal f64[{i}]");
            Assert.That(nf[i], Is.EqualTo((float)nd[i]), $"normal f32[{i}] is the f64 value rounded");
        }
    }

    [Test]
    public void SlicesEqualTheSameRangeOfOneFill()
    {
        const ulong seed = 42, stream = 3;
        const int n = 200_003; // large enough to be split over threads, not a multiple of 4
        var whole = new float[n];
        var wholeN = new double[n];
        Philox.Uniform(seed, stream, 0, whole);
        Philox.Normal(seed, stream, 0, wholeN);
        foreach (var (start, len) in new[] { (0, 1), (1, 1), (3, 2), (5, 7), (17, 33), (70_001, 65_537), (n - 3, 3) })
        {
            var part = new float[len];
            var partN = new double[len];
            Philox.Uniform(seed, stream, (ulong)start, part);
            Philox.Normal(seed, stream, (ulong)start, partN);
            Assert.That(part, Is.EqualTo(whole.AsSpan(start, len).ToArray()), $"uniform slice {start}+{len}");
            Assert.That(partN, Is.EqualTo(wholeN.AsSpan(start, len).ToArray()), $"normal slice {start}+{len}");
        }
    }

    [Test]
    public void SameSeedSameNumbersOtherSeedOrStreamOtherNumbers()
    {
        float[] Fill(ulong seed, ulong stream)
        {
            var a = new float[1000];
            Philox.Uniform(seed, stream, 0, a);
            return a;
        }
        var baseline = Fill(1, 0);
        Assert.That(Fill(1, 0), Is.EqualTo(baseline));
        foreach (var (seed, stream) in new[] { (2ul, 0ul), (1ul, 1ul), (1ul << 32, 0ul), (1ul, 1ul << 32) })
        {
            var other = Fill(seed, stream);
            int same = 0;
            for (int i = 0; i < other.Length; i++) same += other[i] == baseline[i] ? 1 : 0;
            Assert.That(same, Is.LessThan(3), $"seed {seed} stream {stream} repeats seed 1 stream 0");
        }
    }

    [Test]
    public void ResultsDoNotDependOnThreadCount()
    {
        const int n = 1 << 18;
        var one = new float[n];
        var oneN = new double[n];
        Philox.Uniform(9, 1, 5, one, threads: 1);
        Philox.Normal(9, 1, 5, oneN, threads: 1);
        foreach (int threads in new[] { 2, 3, 7, 16 })
        {
            var many = new float[n];
            var manyN = new double[n];
            Philox.Uniform(9, 1, 5, many, threads);
            Philox.Normal(9, 1, 5, manyN, threads);
            Assert.That(many, Is.EqualTo(one), $"uniform, {threads} threads");
            Assert.That(manyN, Is.EqualTo(oneN), $"normal, {threads} threads");
        }
    }

    [Test]
    public void UniformIsInRangeWithTheRightMoments()
    {
        const int n = 1_000_000;
        var f = new float[n];
        var d = new double[n];
        Philox.Uniform(2024, 0, 0, f);
        Philox.Uniform(2024, 0, 0, d);
        foreach (var (name, xs) in new[] { ("f32", Array.ConvertAll(f, x => (double)x)), ("f64", d) })
        {
            Assert.That(xs.Min(), Is.GreaterThan(0.0), name);
            Assert.That(xs.Max(), Is.LessThanOrEqualTo(1.0), name);
            double mean = xs.Average();
            double variance = xs.Sum(x => (x - 0.5) * (x - 0.5)) / n;
            // sd(mean) = sqrt(1/12n); sd(mean of (x-1/2)^2) = sqrt((1/80 - 1/144)/n) = sqrt(1/180n).
            Assert.That(mean, Is.EqualTo(0.5).Within(5 * Math.Sqrt(1.0 / 12 / n)), $"{name} mean");
            Assert.That(variance, Is.EqualTo(1.0 / 12).Within(5 * Math.Sqrt(1.0 / 180 / n)), $"{name} variance");
        }
    }

    [Test]
    public void NormalHasTheRightMomentsAndShape()
    {
        const int n = 1_000_000;
        var f = new float[n];
        var d = new double[n];
        Philox.Normal(77, 2, 0, f);
        Philox.Normal(77, 2, 0, d);
        foreach (var (name, xs) in new[] { ("f32", Array.ConvertAll(f, x => (double)x)), ("f64", d) })
        {
            Assert.That(xs.All(double.IsFinite), name);
            double mean = xs.Average();
            double variance = xs.Sum(x => x * x) / n;
            // sd(mean) = 1/sqrt(n); sd(mean of x^2) = sqrt(2/n).
            Assert.That(mean, Is.EqualTo(0).Within(5 / Math.Sqrt(n)), $"{name} mean");
            Assert.That(variance, Is.EqualTo(1).Within(5 * Math.Sqrt(2.0 / n)), $"{name} variance");

            // Kolmogorov-Smirnov on the first 1e5 samples at the 1% level: max |F_n - Phi| < 1.63 / sqrt(m).
            const int m = 100_000;
            var sorted = xs.Take(m).Order().ToArray();
            double dmax = 0;
            for (int i = 0; i < m; i++)
            {
                double phi = Phi(sorted[i]);
                dmax = Math.Max(dmax, Math.Max(Math.Abs((i + 1.0) / m - phi), Math.Abs((double)i / m - phi)));
            }
            Assert.That(dmax, Is.LessThan(1.63 / Math.Sqrt(m)), $"{name} KS distance");
        }
    }

    [Test]
    public void NormalFillsBothPairMembersAndTails()
    {
        // Box-Muller's sin and cos halves are each standard normal; check that both are used (odd/even variances).
        const int n = 400_000;
        var d = new double[n];
        Philox.Normal(5, 0, 0, d);
        double even = 0, odd = 0;
        for (int i = 0; i < n; i += 2) { even += d[i] * d[i]; odd += d[i + 1] * d[i + 1]; }
        Assert.That(even / (n / 2), Is.EqualTo(1).Within(5 * Math.Sqrt(2.0 / (n / 2))));
        Assert.That(odd / (n / 2), Is.EqualTo(1).Within(5 * Math.Sqrt(2.0 / (n / 2))));
        // P(|z| > 4) = 6.3e-5: about 25 of 4e5, so a few must appear (a 24-bit-uniform Box-Muller would still pass,
        // but a broken log/scale would not).
        Assert.That(d.Count(x => Math.Abs(x) > 4), Is.InRange(5, 60));
    }

    /// <summary>Standard normal CDF via erfc (Numerical Recipes' Chebyshev fit, |error| &lt; 1.2e-7: far below the KS bound).</summary>
    private static double Phi(double x) => 0.5 * Erfc(-x / Math.Sqrt(2));

    private static double Erfc(double x)
    {
        double z = Math.Abs(x), t = 1 / (1 + 0.5 * z);
        double r = t * Math.Exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
            + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
        return x >= 0 ? r : 2 - r;
    }
}
