namespace Repa.Runtime.Eval;

/// <summary>
/// CKNNA, the mutual-nearest-neighbour variant of centred kernel alignment of Huh et al. 2024 ("The Platonic
/// Representation Hypothesis"), as REPA reports it (k = 10) between model hidden states and encoder features. It
/// follows <c>AlignmentMetrics.cknna</c> of minyoungg/platonic-rep metrics.py with its defaults
/// (<c>unbiased=True</c>, <c>distance_agnostic=False</c>), in float64:
/// <list type="number">
/// <item>Optionally (<c>normalize</c>, on by default as in that repository's <c>measure_alignment.compute_score</c>)
/// each row of A [n, dA] and B [n, dB] is scaled to unit L2 norm. Its other preprocessing, clamping to the 0.95
/// quantile of |x| (<c>prepare_features</c>), is <see cref="ClampOutliers"/>, left to the caller.</item>
/// <item>Linear kernels K = A A^T, L = B B^T (not centred: the unbiased HSIC centres implicitly).</item>
/// <item>kNN_K(i): the k largest K[i, j] over j != i (ties: lower index first); likewise kNN_L(i).</item>
/// <item>sim(K, L) = HSIC_u(M o K, M o L) with the mask M[i, j] = 1[j in kNN_K(i) and j in kNN_L(i)] (row i's own
/// neighbour lists; M need not be symmetric), and HSIC_u the unbiased estimator of Song et al. 2012 exactly as the
/// reference writes it for these possibly asymmetric matrices: with K~, L~ the masked kernels (zero diagonal),
/// HSIC_u = [sum_ij K~_ij L~_ji + sum(K~) sum(L~) / ((n-1)(n-2)) - 2 sum(K~ L~) / (n-2)] / (n (n-3)).</item>
/// <item>CKNNA = sim(K, L) / (sqrt(sim(K, K) sim(L, L)) + epsilon); the reference's epsilon is 1e-6, which biases
/// the value down noticeably when the sims are small (unit-norm features, large n): pass 0 for the exact ratio.</item>
/// </list>
/// The n x n kernels are never stored: K and L are formed in tiles of the upper triangle by GEMM and only each row's
/// k best neighbours (and their kernel values) are kept, so memory is O(n k) and the cost two n^2 d / 2 products
/// (n = 10,000, d = 768: a few seconds on two cores).
/// </summary>
public static class Cknna
{
    /// <summary>REPA's neighbourhood size.</summary>
    public const int DefaultK = 10;

    /// <summary>The constant the reference adds to the denominator.</summary>
    public const double ReferenceEpsilon = 1e-6;

    private const int TileRows = 256, TileCols = 2048;

    /// <summary>
    /// CKNNA between row-major features <paramref name="a"/> [n, <paramref name="dimA"/>] and
    /// <paramref name="b"/> [n, <paramref name="dimB"/>] of the same n samples (see the class notes). NaN when a
    /// self-similarity is negative, as in the reference.
    /// </summary>
    public static double Compute(ReadOnlySpan<double> a, int dimA, ReadOnlySpan<double> b, int dimB,
        int k = DefaultK, bool normalize = true, double epsilon = ReferenceEpsilon)
    {
        if (dimA < 1 || dimB < 1) throw new ArgumentException($"CKNNA: feature dimensions must be >= 1, got {dimA} and {dimB}.");
        if (a.Length % dimA != 0 || b.Length % dimB != 0)
            throw new ArgumentException($"CKNNA: {a.Length} and {b.Length} values are not whole rows of {dimA} and {dimB} features.");
        int n = a.Length / dimA;
        if (b.Length / dimB != n)
            throw new ArgumentException($"CKNNA: the two feature sets have {n} and {b.Length / dimB} rows; they must describe the same samples.");
        if (n < 4) throw new ArgumentException($"CKNNA: needs at least 4 samples for the unbiased HSIC, got {n}.");
        if (k < 2 || k > n - 1) throw new ArgumentException($"CKNNA: k must be in [2, n - 1] = [2, {n - 1}], got {k}.");
        if (!(epsilon >= 0) || double.IsInfinity(epsilon)) throw new ArgumentException($"CKNNA: epsilon must be finite and >= 0, got {epsilon}.");
        Dense.RequireFinite(a, dimA, "CKNNA (first features)");
        Dense.RequireFinite(b, dimB, "CKNNA (second features)");

        var x = a.ToArray();
        var y = b.ToArray();
        if (normalize)
        {
            NormalizeRows(x, dimA);
            NormalizeRows(y, dimB);
        }
        var nk = Neighbours.Of(x, n, dimA, k);
        var nl = Neighbours.Of(y, n, dimB, k);

        double kl = MaskedHsic(nk, nl, n);
        double kk = MaskedHsic(nk, nk, n);
        double ll = MaskedHsic(nl, nl, n);
        return kl / (Math.Sqrt(kk * ll) + epsilon);
    }

    /// <summary>Scales each row of row-major <paramref name="features"/> to unit L2 norm (zero rows stay zero, as F.normalize).</summary>
    public static void NormalizeRows(Span<double> features, int dim)
    {
        if (dim < 1 || features.Length % dim != 0)
            throw new ArgumentException($"CKNNA: {features.Length} values are not whole rows of {dim} features.");
        for (int r = 0; r < features.Length / dim; r++)
        {
            var row = features.Slice(r * dim, dim);
            double norm = System.Numerics.Tensors.TensorPrimitives.Norm<double>(row);
            // F.normalize divides by max(norm, 1e-12).
            System.Numerics.Tensors.TensorPrimitives.Divide(row, Math.Max(norm, 1e-12), row);
        }
    }

    /// <summary>
    /// platonic-rep's <c>remove_outliers(feats, q)</c> with <c>exact=False</c>, as <c>prepare_features</c> applies it
    /// (q = 0.95) before CKNNA: the q-quantile of |x| within each row (linear interpolation, as torch.quantile), averaged
    /// over rows, then every entry clamped to [-t, t]. q = 1 leaves the features unchanged.
    /// </summary>
    public static void ClampOutliers(Span<double> features, int dim, double quantile = 0.95)
    {
        if (dim < 1 || features.Length % dim != 0 || features.Length == 0)
            throw new ArgumentException($"CKNNA: {features.Length} values are not whole, non-empty rows of {dim} features.");
        if (!(quantile is >= 0 and <= 1)) throw new ArgumentException($"CKNNA: the outlier quantile must be in [0, 1], got {quantile}.");
        if (quantile == 1) return;
        int rows = features.Length / dim;
        var sorted = new double[dim];
        double pos = quantile * (dim - 1);
        int lo = (int)Math.Floor(pos), hi = Math.Min(lo + 1, dim - 1);
        double frac = pos - lo, sum = 0;
        for (int r = 0; r < rows; r++)
        {
            var row = features.Slice(r * dim, dim);
            for (int i = 0; i < dim; i++) sorted[i] = Math.Abs(row[i]);
            Array.Sort(sorted);
            sum += sorted[lo] + frac * (sorted[hi] - sorted[lo]);
        }
        double t = sum / rows;
        for (int i = 0; i < features.Length; i++) features[i] = Math.Clamp(features[i], -t, t);
    }

    /// <summary>
    /// HSIC_u(M o K, M o L) for M[i, j] = 1[j in p(i) and j in q(i)], K values taken from p's lists and L values from q's.
    /// With K~, L~ sparse (row i holds the intersection S_i): sum_ij K~_ij L~_ji runs over pairs present in both
    /// directions, and sum(K~ L~) = sum_c (column sum of K~)_c (row sum of L~)_c.
    /// </summary>
    private static double MaskedHsic(Neighbours p, Neighbours q, int n)
    {
        int k = p.K;
        // Row-wise intersection of the two neighbour lists (both sorted by index).
        var start = new int[n + 1];
        var cols = new int[n * k];
        var kv = new double[n * k];
        var lv = new double[n * k];
        int nnz = 0;
        for (int i = 0; i < n; i++)
        {
            start[i] = nnz;
            int u = i * k, v = i * k, uEnd = u + k, vEnd = v + k;
            while (u < uEnd && v < vEnd)
            {
                int ju = p.Index[u], jv = q.Index[v];
                if (ju < jv) u++;
                else if (jv < ju) v++;
                else
                {
                    cols[nnz] = ju;
                    kv[nnz] = p.Value[u];
                    lv[nnz] = q.Value[v];
                    nnz++;
                    u++;
                    v++;
                }
            }
        }
        start[n] = nnz;

        double sumK = 0, sumL = 0, cross = 0;
        var colSumK = new double[n];
        var rowSumL = new double[n];
        for (int i = 0; i < n; i++)
            for (int e = start[i]; e < start[i + 1]; e++)
            {
                sumK += kv[e];
                sumL += lv[e];
                colSumK[cols[e]] += kv[e];
                rowSumL[i] += lv[e];
                int j = cols[e];
                int back = Array.BinarySearch(cols, start[j], start[j + 1] - start[j], i);
                if (back >= 0) cross += kv[e] * lv[back]; // K~_ij L~_ji
            }
        double productSum = 0;
        for (int c = 0; c < n; c++) productSum += colSumK[c] * rowSumL[c];

        double m = n;
        return (cross + sumK * sumL / ((m - 1) * (m - 2)) - 2 * productSum / (m - 2)) / (m * (m - 3));
    }

    /// <summary>Each row's k nearest neighbours by inner product (excluding itself), sorted by index, with the kernel values.</summary>
    private sealed class Neighbours
    {
        public required int K { get; init; }
        public required int[] Index { get; init; }
        public required double[] Value { get; init; }

        /// <summary>
        /// Tiles of the upper triangle of X X^T by GEMM; each tile offers its entries to the rows above (row pass) and,
        /// beyond the diagonal block, to the rows to the right (column pass). The best-k order is total (larger value,
        /// then lower index), so the lists do not depend on the order in which candidates arrive.
        /// </summary>
        public static Neighbours Of(double[] x, int n, int d, int k)
        {
            var bestV = new double[n * k];
            var bestI = new int[n * k];
            var count = new int[n];
            var tile = new double[TileRows * TileCols];
            for (int i0 = 0; i0 < n; i0 += TileRows)
            {
                int rows = Math.Min(TileRows, n - i0), i1 = i0 + rows;
                for (int j0 = i0; j0 < n; j0 += TileCols)
                {
                    int width = Math.Min(TileCols, n - j0), j1 = j0 + width;
                    Dense.Gemm(false, true, rows, width, d, 1.0, x.AsSpan(i0 * d), d, x.AsSpan(j0 * d), d, 0.0, tile, width);
                    double[] g = tile;
                    Parallel.For(0, rows, r =>
                    {
                        int i = i0 + r;
                        for (int c = 0; c < width; c++)
                            if (j0 + c != i) Offer(bestV, bestI, count, k, i, g[r * width + c], j0 + c);
                    });
                    int firstCol = Math.Max(j0, i1);
                    if (firstCol < j1)
                        Parallel.For(firstCol, j1, j =>
                        {
                            int c = j - j0;
                            for (int r = 0; r < rows; r++) Offer(bestV, bestI, count, k, j, g[r * width + c], i0 + r);
                        });
                }
            }

            // Sort each row's list by neighbour index for the intersections and look-ups.
            var keys = new int[k];
            var vals = new double[k];
            for (int i = 0; i < n; i++)
            {
                bestI.AsSpan(i * k, k).CopyTo(keys);
                bestV.AsSpan(i * k, k).CopyTo(vals);
                Array.Sort(keys, vals);
                keys.CopyTo(bestI, i * k);
                vals.CopyTo(bestV, i * k);
            }
            return new Neighbours { K = k, Index = bestI, Value = bestV };
        }

        /// <summary>Inserts (v, j) into row i's list (kept best first) if it belongs among the k best.</summary>
        private static void Offer(double[] bestV, int[] bestI, int[] count, int k, int i, double v, int j)
        {
            int at = i * k, filled = count[i];
            if (filled == k)
            {
                double worst = bestV[at + k - 1];
                if (v < worst || (v == worst && j > bestI[at + k - 1])) return;
            }
            else
            {
                count[i] = ++filled;
            }
            int p = at + filled - 1;
            while (p > at && (bestV[p - 1] < v || (bestV[p - 1] == v && bestI[p - 1] > j)))
            {
                bestV[p] = bestV[p - 1];
                bestI[p] = bestI[p - 1];
                p--;
            }
            bestV[p] = v;
            bestI[p] = j;
        }
    }
}
