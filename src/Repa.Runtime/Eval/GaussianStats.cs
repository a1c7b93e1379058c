using System.Globalization;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Checkpoints;

namespace Repa.Runtime.Eval;

/// <summary>
/// The Gaussian fitted to a feature set, as the Frechet distance uses it: the mean and the covariance with the
/// unbiased (n - 1) denominator (numpy.cov, and so the ADM evaluator and pytorch-fid). Saved as safetensors with the
/// ADM evaluator's names, "mu" [d] and "sigma" [d, d], so the statistics of the real data are computed once.
/// </summary>
public sealed class GaussianStats
{
    /// <summary>Tensor names in the saved file (the ADM evaluator's reference-batch keys).</summary>
    public const string MeanName = "mu", CovarianceName = "sigma";

    /// <summary>Metadata key holding <see cref="Count"/> in saved files.</summary>
    public const string CountKey = "count";

    /// <summary>Wraps a mean [d] and a row-major covariance [d, d] fitted to <paramref name="count"/> samples (0: unknown).</summary>
    public GaussianStats(double[] mean, double[] covariance, long count)
    {
        ArgumentNullException.ThrowIfNull(mean);
        ArgumentNullException.ThrowIfNull(covariance);
        if (mean.Length == 0) throw new ArgumentException("Gaussian statistics: the mean is empty; the feature dimension must be >= 1.");
        if (covariance.Length != (long)mean.Length * mean.Length)
            throw new ArgumentException(
                $"Gaussian statistics: the covariance has {covariance.Length} values, not {mean.Length} x {mean.Length} for a {mean.Length}-dimensional mean.");
        if (count < 0) throw new ArgumentException($"Gaussian statistics: the sample count must be >= 0, got {count}.");
        Mean = mean;
        Covariance = covariance;
        Count = count;
    }

    /// <summary>The feature dimension d.</summary>
    public int Dim => Mean.Length;

    /// <summary>The mean [d].</summary>
    public double[] Mean { get; }

    /// <summary>The covariance [d, d], row-major, symmetric, with the (n - 1) denominator.</summary>
    public double[] Covariance { get; }

    /// <summary>How many samples the statistics were fitted to; 0 when unknown (a file from another tool).</summary>
    public long Count { get; }

    /// <summary>Statistics of row-major features [n, <paramref name="dim"/>] (n >= 2).</summary>
    public static GaussianStats FromFeatures(ReadOnlySpan<double> features, int dim)
    {
        var acc = new GaussianStatsAccumulator(dim);
        acc.Add(features);
        return acc.ToStats();
    }

    /// <summary>Statistics of row-major fp32 features [n, <paramref name="dim"/>] (n >= 2), accumulated in float64.</summary>
    public static GaussianStats FromFeatures(ReadOnlySpan<float> features, int dim)
    {
        var acc = new GaussianStatsAccumulator(dim);
        acc.Add(features);
        return acc.ToStats();
    }

    /// <summary>
    /// Writes "mu" [d] and "sigma" [d, d] as F64 safetensors (atomically), with the sample count and
    /// <paramref name="metadata"/> (e.g. which encoder and data produced them) in the header.
    /// </summary>
    public void Save(string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var meta = new Dictionary<string, string>(StringComparer.Ordinal);
        if (metadata is not null)
            foreach (var (k, v) in metadata) meta[k] = v;
        meta[CountKey] = Count.ToString(CultureInfo.InvariantCulture);
        var backend = CpuBackend.Default;
        using var mu = Tensor.FromArray(backend, Mean, Dim);
        using var sigma = Tensor.FromArray(backend, Covariance, Dim, Dim);
        SafeTensors.Write(path, [(MeanName, mu), (CovarianceName, sigma)], meta);
    }

    /// <summary>
    /// Reads statistics saved by <see cref="Save"/> or converted from the ADM evaluator's npz: tensors "mu" [d] and
    /// "sigma" [d, d] in F64 or F32 (other tensors are ignored). The count comes from the metadata when present.
    /// </summary>
    public static GaussianStats Load(string path) => Load(path, out _);

    /// <summary>As <see cref="Load(string)"/>, also returning the file's metadata.</summary>
    public static GaussianStats Load(string path, out IReadOnlyDictionary<string, string> metadata)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
            throw new FileNotFoundException($"Gaussian statistics file '{path}' does not exist; compute it first or check the path.", path);
        using var file = SafeTensors.Read(path, CpuBackend.Default);
        metadata = file.Metadata;
        if (!file.Tensors.TryGetValue(MeanName, out var mu) || !file.Tensors.TryGetValue(CovarianceName, out var sigma))
            throw new InvalidDataException(
                $"'{path}' holds no Gaussian statistics: it needs tensors '{MeanName}' [d] and '{CovarianceName}' [d, d].");
        if (mu.Shape.Length != 1 || mu.Shape[0] < 1 || sigma.Shape.Length != 2 || sigma.Shape[0] != mu.Shape[0] || sigma.Shape[1] != mu.Shape[0])
            throw new InvalidDataException(
                $"'{path}': '{MeanName}' is {mu.Describe()} and '{CovarianceName}' is {sigma.Describe()}; expected [d] and [d, d].");
        if (mu.DType is not (DType.F32 or DType.F64) || sigma.DType is not (DType.F32 or DType.F64))
            throw new InvalidDataException($"'{path}': '{MeanName}' and '{CovarianceName}' must be floating point, not {mu.DType} / {sigma.DType}.");
        var mean = mu.ToDoubleArray();
        var covariance = sigma.ToDoubleArray();
        if (!mean.All(double.IsFinite) || !covariance.All(double.IsFinite))
            throw new InvalidDataException($"'{path}': the statistics contain NaN or infinity; recompute them.");
        long count = 0;
        if (metadata.TryGetValue(CountKey, out var text) &&
            !(long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out count) && count >= 0))
            throw new InvalidDataException($"'{path}': metadata '{CountKey}' is '{text}', not a sample count.");
        return new GaussianStats(mean, covariance, count);
    }
}

/// <summary>
/// Streams features into a mean and covariance batch by batch, so evaluation never holds all features at once. Each
/// batch (cut into chunks of at most <see cref="ChunkRows"/> rows) is centred on its own mean and its scatter matrix
/// formed by GEMM; chunks merge by the parallel update of Chan et al.:
/// M2 = M2_a + M2_b + (n_a n_b / n) (mean_b - mean_a)(mean_b - mean_a)^T. Centring before the product avoids the
/// cancellation of the E[x x^T] - mu mu^T formula when features have a large mean.
/// </summary>
public sealed class GaussianStatsAccumulator
{
    /// <summary>Largest chunk a batch is processed in (bounds the float64 staging copy).</summary>
    public const int ChunkRows = 1024;

    private readonly double[] mean, scatter, delta;
    private double[] chunk = [];

    /// <summary>An empty accumulator for <paramref name="dim"/>-dimensional features.</summary>
    public GaussianStatsAccumulator(int dim)
    {
        if (dim < 1) throw new ArgumentException($"Gaussian statistics: the feature dimension must be >= 1, got {dim}.");
        Dim = dim;
        mean = new double[dim];
        scatter = new double[(long)dim * dim];
        delta = new double[dim];
    }

    /// <summary>The feature dimension d.</summary>
    public int Dim { get; }

    /// <summary>Samples added so far.</summary>
    public long Count { get; private set; }

    /// <summary>Adds row-major features [rows, d]; throws <see cref="ArgumentException"/> on a ragged or non-finite batch.</summary>
    public void Add(ReadOnlySpan<double> batch)
    {
        int rows = Rows(batch.Length);
        for (int start = 0; start < rows; start += ChunkRows)
        {
            int r = Math.Min(ChunkRows, rows - start);
            var x = Stage(r);
            batch.Slice(start * Dim, r * Dim).CopyTo(x);
            Merge(x, r);
        }
    }

    /// <summary>Adds row-major fp32 features [rows, d] (converted to float64 first).</summary>
    public void Add(ReadOnlySpan<float> batch)
    {
        int rows = Rows(batch.Length);
        for (int start = 0; start < rows; start += ChunkRows)
        {
            int r = Math.Min(ChunkRows, rows - start);
            var x = Stage(r);
            var src = batch.Slice(start * Dim, r * Dim);
            for (int i = 0; i < x.Length; i++) x[i] = src[i];
            Merge(x, r);
        }
    }

    /// <summary>The statistics of everything added; needs at least two samples for the (n - 1) covariance.</summary>
    public GaussianStats ToStats()
    {
        if (Count < 2)
            throw new InvalidOperationException($"Gaussian statistics need at least 2 samples for a covariance, got {Count}.");
        var cov = new double[scatter.Length];
        double inv = 1.0 / (Count - 1);
        for (int i = 0; i < cov.Length; i++) cov[i] = scatter[i] * inv;
        Dense.Symmetrize(cov, Dim);
        return new GaussianStats((double[])mean.Clone(), cov, Count);
    }

    private int Rows(int length)
    {
        if (length % Dim != 0)
            throw new ArgumentException($"Gaussian statistics: a batch of {length} values is not whole rows of {Dim} features.");
        return length / Dim;
    }

    private Span<double> Stage(int rows)
    {
        if (chunk.Length < rows * Dim) chunk = new double[Math.Min(ChunkRows, Math.Max(rows, 64)) * Dim];
        return chunk.AsSpan(0, rows * Dim);
    }

    private void Merge(Span<double> x, int rows)
    {
        for (int i = 0; i < x.Length; i++)
            if (!double.IsFinite(x[i]))
                throw new ArgumentException(
                    $"Gaussian statistics: sample {Count + i / Dim}, feature {i % Dim} is {x[i]}; features must be finite.");

        int d = Dim;
        // The chunk's own mean, then centre it.
        Span<double> chunkMean = delta; // reused: becomes mean_b - mean_a below
        chunkMean.Clear();
        for (int r = 0; r < rows; r++)
            TensorPrimitives.Add(chunkMean, x.Slice(r * d, d), chunkMean);
        TensorPrimitives.Divide(chunkMean, rows, chunkMean);
        for (int r = 0; r < rows; r++)
            TensorPrimitives.Subtract(x.Slice(r * d, d), chunkMean, x.Slice(r * d, d));

        // scatter += Xc^T Xc (the chunk's own scatter, accumulated in place by beta = 1).
        Dense.Gemm(true, false, d, d, rows, 1.0, x, d, x, d, 1.0, scatter, d);

        long na = Count, n = Count + rows;
        TensorPrimitives.Subtract(chunkMean, mean, delta); // delta = mean_b - mean_a
        if (na > 0)
        {
            double w = (double)na * rows / n;
            for (int i = 0; i < d; i++)
            {
                double wi = w * delta[i];
                TensorPrimitives.MultiplyAdd(delta, wi, scatter.AsSpan(i * d, d), scatter.AsSpan(i * d, d));
            }
        }
        TensorPrimitives.MultiplyAdd(delta, (double)rows / n, mean, mean);
        Count = n;
    }
}
