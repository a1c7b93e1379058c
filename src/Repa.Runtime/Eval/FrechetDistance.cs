namespace Repa.Runtime.Eval;

/// <summary>
/// Frechet distance between two Gaussians (the FID formula, in any encoder's feature space):
/// FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}), in float64.
/// <para>
/// The trace term is computed without a general matrix square root (scipy.linalg.sqrtm in the ADM evaluator and
/// pytorch-fid, which can return complex values or need an eps I offset for singular covariances). Why the route
/// below gives the same number: S1 S2 = S1^{1/2} (S1^{1/2} S2), and AB and BA share their non-zero eigenvalues, so
/// S1 S2 has the eigenvalues of M = S1^{1/2} S2 S1^{1/2}, which is symmetric positive semi-definite. The principal
/// square root of S1 S2 has the square roots of those eigenvalues, hence tr((S1 S2)^{1/2}) = sum_i sqrt(mu_i(M)).
/// With S1 = V^T diag(l) V (rows of V its eigenvectors), S1^{1/2} = V^T diag(sqrt l) V and M is orthogonally
/// similar to N = diag(sqrt l) (V S2 V^T) diag(sqrt l), so only N's eigenvalues are needed. Eigenvalues of S1 and
/// N that rounding leaves slightly negative (singular covariances, e.g. fewer samples than dimensions) are clamped
/// to 0. For identical inputs the result is 0 up to rounding (about 1e-12 of tr(S1), either sign; it is not clamped).
/// </para>
/// </summary>
public static class FrechetDistance
{
    /// <summary>The Frechet distance between the Gaussians of two feature sets.</summary>
    public static double Compute(GaussianStats a, GaussianStats b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (a.Dim != b.Dim)
            throw new ArgumentException(
                $"Frechet distance: the statistics have feature dimensions {a.Dim} and {b.Dim}; both must come from the same encoder layer.");
        return Compute(a.Mean, a.Covariance, b.Mean, b.Covariance);
    }

    /// <summary>The Frechet distance from means [d] and row-major covariances [d, d].</summary>
    public static double Compute(ReadOnlySpan<double> mean1, ReadOnlySpan<double> covariance1,
        ReadOnlySpan<double> mean2, ReadOnlySpan<double> covariance2)
    {
        int d = mean1.Length;
        if (d == 0 || mean2.Length != d)
            throw new ArgumentException($"Frechet distance: the means have lengths {mean1.Length} and {mean2.Length}; they must be equal and non-zero.");
        if (covariance1.Length != (long)d * d || covariance2.Length != (long)d * d)
            throw new ArgumentException(
                $"Frechet distance: covariances of {covariance1.Length} and {covariance2.Length} values do not match {d} x {d}.");

        double meanTerm = 0;
        for (int i = 0; i < d; i++)
        {
            double diff = mean1[i] - mean2[i];
            meanTerm += diff * diff;
        }
        double trace1 = 0, trace2 = 0;
        for (int i = 0; i < d; i++)
        {
            trace1 += covariance1[i * d + i];
            trace2 += covariance2[i * d + i];
        }
        return meanTerm + trace1 + trace2 - 2 * TraceSqrtProduct(covariance1, covariance2, d);
    }

    /// <summary>tr((S1 S2)^{1/2}) for symmetric positive semi-definite S1, S2 (row-major d x d); see the class notes.</summary>
    public static double TraceSqrtProduct(ReadOnlySpan<double> covariance1, ReadOnlySpan<double> covariance2, int d)
    {
        if (d < 1 || covariance1.Length != (long)d * d || covariance2.Length != (long)d * d)
            throw new ArgumentException($"Frechet distance: covariances of {covariance1.Length} and {covariance2.Length} values do not match {d} x {d}.");

        var eig = SymmetricEigen.Decompose(covariance1, d);
        var rootL = new double[d];
        for (int j = 0; j < d; j++) rootL[j] = Math.Sqrt(Math.Max(eig.Values[j], 0));

        // W = V S2, then N = W V^T = V S2 V^T (both through GEMM), then scale rows and columns by sqrt(l).
        var s2 = covariance2.ToArray();
        Dense.Symmetrize(s2, d);
        var w = new double[(long)d * d];
        Dense.Gemm(false, false, d, d, d, 1.0, eig.Vectors, d, s2, d, 0.0, w, d);
        var n = new double[(long)d * d];
        Dense.Gemm(false, true, d, d, d, 1.0, w, d, eig.Vectors, d, 0.0, n, d);
        for (int j = 0; j < d; j++)
            for (int k = 0; k < d; k++) n[j * d + k] *= rootL[j] * rootL[k];

        double trace = 0;
        foreach (double mu in SymmetricEigen.Eigenvalues(n, d)) trace += Math.Sqrt(Math.Max(mu, 0));
        return trace;
    }
}
