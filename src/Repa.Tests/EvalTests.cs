using NUnit.Framework;
using Repa.Kernels;
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
}
