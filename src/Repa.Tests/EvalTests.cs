using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Eval;

namespace Repa.Tests;

/// <summary>
/// Evaluation maths in float64: the symmetric eigensolver, Gaussian statistics (one-shot, streaming, saved), the Frechet
/// distance against closed forms and an independent matrix square root, CKNNA against a dense transcription of its
/// definition, and the linear probe.
/// </summary>
[TestFixture]
public class EvalTests
{
    // ---- helpers (deliberately naive: they are the independent side of each check) ----

    private static double[] Normal(ulong seed, int count, ulong stream = 0)
    {
        var x = new double[count];
        Philox.Normal(seed, stream, 0, x);
        return x;
    }

    private static double[] MatMul(double[] a, double[] b, int m, int k, int n)
    {
        var c = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int p = 0; p < k; p++)
            {
                double aip = a[i * k + p];
                for (int j = 0; j < n; j++) c[i * n + j] += aip * b[p * n + j];
            }
        return c;
    }

    private static double[] Transpose(double[] a, int m, int n)
    {
        var t = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) t[j * m + i] = a[i * n + j];
        return t;
    }

    private static double[] Identity(int n)
    {
        var a = new double[n * n];
        for (int i = 0; i < n; i++) a[i * n + i] = 1;
        return a;
    }

    private static double MaxAbs(double[] a) => a.Max(Math.Abs);

    private static double MaxAbsDiff(double[] a, double[] b)
    {
        Assert.That(b, Has.Length.EqualTo(a.Length));
        double m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }

    /// <summary>A random orthogonal matrix: Gram-Schmidt (twice, for orthogonality to rounding) on Gaussian rows.</summary>
    private static double[] RandomOrthogonal(int n, ulong seed)
    {
        var q = Normal(seed, n * n);
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < n; i++)
            {
                for (int j = 0; j < i; j++)
                {
                    double dot = 0;
                    for (int k = 0; k < n; k++) dot += q[i * n + k] * q[j * n + k];
                    for (int k = 0; k < n; k++) q[i * n + k] -= dot * q[j * n + k];
                }
                double norm = 0;
                for (int k = 0; k < n; k++) norm += q[i * n + k] * q[i * n + k];
                norm = Math.Sqrt(norm);
                for (int k = 0; k < n; k++) q[i * n + k] /= norm;
            }
        return q;
    }

    /// <summary>Q^T diag(values) Q for orthogonal Q (rows of Q are the eigenvectors).</summary>
    private static double[] WithSpectrum(double[] values, double[] q)
    {
        int n = values.Length;
        var a = new double[n * n];
        for (int j = 0; j < n; j++)
            for (int r = 0; r < n; r++)
            {
                double vr = values[j] * q[j * n + r];
                for (int c = 0; c < n; c++) a[r * n + c] += vr * q[j * n + c];
            }
        return a;
    }

    private static double[] RandomSymmetric(int n, ulong seed)
    {
        var a = Normal(seed, n * n);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < i; j++) a[i * n + j] = a[j * n + i];
        return a;
    }

    /// <summary>max |A v_j - lambda_j v_j| and max |V V^T - I|, both relative to the spectral scale.</summary>
    private static (double Residual, double Orthogonality) Check(double[] a, SymmetricEigenDecomposition eig)
    {
        int n = eig.N;
        double scale = Math.Max(eig.Values.Max(Math.Abs), double.Epsilon);
        double residual = 0;
        for (int j = 0; j < n; j++)
        {
            var v = eig.Vector(j);
            for (int r = 0; r < n; r++)
            {
                double av = 0;
                for (int c = 0; c < n; c++) av += a[r * n + c] * v[c];
                residual = Math.Max(residual, Math.Abs(av - eig.Values[j] * v[r]) / scale);
            }
        }
        var vvt = MatMul(eig.Vectors, Transpose(eig.Vectors, n, n), n, n, n);
        return (residual, MaxAbsDiff(vvt, Identity(n)));
    }

    // ---- symmetric eigensolver ----

    [TestCase(2)]
    [TestCase(3)]
    [TestCase(17)]
    [TestCase(64)]
    [TestCase(160)]
    public void EigenDecompositionReconstructsRandomSymmetricMatrices(int n)
    {
        var a = RandomSymmetric(n, 11 + (ulong)n);
        var eig = SymmetricEigen.Decompose(a, n);
        var (residual, orthogonality) = Check(a, eig);
        Assert.That(residual, Is.LessThan(1e-13 * n));
        Assert.That(orthogonality, Is.LessThan(1e-13 * n));
        Assert.That(eig.Values, Is.Ordered.Ascending);
        // The eigenvalue-only path runs the same QL without rotations: the same spectrum.
        Assert.That(MaxAbsDiff(SymmetricEigen.Eigenvalues(a, n), eig.Values), Is.LessThan(1e-13 * n * MaxAbs(eig.Values)));
        // Trace and Frobenius norm are spectral invariants.
        double trace = 0, frob = 0;
        for (int i = 0; i < n; i++) trace += a[i * n + i];
        foreach (double v in a) frob += v * v;
        Assert.That(eig.Values.Sum(), Is.EqualTo(trace).Within(1e-12 * n * n));
        Assert.That(eig.Values.Sum(v => v * v), Is.EqualTo(frob).Within(1e-12 * frob));
    }

    [Test]
    public void KnownSpectrumWithRepeatedEigenvaluesIsRecovered()
    {
        double[] spectrum = [-3, -3, -3, 0, 0, 1e-9, 2, 2, 2, 2, 5, 7.5, 7.5, 100];
        int n = spectrum.Length;
        var a = WithSpectrum(spectrum, RandomOrthogonal(n, 5));
        var eig = SymmetricEigen.Decompose(a, n);
        Assert.That(MaxAbsDiff(eig.Values, spectrum), Is.LessThan(1e-12 * 100));
        var (residual, orthogonality) = Check(a, eig);
        Assert.That(residual, Is.LessThan(1e-13));
        // Within a repeated eigenvalue any orthonormal basis is right: orthogonality is the property to hold.
        Assert.That(orthogonality, Is.LessThan(1e-13));
    }

    [Test]
    public void TridiagonalToeplitzMatchesItsClosedFormSpectrum()
    {
        // The second-difference matrix tridiag(-1, 2, -1) of order n has eigenvalues 2 - 2 cos(k pi / (n + 1)).
        const int n = 40;
        var a = new double[n * n];
        for (int i = 0; i < n; i++)
        {
            a[i * n + i] = 2;
            if (i > 0) a[i * n + i - 1] = a[(i - 1) * n + i] = -1;
        }
        var expected = Enumerable.Range(1, n).Select(k => 2 - 2 * Math.Cos(k * Math.PI / (n + 1))).Order().ToArray();
        Assert.That(MaxAbsDiff(SymmetricEigen.Eigenvalues(a, n), expected), Is.LessThan(1e-13));
        var eig = SymmetricEigen.Decompose(a, n);
        Assert.That(MaxAbsDiff(eig.Values, expected), Is.LessThan(1e-13));
        Assert.That(Check(a, eig).Residual, Is.LessThan(1e-13));
    }

    [Test]
    public void OneByOneDiagonalZeroAndTwoByTwoCases()
    {
        var one = SymmetricEigen.Decompose([-4.25], 1);
        Assert.That(one.Values, Is.EqualTo(new[] { -4.25 }));
        Assert.That(Math.Abs(one.Vectors[0]), Is.EqualTo(1.0));

        // Already diagonal (unsorted): the values come back sorted, the vectors are signed unit axes.
        double[] diag = [3, -1, 0, 10, 3];
        int n = diag.Length;
        var d = new double[n * n];
        for (int i = 0; i < n; i++) d[i * n + i] = diag[i];
        var eig = SymmetricEigen.Decompose(d, n);
        Assert.That(eig.Values, Is.EqualTo(diag.Order().ToArray()));
        Assert.That(Check(d, eig).Residual, Is.EqualTo(0).Within(1e-15));
        for (int j = 0; j < n; j++) Assert.That(eig.Vector(j).ToArray().Max(Math.Abs), Is.EqualTo(1.0));

        var zero = SymmetricEigen.Decompose(new double[9], 3);
        Assert.That(zero.Values, Is.EqualTo(new double[3]));
        Assert.That(Check(new double[9], zero).Orthogonality, Is.EqualTo(0));

        // 2 x 2 closed form: (a + c)/2 -+ sqrt(((a - c)/2)^2 + b^2).
        double a2 = 1.5, b2 = -0.75, c2 = -2;
        double mid = (a2 + c2) / 2, rad = Math.Sqrt((a2 - c2) * (a2 - c2) / 4 + b2 * b2);
        Assert.That(SymmetricEigen.Eigenvalues([a2, b2, b2, c2], 2), Is.EqualTo(new[] { mid - rad, mid + rad }).Within(1e-15));
    }

    [Test]
    public void NearSingularAndBadlyScaledSpectraKeepTheirSmallEigenvalues()
    {
        // Eigenvalues from 1 down to 1e-14: the small ones are exact to a few ulps of the largest.
        int n = 30;
        var spectrum = Enumerable.Range(0, n).Select(i => Math.Pow(10, -14.0 * i / (n - 1))).Order().ToArray();
        var a = WithSpectrum(spectrum, RandomOrthogonal(n, 9));
        var values = SymmetricEigen.Eigenvalues(a, n);
        Assert.That(MaxAbsDiff(values, spectrum), Is.LessThan(1e-14));
        var eig = SymmetricEigen.Decompose(a, n);
        Assert.That(Check(a, eig).Residual, Is.LessThan(1e-14));

        // A rank-2 Gram matrix (a covariance of 2 samples' worth of directions) in 8 dimensions: 6 zero eigenvalues.
        var x = Normal(21, 2 * 8);
        var gram = MatMul(Transpose(x, 2, 8), x, 8, 2, 8);
        var g = SymmetricEigen.Eigenvalues(gram, 8);
        Assert.That(g.Take(6).Max(Math.Abs), Is.LessThan(1e-14 * g[^1]));
        Assert.That(g[6], Is.GreaterThan(1e-3));

        // Huge and tiny magnitudes do not overflow or underflow the reflections.
        var big = WithSpectrum([1e150, -2e150, 3e150], RandomOrthogonal(3, 4));
        Assert.That(SymmetricEigen.Eigenvalues(big, 3).Zip(new[] { -2e150, 1e150, 3e150 }).Max(p => Math.Abs(p.First - p.Second)),
            Is.LessThan(1e-13 * 3e150));
        var tiny = WithSpectrum([1e-150, -2e-150, 3e-150], RandomOrthogonal(3, 4));
        Assert.That(SymmetricEigen.Eigenvalues(tiny, 3).Zip(new[] { -2e-150, 1e-150, 3e-150 }).Max(p => Math.Abs(p.First - p.Second)),
            Is.LessThan(1e-13 * 3e-150));
    }

    [Test]
    public void EigensolverRejectsBadInput()
    {
        Assert.Throws<ArgumentException>(() => SymmetricEigen.Eigenvalues(new double[5], 2));
        Assert.Throws<ArgumentException>(() => SymmetricEigen.Decompose([], 0));
        Assert.Throws<ArgumentException>(() => SymmetricEigen.Decompose([1, double.NaN, double.NaN, 1], 2));
    }

    // ---- Gaussian statistics ----

    /// <summary>Two-pass mean and (n - 1) covariance, written out naively.</summary>
    private static (double[] Mean, double[] Cov) TwoPass(double[] x, int n, int d)
    {
        var mean = new double[d];
        for (int r = 0; r < n; r++)
            for (int i = 0; i < d; i++) mean[i] += x[r * d + i];
        for (int i = 0; i < d; i++) mean[i] /= n;
        var cov = new double[d * d];
        for (int r = 0; r < n; r++)
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++) cov[i * d + j] += (x[r * d + i] - mean[i]) * (x[r * d + j] - mean[j]);
        for (int i = 0; i < d * d; i++) cov[i] /= n - 1;
        return (mean, cov);
    }

    /// <summary>Correlated, offset features: x = 1000 + z A with z standard normal, so centring matters.</summary>
    private static double[] Features(ulong seed, int n, int d, double offset = 1000)
    {
        var z = Normal(seed, n * d);
        var mix = Normal(seed + 1000, d * d);
        var x = MatMul(z, mix, n, d, d);
        for (int i = 0; i < x.Length; i++) x[i] = x[i] / Math.Sqrt(d) + offset + i % d;
        return x;
    }

    [Test]
    public void StreamingStatisticsEqualTheOneShotTwoPassOnes()
    {
        const int n = 2600, d = 13; // more rows than one chunk, so Add also splits internally
        var x = Features(1, n, d);
        var (mean, cov) = TwoPass(x, n, d);

        var oneShot = GaussianStats.FromFeatures(x, d);
        var acc = new GaussianStatsAccumulator(d);
        int start = 0;
        foreach (int rows in new[] { 1, 7, 100, 1500, n - 1608 })
        {
            acc.Add(x.AsSpan(start * d, rows * d));
            start += rows;
        }
        Assert.That(start, Is.EqualTo(n));
        var streamed = acc.ToStats();

        double covScale = MaxAbs(cov);
        foreach (var s in new[] { oneShot, streamed })
        {
            Assert.That(s.Count, Is.EqualTo(n));
            Assert.That(s.Dim, Is.EqualTo(d));
            Assert.That(MaxAbsDiff(s.Mean, mean), Is.LessThan(1e-12 * 1000));
            Assert.That(MaxAbsDiff(s.Covariance, cov), Is.LessThan(1e-12 * covScale));
            Assert.That(MaxAbsDiff(s.Covariance, Transpose(s.Covariance, d, d)), Is.EqualTo(0));
        }

        // fp32 batches accumulate in float64: the statistics of the rounded features.
        var x32 = x.Select(v => (float)v).ToArray();
        var (mean32, cov32) = TwoPass(x32.Select(v => (double)v).ToArray(), n, d);
        var from32 = GaussianStats.FromFeatures(x32, d);
        Assert.That(MaxAbsDiff(from32.Mean, mean32), Is.LessThan(1e-12 * 1000));
        Assert.That(MaxAbsDiff(from32.Covariance, cov32), Is.LessThan(1e-12 * covScale));
    }

    [Test]
    public void StatisticsRejectBadInput()
    {
        var acc = new GaussianStatsAccumulator(3);
        Assert.Throws<ArgumentException>(() => acc.Add(new double[4]));
        acc.Add(new double[] { 1, 2, 3 });
        Assert.Throws<InvalidOperationException>(() => acc.ToStats());
        var ex = Assert.Throws<ArgumentException>(() => acc.Add(new double[] { 1, 2, 3, 4, double.NaN, 6 }))!;
        Assert.That(ex.Message, Does.Contain("sample 2, feature 1"));
        Assert.Throws<ArgumentException>(() => _ = new GaussianStatsAccumulator(0));
        Assert.Throws<ArgumentException>(() => _ = new GaussianStats([1, 2], new double[3], 5));
    }

    [Test]
    public void StatisticsSaveAndLoadRoundTripExactly()
    {
        string dir = Path.Combine(Path.GetTempPath(), "repa-eval-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var stats = GaussianStats.FromFeatures(Features(2, 300, 7), 7);
            string path = Path.Combine(dir, "real.safetensors");
            stats.Save(path, new Dictionary<string, string> { ["encoder"] = "dinov2-vit-b" });
            var back = GaussianStats.Load(path, out var meta);
            Assert.That(back.Mean, Is.EqualTo(stats.Mean));
            Assert.That(back.Covariance, Is.EqualTo(stats.Covariance));
            Assert.That(back.Count, Is.EqualTo(300));
            Assert.That(meta["encoder"], Is.EqualTo("dinov2-vit-b"));
            Assert.That(FrechetDistance.Compute(stats, back), Is.EqualTo(FrechetDistance.Compute(stats, stats)));

            // Another tool's file: F32 "mu"/"sigma", no count, an extra tensor.
            var be = CpuBackend.Default;
            string f32 = Path.Combine(dir, "f32.safetensors");
            using (var mu = Tensor.FromArray(be, new[] { 1f, -2f }, 2))
            using (var sigma = Tensor.FromArray(be, new[] { 2f, 0.5f, 0.5f, 1f }, 2, 2))
            using (var extra = Tensor.FromArray(be, new[] { 7 }, 1))
                SafeTensors.Write(f32, [("mu", mu), ("sigma", sigma), ("n", extra)]);
            var other = GaussianStats.Load(f32);
            Assert.That(other.Mean, Is.EqualTo(new[] { 1.0, -2.0 }));
            Assert.That(other.Covariance, Is.EqualTo(new[] { 2.0, 0.5, 0.5, 1.0 }));
            Assert.That(other.Count, Is.EqualTo(0));

            Assert.Throws<FileNotFoundException>(() => GaussianStats.Load(Path.Combine(dir, "missing.safetensors")));
            string wrong = Path.Combine(dir, "wrong.safetensors");
            using (var mu = Tensor.FromArray(be, new[] { 1.0, 2.0 }, 2))
                SafeTensors.Write(wrong, [("mu", mu)]);
            Assert.That(() => GaussianStats.Load(wrong), Throws.TypeOf<InvalidDataException>().With.Message.Contains("sigma"));
            using (var mu = Tensor.FromArray(be, new[] { 1.0, 2.0 }, 2))
            using (var sigma = Tensor.FromArray(be, new[] { 1.0, 0, 0 }, 3))
                SafeTensors.Write(wrong, [("mu", mu), ("sigma", sigma)]);
            Assert.Throws<InvalidDataException>(() => GaussianStats.Load(wrong));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    // ---- Frechet distance ----

    [Test]
    public void FrechetDistanceOfIdenticalStatisticsIsZero()
    {
        foreach (var (n, d) in new[] { (3000, 48), (40, 64) }) // full-rank, and singular (fewer samples than dimensions)
        {
            var stats = GaussianStats.FromFeatures(Features(3, n, d, offset: 5), d);
            double trace = 0;
            for (int i = 0; i < d; i++) trace += stats.Covariance[i * d + i];
            double fd = FrechetDistance.Compute(stats, stats);
            Assert.That(Math.Abs(fd), Is.LessThan(1e-12 * 2 * trace), $"n = {n}, d = {d}");
        }
    }

    [Test]
    public void FrechetDistanceOfDiagonalGaussiansMatchesTheClosedForm()
    {
        // Diagonal (commuting) covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt a_i - sqrt b_i)^2.
        double[] a = [4, 1, 0.25, 9, 1e-6, 0], b = [1, 1, 1, 16, 0, 2];
        double[] mu1 = [0, 1, 2, 3, 4, 5], mu2 = [1, 1, 0, 3, 4, 4.5];
        int d = a.Length;
        double expected = 0;
        for (int i = 0; i < d; i++)
            expected += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]) + (Math.Sqrt(a[i]) - Math.Sqrt(b[i])) * (Math.Sqrt(a[i]) - Math.Sqrt(b[i]));
        var s1 = new double[d * d];
        var s2 = new double[d * d];
        for (int i = 0; i < d; i++)
        {
            s1[i * d + i] = a[i];
            s2[i * d + i] = b[i];
        }
        Assert.That(FrechetDistance.Compute(mu1, s1, mu2, s2), Is.EqualTo(expected).Within(1e-12 * expected));

        // Rotating both by the same orthogonal matrix (still commuting, no longer diagonal) changes nothing.
        var q = RandomOrthogonal(d, 8);
        double rotated = FrechetDistance.Compute(mu1, WithSpectrum(a, q), mu2, WithSpectrum(b, q));
        Assert.That(rotated, Is.EqualTo(expected).Within(1e-10 * expected));

        // One dimension: (mu1 - mu2)^2 + (sigma1 - sigma2)^2.
        Assert.That(FrechetDistance.Compute([2.0], [9.0], [-1.0], [0.25]), Is.EqualTo(9 + 2.5 * 2.5).Within(1e-14));
    }

    [Test]
    public void FrechetDistanceOfNonCommutingTwoByTwoMatchesTheClosedForm()
    {
        // For 2 x 2 X with eigenvalues x1, x2 >= 0: tr X^{1/2} = sqrt(x1) + sqrt(x2) = sqrt(tr X + 2 sqrt(det X)).
        double[] s1 = [2, 0.9, 0.9, 1], s2 = [0.5, -0.3, -0.3, 3];
        var prod = MatMul(s1, s2, 2, 2, 2);
        double det = (s1[0] * s1[3] - s1[1] * s1[2]) * (s2[0] * s2[3] - s2[1] * s2[2]);
        double traceSqrt = Math.Sqrt(prod[0] + prod[3] + 2 * Math.Sqrt(det));
        Assert.That(MaxAbsDiff(prod, Transpose(prod, 2, 2)), Is.GreaterThan(0.1), "the pair must not commute");
        Assert.That(FrechetDistance.TraceSqrtProduct(s1, s2, 2), Is.EqualTo(traceSqrt).Within(1e-14));
        double expected = 1 + 4 + 3 + 3.5 - 2 * traceSqrt;
        Assert.That(FrechetDistance.Compute([0.0, 0], s1, [1.0, 2], s2), Is.EqualTo(expected).Within(1e-13));
    }

    /// <summary>Gauss-Jordan inverse with partial pivoting.</summary>
    private static double[] Inverse(double[] a, int n)
    {
        var m = (double[])a.Clone();
        var inv = Identity(n);
        for (int c = 0; c < n; c++)
        {
            int p = c;
            for (int r = c + 1; r < n; r++)
                if (Math.Abs(m[r * n + c]) > Math.Abs(m[p * n + c])) p = r;
            for (int k = 0; k < n; k++)
            {
                (m[c * n + k], m[p * n + k]) = (m[p * n + k], m[c * n + k]);
                (inv[c * n + k], inv[p * n + k]) = (inv[p * n + k], inv[c * n + k]);
            }
            double piv = m[c * n + c];
            for (int k = 0; k < n; k++)
            {
                m[c * n + k] /= piv;
                inv[c * n + k] /= piv;
            }
            for (int r = 0; r < n; r++)
            {
                if (r == c) continue;
                double f = m[r * n + c];
                for (int k = 0; k < n; k++)
                {
                    m[r * n + k] -= f * m[c * n + k];
                    inv[r * n + k] -= f * inv[c * n + k];
                }
            }
        }
        return inv;
    }

    [Test]
    public void FrechetDistanceOfNonCommutingCovariancesMatchesDenmanBeaversSquareRoot()
    {
        // Independent route: the principal square root of the (non-symmetric) product S1 S2 by the Denman-Beavers
        // iteration Y <- (Y + Z^-1)/2, Z <- (Z + Y^-1)/2 from Y = S1 S2, Z = I, then its trace.
        const int d = 12;
        var s1 = GaussianStats.FromFeatures(Features(4, 200, d), d);
        var s2 = GaussianStats.FromFeatures(Features(5, 150, d, offset: -3), d);
        var y = MatMul(s1.Covariance, s2.Covariance, d, d, d);
        var z = Identity(d);
        for (int it = 0; it < 60; it++)
        {
            var yInv = Inverse(y, d);
            var zInv = Inverse(z, d);
            for (int i = 0; i < d * d; i++)
            {
                double yi = y[i];
                y[i] = 0.5 * (yi + zInv[i]);
                z[i] = 0.5 * (z[i] + yInv[i]);
            }
        }
        double traceSqrt = 0;
        for (int i = 0; i < d; i++) traceSqrt += y[i * d + i];
        double ours = FrechetDistance.TraceSqrtProduct(s1.Covariance, s2.Covariance, d);
        Assert.That(ours, Is.EqualTo(traceSqrt).Within(1e-10 * traceSqrt));

        double meanTerm = s1.Mean.Zip(s2.Mean).Sum(p => (p.First - p.Second) * (p.First - p.Second));
        double tr1 = 0, tr2 = 0;
        for (int i = 0; i < d; i++)
        {
            tr1 += s1.Covariance[i * d + i];
            tr2 += s2.Covariance[i * d + i];
        }
        double fd = FrechetDistance.Compute(s1, s2);
        Assert.That(fd, Is.EqualTo(meanTerm + tr1 + tr2 - 2 * traceSqrt).Within(1e-10 * (meanTerm + tr1 + tr2)));
        // FD is symmetric in its arguments (the route through sqrt(S1) is not, so this checks the numerics too).
        Assert.That(FrechetDistance.Compute(s2, s1), Is.EqualTo(fd).Within(1e-10 * (meanTerm + tr1 + tr2)));
        Assert.Throws<ArgumentException>(() => FrechetDistance.Compute(s1, GaussianStats.FromFeatures(Features(6, 10, 3), 3)));
    }

    [Test]
    public void FrechetDistanceBetweenSamplesOfShiftedStandardNormalsApproachesTheSquaredShift()
    {
        // N(0, I) vs N(m, I) in 8 dimensions with |m|^2 = 1: the population FD is exactly 1. With n = 20000 samples each,
        // the estimate's error is dominated by the sampled means: about 2 |m| sqrt(2/n) ~ 0.02 (one sd), plus a
        // covariance bias of order d^2 / n ~ 0.003.
        const int n = 20000, d = 8;
        var x = Normal(40, n * d);
        var y = Normal(41, n * d);
        for (int i = 0; i < y.Length; i++) y[i] += 1 / Math.Sqrt(d);
        double fd = FrechetDistance.Compute(GaussianStats.FromFeatures(x, d), GaussianStats.FromFeatures(y, d));
        TestContext.Out.WriteLine($"FD = {fd}");
        Assert.That(fd, Is.EqualTo(1.0).Within(0.06));
        // Same distribution: the FD is only the small estimation bias.
        var x2 = Normal(42, n * d);
        double same = FrechetDistance.Compute(GaussianStats.FromFeatures(x, d), GaussianStats.FromFeatures(x2, d));
        TestContext.Out.WriteLine($"FD same = {same}");
        Assert.That(same, Is.InRange(0.0, 0.01));
    }

    // ---- CKNNA ----

    /// <summary>
    /// platonic-rep's cknna (unbiased, not distance-agnostic) transcribed with dense n x n matrices: top-k of each row
    /// with the diagonal excluded, 0/1 masks, their product, and hsic_unbiased on the masked kernels.
    /// </summary>
    private static double DenseCknna(double[] a, int da, double[] b, int db, int n, int k, double eps)
    {
        double[] Kernel(double[] f, int d)
        {
            var g = new double[n * n];
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                {
                    double s = 0;
                    for (int c = 0; c < d; c++) s += f[i * d + c] * f[j * d + c];
                    g[i * n + j] = s;
                }
            return g;
        }
        double[] TopKMask(double[] g)
        {
            var m = new double[n * n];
            for (int i = 0; i < n; i++)
                foreach (int j in Enumerable.Range(0, n).Where(j => j != i).OrderByDescending(j => g[i * n + j]).ThenBy(j => j).Take(k))
                    m[i * n + j] = 1;
            return m;
        }
        double Hsic(double[] kt, double[] lt)
        {
            // hsic_unbiased: zero diagonals, then (sum(K~ * L~^T) + sum K~ sum L~ / ((m-1)(m-2)) - 2 sum(K~ L~) / (m-2)) / (m(m-3)).
            double first = 0, sk = 0, sl = 0, prod = 0;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                {
                    double kij = i == j ? 0 : kt[i * n + j], lij = i == j ? 0 : lt[i * n + j], lji = i == j ? 0 : lt[j * n + i];
                    first += kij * lji;
                    sk += kij;
                    sl += lij;
                }
            var kl = MatMul(kt.Select((v, idx) => idx / n == idx % n ? 0 : v).ToArray(), lt.Select((v, idx) => idx / n == idx % n ? 0 : v).ToArray(), n, n, n);
            prod = kl.Sum();
            double m = n;
            return (first + sk * sl / ((m - 1) * (m - 2)) - 2 * prod / (m - 2)) / (m * (m - 3));
        }
        double Similarity(double[] kk, double[] ll)
        {
            var mk = TopKMask(kk);
            var ml = TopKMask(ll);
            var mask = mk.Zip(ml, (x, y) => x * y).ToArray();
            return Hsic(mask.Zip(kk, (x, y) => x * y).ToArray(), mask.Zip(ll, (x, y) => x * y).ToArray());
        }
        var K = Kernel(a, da);
        var L = Kernel(b, db);
        return Similarity(K, L) / (Math.Sqrt(Similarity(K, K) * Similarity(L, L)) + eps);
    }

    /// <summary>Two views of the same samples: B = A W + noise, so their neighbourhoods partly agree.</summary>
    private static (double[] A, double[] B) CorrelatedViews(int n, int da, int db, double noise, ulong seed)
    {
        var a = Normal(seed, n * da);
        var w = Normal(seed + 1, da * db);
        var b = MatMul(a, w, n, da, db);
        var e = Normal(seed + 2, n * db);
        for (int i = 0; i < b.Length; i++) b[i] = b[i] / Math.Sqrt(da) + noise * e[i];
        return (a, b);
    }

    [TestCase(60, 5, 0.5)]
    [TestCase(97, 10, 1.0)]
    [TestCase(41, 40, 0.3)] // k = n - 1: every other sample is a neighbour
    public void CknnaMatchesADenseTranscriptionOfTheReference(int n, int k, double noise)
    {
        var (a, b) = CorrelatedViews(n, 7, 11, noise, (ulong)(n + k));
        double expected = DenseCknna(a, 7, b, 11, n, k, Cknna.ReferenceEpsilon);
        double got = Cknna.Compute(a, 7, b, 11, k, normalize: false);
        TestContext.Out.WriteLine($"n={n} k={k}: {got} vs {expected}");
        Assert.That(got, Is.EqualTo(expected).Within(1e-12 * Math.Abs(expected) + 1e-15));
        Assert.That(Math.Abs(expected), Is.GreaterThan(0.05), "the case must measure something");

        // normalize: the same metric on unit-norm rows.
        var an = (double[])a.Clone();
        var bn = (double[])b.Clone();
        Cknna.NormalizeRows(an, 7);
        Cknna.NormalizeRows(bn, 11);
        Assert.That(Cknna.Compute(a, 7, b, 11, k), Is.EqualTo(DenseCknna(an, 7, bn, 11, n, k, Cknna.ReferenceEpsilon)).Within(1e-12));
    }

    [Test]
    public void CknnaIsOneForIdenticalAndRotatedOrScaledCopies()
    {
        // Identical features: sim(K, L) = sim(K, K) = sim(L, L), so the ratio is 1 (exactly, with epsilon 0).
        const int n = 400, d = 24;
        var a = Normal(60, n * d);
        Assert.That(Cknna.Compute(a, d, a, d, epsilon: 0), Is.EqualTo(1.0).Within(1e-14));
        Assert.That(Cknna.Compute(a, d, a, d, normalize: false, epsilon: 0), Is.EqualTo(1.0).Within(1e-14));
        // The reference's epsilon only lowers it: s / (s + 1e-6).
        double withEps = Cknna.Compute(a, d, a, d);
        Assert.That(withEps, Is.LessThan(1.0).And.GreaterThan(0.99));

        // B = c A Q (Q orthogonal d x d, then embedded in 40 dimensions by an isometry): L = c^2 K, so the neighbours
        // agree and every sim scales by c^2, the ratio stays 1 without normalisation too.
        const int db = 40;
        var q = RandomOrthogonal(db, 61); // its first d rows form an isometry R^d -> R^db
        var iso = q.Take(d * db).ToArray();
        var b = MatMul(a, iso, n, d, db);
        for (int i = 0; i < b.Length; i++) b[i] *= 3.7;
        Assert.That(Cknna.Compute(a, d, b, db, normalize: false, epsilon: 0), Is.EqualTo(1.0).Within(1e-12));
        // A different positive scale per sample changes the raw kernel but not the normalised one.
        for (int r = 0; r < n; r++)
            for (int c = 0; c < db; c++) b[r * db + c] *= 0.5 + r % 7;
        Assert.That(Cknna.Compute(a, d, b, db, epsilon: 0), Is.EqualTo(1.0).Within(1e-12));
        Assert.That(Cknna.Compute(a, d, b, db, normalize: false, epsilon: 0), Is.LessThan(0.999));
    }

    [Test]
    public void CknnaOfIndependentFeaturesIsNearZeroAndGrowsWithSharedStructure()
    {
        // Independent Gaussian features of 2000 samples: the k = 10 neighbourhoods barely meet (about k^2 / n = 0.05
        // shared neighbours per sample), so the value must be small; 0.05 is the bound held here.
        const int n = 2000;
        var a = Normal(70, n * 32);
        var b = Normal(71, n * 48);
        double independent = Cknna.Compute(a, 32, b, 48);
        TestContext.Out.WriteLine($"independent: {independent}");
        Assert.That(Math.Abs(independent), Is.LessThan(0.05));

        double previous = independent;
        foreach (double noise in new[] { 3.0, 1.0, 0.3 })
        {
            var (x, y) = CorrelatedViews(n, 32, 48, noise, 72);
            double v = Cknna.Compute(x, 32, y, 48);
            TestContext.Out.WriteLine($"noise {noise}: {v}");
            Assert.That(v, Is.GreaterThan(previous));
            previous = v;
        }
    }

    [Test]
    public void CknnaOutlierClampAndBadInput()
    {
        // Row quantiles of |x| at q = 0.5 with linear interpolation: row 0 sorted |x| = 1,2,3,4 -> 2.5; row 1: 0,0,1,8 -> 0.5.
        double[] f = [1, -4, 3, 2, 0, 8, -1, 0];
        Cknna.ClampOutliers(f, 4, 0.5);
        Assert.That(f, Is.EqualTo(new[] { 1, -1.5, 1.5, 1.5, 0, 1.5, -1, 0 }));
        double[] g = [1, -40, 3, 2];
        Cknna.ClampOutliers(g, 4, 1);
        Assert.That(g, Is.EqualTo(new double[] { 1, -40, 3, 2 }));

        var a = Normal(80, 10 * 3);
        Assert.Throws<ArgumentException>(() => Cknna.Compute(a, 3, a.AsSpan(0, 27), 3));
        Assert.Throws<ArgumentException>(() => Cknna.Compute(a, 3, a, 3, k: 1));
        Assert.Throws<ArgumentException>(() => Cknna.Compute(a, 3, a, 3, k: 10));
        Assert.Throws<ArgumentException>(() => Cknna.Compute(a.AsSpan(0, 9), 3, a.AsSpan(0, 9), 3, k: 2));
        a[4] = double.PositiveInfinity;
        Assert.Throws<ArgumentException>(() => Cknna.Compute(a, 3, a, 3));
    }

    // ---- linear probe ----

    /// <summary>Gaussian clusters around well-separated random centres (radius 6 in 16 dimensions, unit noise).</summary>
    private static (double[] X, int[] Y) Clusters(int n, int d, int classes, ulong seed, double radius = 6)
    {
        var centres = Normal(1234, classes * d); // the same centres for every split
        var noise = Normal(seed, n * d);
        var labels = new uint[n];
        Philox.Bits(seed, 1, 0, labels);
        var x = new double[n * d];
        var y = new int[n];
        for (int r = 0; r < n; r++)
        {
            y[r] = (int)(labels[r] % classes);
            for (int c = 0; c < d; c++) x[r * d + c] = radius * centres[y[r] * d + c] / Math.Sqrt(d) + noise[r * d + c];
        }
        return (x, y);
    }

    [Test]
    public void LinearProbeSeparatesClustersAndIsDeterministic()
    {
        const int d = 16, classes = 5;
        var (train, trainY) = Clusters(500, d, classes, 90);
        var (test, testY) = Clusters(500, d, classes, 91);
        var probe = LinearProbe.Train(train, trainY, d, classes);
        TestContext.Out.WriteLine($"iterations {probe.Iterations}, loss {probe.Loss}, converged {probe.Converged}");
        Assert.That(probe.Converged, Is.True);
        Assert.That(probe.Accuracy(train, trainY), Is.EqualTo(1.0));
        Assert.That(probe.Accuracy(test, testY), Is.GreaterThanOrEqualTo(0.99));

        var again = LinearProbe.Train(train, trainY, d, classes);
        Assert.That(again.Weights, Is.EqualTo(probe.Weights));
        Assert.That(again.Bias, Is.EqualTo(probe.Bias));
        Assert.That(again.Iterations, Is.EqualTo(probe.Iterations));
    }

    [Test]
    public void LinearProbeReachesTheOptimumOfItsObjective()
    {
        // Overlapping clusters (not separable). At the optimum the gradient of
        // mean CE + (lambda/2)|W|^2, recomputed here naively from the returned parameters, vanishes.
        const int n = 300, d = 6, classes = 3;
        const double lambda = 1e-3;
        var (x, y) = Clusters(n, d, classes, 92, radius: 1.5);
        for (int i = 0; i < x.Length; i += d) x[i] = 100 * x[i] + 7; // a badly scaled feature: standardisation handles it
        var probe = LinearProbe.Train(x, y, d, classes, new LinearProbeOptions(WeightDecay: lambda, GradientTolerance: 1e-9));
        Assert.That(probe.Converged, Is.True);

        var gw = new double[classes * d];
        var gb = new double[classes];
        double loss = 0;
        for (int r = 0; r < n; r++)
        {
            var xs = Enumerable.Range(0, d).Select(c => (x[r * d + c] - probe.FeatureMean[c]) / probe.FeatureScale[c]).ToArray();
            var z = Enumerable.Range(0, classes).Select(k => probe.Bias[k] + Enumerable.Range(0, d).Sum(c => probe.Weights[k * d + c] * xs[c])).ToArray();
            double lse = Math.Log(z.Sum(Math.Exp));
            loss += (lse - z[y[r]]) / n;
            for (int k = 0; k < classes; k++)
            {
                double g = (Math.Exp(z[k] - lse) - (k == y[r] ? 1 : 0)) / n;
                gb[k] += g;
                for (int c = 0; c < d; c++) gw[k * d + c] += g * xs[c];
            }
        }
        for (int i = 0; i < gw.Length; i++) gw[i] += lambda * probe.Weights[i];
        loss += 0.5 * lambda * probe.Weights.Sum(w => w * w);
        Assert.That(Math.Max(MaxAbs(gw), MaxAbs(gb)), Is.LessThan(1e-8));
        Assert.That(probe.Loss, Is.EqualTo(loss).Within(1e-12));
        // The standardisation statistics are the training ones (population standard deviation).
        double mean0 = Enumerable.Range(0, n).Average(r => x[r * d]);
        double sd0 = Math.Sqrt(Enumerable.Range(0, n).Average(r => (x[r * d] - mean0) * (x[r * d] - mean0)));
        Assert.That(probe.FeatureMean[0], Is.EqualTo(mean0).Within(1e-9));
        Assert.That(probe.FeatureScale[0], Is.EqualTo(sd0).Within(1e-9));
    }

    [Test]
    public void LinearProbeOnRandomLabelsIsAtChance()
    {
        // Labels independent of the features: held-out accuracy is chance, 1/4. With 2000 test samples one standard
        // deviation is 0.01; the bound held is 0.25 +- 0.05.
        const int d = 20, classes = 4;
        var train = Normal(100, 1000 * d);
        var test = Normal(101, 2000 * d);
        var bits = new uint[3000];
        Philox.Bits(102, 0, 0, bits);
        var trainY = bits.Take(1000).Select(b => (int)(b % classes)).ToArray();
        var testY = bits.Skip(1000).Select(b => (int)(b % classes)).ToArray();
        var probe = LinearProbe.Train(train, trainY, d, classes);
        double accuracy = probe.Accuracy(test, testY);
        TestContext.Out.WriteLine($"random labels: held-out accuracy {accuracy}, train {probe.Accuracy(train, trainY)}");
        Assert.That(accuracy, Is.EqualTo(0.25).Within(0.05));
    }

    [Test]
    public void LinearProbeRejectsBadInput()
    {
        var x = Normal(110, 10 * 3);
        var y = new int[10];
        Assert.Throws<ArgumentException>(() => LinearProbe.Train(x, y, 3, 1));
        Assert.Throws<ArgumentException>(() => LinearProbe.Train(x, y.AsSpan(0, 9), 3, 2));
        Assert.Throws<ArgumentException>(() => LinearProbe.Train(x.AsSpan(0, 29), y, 3, 2));
        y[4] = 2;
        Assert.That(() => LinearProbe.Train(x, y, 3, 2), Throws.ArgumentException.With.Message.Contains("label 4 is 2"));
        y[4] = 0;
        Assert.Throws<ArgumentException>(() => LinearProbe.Train(x, y, 3, 2, new LinearProbeOptions(WeightDecay: 0)));
        var probe = LinearProbe.Train(x, y, 3, 2);
        Assert.Throws<ArgumentException>(() => probe.Accuracy(new double[4], [0]));
    }
}
