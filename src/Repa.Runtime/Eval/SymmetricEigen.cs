using System.Numerics.Tensors;

namespace Repa.Runtime.Eval;

/// <summary>
/// Eigen-decomposition of a real symmetric n x n matrix A = sum_j Values[j] v_j v_j^T.
/// </summary>
/// <param name="N">The matrix order.</param>
/// <param name="Values">Eigenvalues in ascending order.</param>
/// <param name="Vectors">Row-major n x n: row j is the unit eigenvector v_j of Values[j] (rows are orthonormal).</param>
public sealed record SymmetricEigenDecomposition(int N, double[] Values, double[] Vectors)
{
    /// <summary>The unit eigenvector of <see cref="Values"/>[j].</summary>
    public ReadOnlySpan<double> Vector(int j) => Vectors.AsSpan(j * N, N);
}

/// <summary>
/// Symmetric eigensolver in float64: Householder reduction to tridiagonal form, then the implicit QL algorithm with
/// Wilkinson shifts. O(n^3): a full decomposition of a 768 x 768 covariance takes about a second on two cores, its
/// eigenvalues alone about 0.15 s. The input's symmetric part (A + A^T)/2 is decomposed, so the rounding asymmetry of
/// a computed covariance does no harm.
/// </summary>
public static class SymmetricEigen
{
    private const double Eps = 2.220446049250313e-16; // 2^-52, the spacing of doubles at 1
    private const int MaxSweepsPerEigenvalue = 60;     // QL converges in 2-3 sweeps per eigenvalue in practice
    private const int ParallelOrder = 192;             // below this order threads cost more than they save

    /// <summary>The eigenvalues of the symmetric <paramref name="n"/> x <paramref name="n"/> row-major matrix, ascending.</summary>
    public static double[] Eigenvalues(ReadOnlySpan<double> matrix, int n)
    {
        var a = Prepare(matrix, n);
        var (d, e, _) = Tridiagonalize(a, n);
        Ql(d, e, null, n);
        Array.Sort(d);
        return d;
    }

    /// <summary>Eigenvalues (ascending) and orthonormal eigenvectors of the symmetric row-major matrix.</summary>
    public static SymmetricEigenDecomposition Decompose(ReadOnlySpan<double> matrix, int n)
    {
        var a = Prepare(matrix, n);
        var (d, e, h) = Tridiagonalize(a, n);

        // z holds the eigenvectors of the tridiagonal matrix as rows; the QL rotations mix pairs of rows.
        var z = new double[(long)n * n];
        for (int i = 0; i < n; i++) z[(long)i * n + i] = 1;
        Ql(d, e, z, n);
        BackTransform(a, h, z, n);

        // Ascending order; a stable sort keeps ties (repeated eigenvalues) in QL's order, so results are reproducible.
        var order = Enumerable.Range(0, n).OrderBy(j => d[j]).ToArray();
        var values = new double[n];
        var vectors = new double[(long)n * n];
        for (int j = 0; j < n; j++)
        {
            values[j] = d[order[j]];
            z.AsSpan(order[j] * n, n).CopyTo(vectors.AsSpan(j * n, n));
        }
        return new SymmetricEigenDecomposition(n, values, vectors);
    }

    private static double[] Prepare(ReadOnlySpan<double> matrix, int n)
    {
        if (n < 1) throw new ArgumentException($"eigensolver: the matrix order must be >= 1, got {n}.");
        if ((long)n * n != matrix.Length)
            throw new ArgumentException($"eigensolver: {matrix.Length} values do not form a {n} x {n} matrix.");
        for (int i = 0; i < matrix.Length; i++)
            if (!double.IsFinite(matrix[i]))
                throw new ArgumentException($"eigensolver: entry ({i / n}, {i % n}) is {matrix[i]}; the matrix must be finite.");
        var a = matrix.ToArray();
        Dense.Symmetrize(a, n);
        return a;
    }

    /// <summary>
    /// Householder reduction Q^T A Q = T, working upwards from the last row: step i reflects row i's leading part
    /// a[i, 0..i) onto its last element, then applies the reflection P = I - u u^T / h to the leading i x i block
    /// from both sides as the rank-2 update A - q u^T - u q^T (q = p - (u.p / 2h) u, p = A u / h). The full block is
    /// kept (not one triangle) so every access is along a row and vectorises. Returns the diagonal d, the couplings
    /// e[i] between i and i+1 (e[n-1] = 0) and h[i]; u_i is left in a[i, 0..i) for the back-transformation.
    /// </summary>
    private static (double[] D, double[] E, double[] H) Tridiagonalize(double[] a, int n)
    {
        var d = new double[n];
        var sub = new double[n]; // sub[i]: T[i, i-1]
        var h = new double[n];
        var p = new double[n];
        for (int i = n - 1; i >= 1; i--)
        {
            var u = a.AsSpan(i * n, i);
            if (i == 1)
            {
                sub[i] = u[0]; // a single element is already tridiagonal
                continue;
            }
            double scale = TensorPrimitives.SumOfMagnitudes(u);
            if (scale == 0)
            {
                sub[i] = 0;
                continue;
            }
            // Scaling first keeps the squares from over- or underflowing; P does not depend on u's length.
            TensorPrimitives.Divide(u, scale, u);
            double sigma = TensorPrimitives.SumOfSquares(u);
            double f = u[i - 1];
            double g = f >= 0 ? -Math.Sqrt(sigma) : Math.Sqrt(sigma); // the sign that avoids cancellation in f - g
            sub[i] = scale * g;
            double hi = sigma - f * g; // |u|^2 / 2 with u = x - g e_last
            u[i - 1] = f - g;
            h[i] = hi;

            // p = A u / h, then q = p - (u.p / 2h) u (kept in p), then A -= q u^T + u q^T on the leading block.
            int len = i;
            double[] arr = a, q = p;
            ForRows(len, (long)len * len, j => q[j] = TensorPrimitives.Dot(arr.AsSpan(j * n, len), arr.AsSpan(len * n, len)) / hi);
            double k = TensorPrimitives.Dot(u, p.AsSpan(0, len)) / (2 * hi);
            for (int j = 0; j < len; j++) p[j] -= k * u[j];
            ForRows(len, (long)len * len, j =>
            {
                var row = arr.AsSpan(j * n, len);
                var uu = arr.AsSpan(len * n, len);
                TensorPrimitives.MultiplyAdd(uu, -q[j], row, row);
                TensorPrimitives.MultiplyAdd(q.AsSpan(0, len), -uu[j], row, row);
            });
        }
        for (int i = 0; i < n; i++) d[i] = a[(long)i * n + i];
        var e = new double[n];
        for (int i = 0; i + 1 < n; i++) e[i] = sub[i + 1];
        return (d, e, h);
    }

    /// <summary>
    /// Implicit QL with Wilkinson shifts on the tridiagonal (d, e): d becomes the eigenvalues (unsorted). When
    /// <paramref name="z"/> is given, each sweep's plane rotations are recorded and applied to its rows, split by
    /// column ranges over threads (the rotations of a sweep must be applied in order, but columns are independent).
    /// </summary>
    private static void Ql(double[] d, double[] e, double[]? z, int n)
    {
        var rotC = z is null ? null : new double[n];
        var rotS = z is null ? null : new double[n];
        for (int l = 0; l < n; l++)
        {
            int sweeps = 0;
            while (true)
            {
                int m = l;
                for (; m < n - 1; m++)
                    if (Math.Abs(e[m]) <= Eps * (Math.Abs(d[m]) + Math.Abs(d[m + 1]))) break;
                if (m == l) break;
                if (++sweeps > MaxSweepsPerEigenvalue)
                    throw new InvalidOperationException($"eigensolver: QL did not converge for eigenvalue {l} of {n}.");

                // Wilkinson shift from the leading 2 x 2 block, folded into the first rotation.
                double g = (d[l + 1] - d[l]) / (2 * e[l]);
                double r = double.Hypot(g, 1);
                g = d[m] - d[l] + e[l] / (g + (g >= 0 ? r : -r));
                double s = 1, c = 1, p = 0;
                int i = m - 1, rotations = 0;
                bool deflated = false;
                for (; i >= l; i--)
                {
                    double f = s * e[i], b = c * e[i];
                    r = double.Hypot(f, g);
                    e[i + 1] = r;
                    if (r == 0)
                    {
                        // The chasing bulge vanished: the matrix split; recover and restart from the top.
                        d[i + 1] -= p;
                        e[m] = 0;
                        deflated = true;
                        break;
                    }
                    s = f / r;
                    c = g / r;
                    g = d[i + 1] - p;
                    r = (d[i] - g) * s + 2 * c * b;
                    p = s * r;
                    d[i + 1] = g + p;
                    g = c * r - b;
                    if (rotC is not null)
                    {
                        rotC[rotations] = c;
                        rotS![rotations] = s;
                        rotations++;
                    }
                }
                if (z is not null && rotations > 0) ApplyRotations(z, n, m - 1, rotations, rotC!, rotS!);
                if (deflated) continue;
                d[l] -= p;
                e[l] = g;
                e[m] = 0;
            }
        }
    }

    /// <summary>Rotation t (t = 0..count-1) mixes rows i = first - t and i + 1: row_i' = c row_i - s row_{i+1}, row_{i+1}' = s row_i + c row_{i+1}.</summary>
    private static void ApplyRotations(double[] z, int n, int first, int count, double[] c, double[] s)
    {
        void Range(int c0, int c1)
        {
            for (int t = 0; t < count; t++)
            {
                int i = first - t;
                Dense.Rotate(z.AsSpan(i * n + c0, c1 - c0), z.AsSpan((i + 1) * n + c0, c1 - c0), c[t], s[t]);
            }
        }
        int chunks = (long)count * n >= ParallelOrder * ParallelOrder ? Math.Min(Dense.Threads, n / 64) : 1;
        if (chunks <= 1) Range(0, n);
        else Parallel.For(0, chunks, k => Range(n * k / chunks, n * (k + 1) / chunks));
    }

    /// <summary>
    /// Eigenvectors of A from those of T: A = Q T Q^T with Q = P_{n-1} ... P_2, so a row z^T becomes z^T P_2 ... P_{n-1},
    /// each reflection applied as r := r - (r.u_i / h_i) u_i on the row's first i entries.
    /// </summary>
    private static void BackTransform(double[] a, double[] h, double[] z, int n)
    {
        ForRows(n, (long)n * n, row =>
        {
            var r = z.AsSpan(row * n, n);
            for (int i = 2; i < n; i++)
            {
                if (h[i] == 0) continue;
                var u = a.AsSpan(i * n, i);
                double w = TensorPrimitives.Dot(r[..i], u) / h[i];
                TensorPrimitives.MultiplyAdd(u, -w, r[..i], r[..i]);
            }
        });
    }

    /// <summary>body(j) for j in [0, rows), over threads when the work (about <paramref name="work"/> flops) pays for it.</summary>
    private static void ForRows(int rows, long work, Action<int> body)
    {
        if (work < (long)ParallelOrder * ParallelOrder || Dense.Threads == 1)
        {
            for (int j = 0; j < rows; j++) body(j);
            return;
        }
        int chunks = Math.Min(Dense.Threads, rows);
        Parallel.For(0, chunks, k =>
        {
            for (int j = rows * k / chunks, end = rows * (k + 1) / chunks; j < end; j++) body(j);
        });
    }
}
