namespace Repa.Runtime.Eval;

/// <summary>Settings of <see cref="LinearProbe.Train"/>.</summary>
/// <param name="WeightDecay">
/// lambda in the objective mean cross-entropy + (lambda / 2) |W|^2 (the bias is not penalised). Must be > 0: it
/// makes the problem strictly convex, so the optimum is unique and finite even on separable data. scikit-learn's
/// LogisticRegression(C) is lambda = 1 / (C n).
/// </param>
/// <param name="MaxIterations">L-BFGS iterations at most.</param>
/// <param name="GradientTolerance">Converged when the largest gradient component is at most this.</param>
/// <param name="History">L-BFGS memory (correction pairs kept).</param>
public sealed record LinearProbeOptions(
    double WeightDecay = 1e-4,
    int MaxIterations = 1000,
    double GradientTolerance = 1e-6,
    int History = 10)
{
    /// <summary>Throws <see cref="ArgumentException"/> with a one-sentence reason when a field is out of range.</summary>
    public LinearProbeOptions Validate()
    {
        if (!(WeightDecay > 0) || double.IsInfinity(WeightDecay))
            throw new ArgumentException($"linear probe: the weight decay must be finite and > 0, got {WeightDecay}.");
        if (MaxIterations < 1) throw new ArgumentException($"linear probe: max iterations must be >= 1, got {MaxIterations}.");
        if (!(GradientTolerance > 0)) throw new ArgumentException($"linear probe: the gradient tolerance must be > 0, got {GradientTolerance}.");
        if (History < 1) throw new ArgumentException($"linear probe: the L-BFGS history must be >= 1, got {History}.");
        return this;
    }
}

/// <summary>
/// Linear probe: multinomial logistic regression (softmax over <see cref="Classes"/> logits W x^ + b) on standardised
/// features x^ = (x - mean) / std, mean and std (population, ddof 0; a constant feature gets std 1) taken from the
/// training features. Trained full batch by L-BFGS with Armijo backtracking from zero weights to the unique optimum of
/// mean cross-entropy + (lambda / 2) |W|^2, in float64. Everything is deterministic: no random initialisation, no
/// sampling, and every reduction runs in a fixed order.
/// </summary>
public sealed class LinearProbe
{
    private LinearProbe(int dim, int classes, double[] mean, double[] scale, double[] weights, double[] bias,
        int iterations, bool converged, double loss)
    {
        Dim = dim;
        Classes = classes;
        FeatureMean = mean;
        FeatureScale = scale;
        Weights = weights;
        Bias = bias;
        Iterations = iterations;
        Converged = converged;
        Loss = loss;
    }

    /// <summary>Feature dimension d.</summary>
    public int Dim { get; }

    /// <summary>Number of classes C; labels are 0 .. C-1.</summary>
    public int Classes { get; }

    /// <summary>Per-feature training mean used to standardise [d].</summary>
    public double[] FeatureMean { get; }

    /// <summary>Per-feature training standard deviation used to standardise [d] (1 for constant features).</summary>
    public double[] FeatureScale { get; }

    /// <summary>Weights on standardised features, row-major [C, d].</summary>
    public double[] Weights { get; }

    /// <summary>Biases [C].</summary>
    public double[] Bias { get; }

    /// <summary>L-BFGS iterations run.</summary>
    public int Iterations { get; }

    /// <summary>Whether the gradient reached the tolerance (false: the iteration limit or a stalled line search ended it).</summary>
    public bool Converged { get; }

    /// <summary>The final objective (mean cross-entropy + weight decay term) on the training set.</summary>
    public double Loss { get; }

    /// <summary>
    /// Trains on row-major <paramref name="features"/> [n, <paramref name="dim"/>] with <paramref name="labels"/> [n]
    /// in [0, <paramref name="classes"/>).
    /// </summary>
    public static LinearProbe Train(ReadOnlySpan<double> features, ReadOnlySpan<int> labels, int dim, int classes,
        LinearProbeOptions? options = null)
    {
        var opt = (options ?? new LinearProbeOptions()).Validate();
        if (classes < 2) throw new ArgumentException($"linear probe: needs at least 2 classes, got {classes}.");
        int n = CheckFeatures(features, dim, "training");
        if (n == 0) throw new ArgumentException("linear probe: the training set is empty.");
        CheckLabels(labels, n, classes, "training");

        // Standardise with the training statistics.
        var mean = new double[dim];
        var scale = new double[dim];
        for (int r = 0; r < n; r++)
            for (int c = 0; c < dim; c++) mean[c] += features[r * dim + c];
        for (int c = 0; c < dim; c++) mean[c] /= n;
        for (int r = 0; r < n; r++)
            for (int c = 0; c < dim; c++)
            {
                double v = features[r * dim + c] - mean[c];
                scale[c] += v * v;
            }
        for (int c = 0; c < dim; c++)
        {
            double sd = Math.Sqrt(scale[c] / n);
            scale[c] = sd > 0 ? sd : 1;
        }
        var x = Standardize(features, n, dim, mean, scale);

        var objective = new Objective(x, labels.ToArray(), n, dim, classes, opt.WeightDecay);
        var (theta, iterations, converged, loss) = Lbfgs(objective, opt);
        var weights = theta.AsSpan(0, classes * dim).ToArray();
        var bias = theta.AsSpan(classes * dim, classes).ToArray();
        return new LinearProbe(dim, classes, mean, scale, weights, bias, iterations, converged, loss);
    }

    /// <summary>The predicted class of each row of <paramref name="features"/> [n, d] (ties: the lower class).</summary>
    public int[] Predict(ReadOnlySpan<double> features)
    {
        int n = CheckFeatures(features, Dim, "evaluation");
        var x = Standardize(features, n, Dim, FeatureMean, FeatureScale);
        var z = new double[(long)n * Classes];
        Logits(x, n, Dim, Classes, Weights, Bias, z);
        var predicted = new int[n];
        for (int r = 0; r < n; r++)
        {
            int best = 0;
            for (int c = 1; c < Classes; c++)
                if (z[r * Classes + c] > z[r * Classes + best]) best = c;
            predicted[r] = best;
        }
        return predicted;
    }

    /// <summary>The fraction of rows of <paramref name="features"/> whose predicted class equals the label.</summary>
    public double Accuracy(ReadOnlySpan<double> features, ReadOnlySpan<int> labels)
    {
        int n = CheckFeatures(features, Dim, "evaluation");
        if (n == 0) throw new ArgumentException("linear probe: the evaluation set is empty.");
        CheckLabels(labels, n, Classes, "evaluation");
        var predicted = Predict(features);
        int correct = 0;
        for (int r = 0; r < n; r++)
            if (predicted[r] == labels[r]) correct++;
        return (double)correct / n;
    }

    private static int CheckFeatures(ReadOnlySpan<double> features, int dim, string set)
    {
        if (dim < 1) throw new ArgumentException($"linear probe: the feature dimension must be >= 1, got {dim}.");
        if (features.Length % dim != 0)
            throw new ArgumentException($"linear probe: {features.Length} {set} values are not whole rows of {dim} features.");
        Dense.RequireFinite(features, dim, $"linear probe ({set} features)");
        return features.Length / dim;
    }

    private static void CheckLabels(ReadOnlySpan<int> labels, int n, int classes, string set)
    {
        if (labels.Length != n) throw new ArgumentException($"linear probe: {labels.Length} {set} labels for {n} feature rows.");
        for (int r = 0; r < n; r++)
            if ((uint)labels[r] >= (uint)classes)
                throw new ArgumentException($"linear probe: {set} label {r} is {labels[r]}, outside [0, {classes}).");
    }

    private static double[] Standardize(ReadOnlySpan<double> features, int n, int dim, double[] mean, double[] scale)
    {
        var x = new double[(long)n * dim];
        for (int r = 0; r < n; r++)
            for (int c = 0; c < dim; c++) x[r * dim + c] = (features[r * dim + c] - mean[c]) / scale[c];
        return x;
    }

    /// <summary>z[n, C] = x W^T + b.</summary>
    private static void Logits(double[] x, int n, int dim, int classes, ReadOnlySpan<double> w, ReadOnlySpan<double> b, double[] z)
    {
        Dense.Gemm(false, true, n, classes, dim, 1.0, x, dim, w, dim, 0.0, z, classes);
        for (int r = 0; r < n; r++)
            for (int c = 0; c < classes; c++) z[r * classes + c] += b[c];
    }

    /// <summary>The training objective over theta = [W (C x d, row-major), b (C)].</summary>
    private sealed class Objective(double[] x, int[] labels, int n, int dim, int classes, double lambda)
    {
        private readonly double[] z = new double[(long)n * classes];
        private readonly double[] rowLoss = new double[n];

        public int Size => classes * dim + classes;

        /// <summary>Writes the gradient into <paramref name="grad"/> and returns the objective.</summary>
        public double Evaluate(double[] theta, double[] grad)
        {
            var w = theta.AsSpan(0, classes * dim);
            var b = theta.AsSpan(classes * dim, classes);
            Logits(x, n, dim, classes, w, b, z);

            // Softmax rows in place: z becomes (p - onehot) / n; row losses are logsumexp - z_y.
            double invN = 1.0 / n;
            int chunks = Math.Min(Dense.Threads, Math.Max(1, n / 256));
            Parallel.For(0, chunks, chunk =>
            {
                for (int r = n * chunk / chunks, end = n * (chunk + 1) / chunks; r < end; r++)
                {
                    var row = z.AsSpan(r * classes, classes);
                    double max = row[0];
                    for (int c = 1; c < classes; c++) max = Math.Max(max, row[c]);
                    double sum = 0;
                    for (int c = 0; c < classes; c++) sum += Math.Exp(row[c] - max);
                    double logSum = max + Math.Log(sum);
                    rowLoss[r] = logSum - row[labels[r]];
                    for (int c = 0; c < classes; c++) row[c] = Math.Exp(row[c] - logSum) * invN;
                    row[labels[r]] -= invN;
                }
            });
            double loss = 0;
            for (int r = 0; r < n; r++) loss += rowLoss[r];
            loss *= invN;

            // grad W = G^T x + lambda W; grad b = column sums of G.
            var gw = grad.AsSpan(0, classes * dim);
            w.CopyTo(gw);
            Dense.Gemm(true, false, classes, dim, n, 1.0, z, classes, x, dim, lambda, gw, dim);
            var gb = grad.AsSpan(classes * dim, classes);
            gb.Clear();
            for (int r = 0; r < n; r++)
                for (int c = 0; c < classes; c++) gb[c] += z[r * classes + c];
            double norm = 0;
            foreach (double v in w) norm += v * v;
            return loss + 0.5 * lambda * norm;
        }
    }

    /// <summary>
    /// L-BFGS (two-loop recursion, initial scaling s.y / y.y) with Armijo backtracking. The objective is strictly convex,
    /// so every accepted step has s.y > 0 and the curvature pairs are always valid.
    /// </summary>
    private static (double[] Theta, int Iterations, bool Converged, double Loss) Lbfgs(Objective f, LinearProbeOptions opt)
    {
        int size = f.Size, m = opt.History;
        var theta = new double[size];
        var grad = new double[size];
        var trial = new double[size];
        var trialGrad = new double[size];
        var dir = new double[size];
        var s = new double[m][];
        var y = new double[m][];
        var rho = new double[m];
        var alpha = new double[m];
        for (int i = 0; i < m; i++)
        {
            s[i] = new double[size];
            y[i] = new double[size];
        }
        int stored = 0, newest = -1;

        double loss = f.Evaluate(theta, grad);
        int iteration = 0;
        bool converged = false;
        while (true)
        {
            if (MaxAbs(grad) <= opt.GradientTolerance)
            {
                converged = true;
                break;
            }
            if (iteration == opt.MaxIterations) break;
            iteration++;

            // Two-loop recursion: dir = -H grad.
            for (int i = 0; i < size; i++) dir[i] = -grad[i];
            for (int t = 0; t < stored; t++)
            {
                int j = (newest - t + m) % m;
                alpha[j] = rho[j] * Dot(s[j], dir);
                Axpy(-alpha[j], y[j], dir);
            }
            if (stored > 0)
            {
                double gamma = Dot(s[newest], y[newest]) / Dot(y[newest], y[newest]);
                for (int i = 0; i < size; i++) dir[i] *= gamma;
            }
            for (int t = stored - 1; t >= 0; t--)
            {
                int j = (newest - t + m) % m;
                double beta = rho[j] * Dot(y[j], dir);
                Axpy(alpha[j] - beta, s[j], dir);
            }
            double slope = Dot(grad, dir);
            if (!(slope < 0))
            {
                // Not a descent direction (only possible through rounding): restart from steepest descent.
                stored = 0;
                for (int i = 0; i < size; i++) dir[i] = -grad[i];
                slope = Dot(grad, dir);
            }

            // The first step has no curvature yet: a unit-length move along -grad.
            double step = stored == 0 ? Math.Min(1.0, 1.0 / Math.Sqrt(-slope)) : 1.0;
            double trialLoss = 0;
            bool accepted = false;
            for (int halvings = 0; halvings < 60; halvings++)
            {
                for (int i = 0; i < size; i++) trial[i] = theta[i] + step * dir[i];
                trialLoss = f.Evaluate(trial, trialGrad);
                if (trialLoss <= loss + 1e-4 * step * slope) // Armijo sufficient decrease
                {
                    accepted = true;
                    break;
                }
                step *= 0.5;
            }
            if (!accepted) break; // rounding floor reached before the tolerance

            newest = (newest + 1) % m;
            for (int i = 0; i < size; i++)
            {
                s[newest][i] = trial[i] - theta[i];
                y[newest][i] = trialGrad[i] - grad[i];
            }
            double sy = Dot(s[newest], y[newest]);
            if (sy > 0)
            {
                rho[newest] = 1 / sy;
                stored = Math.Min(stored + 1, m);
            }
            else
            {
                // Discard the pair (cannot happen for a strictly convex objective); its slot held the oldest pair.
                newest = (newest - 1 + m) % m;
                stored = Math.Min(stored, m - 1);
            }
            (theta, trial) = (trial, theta);
            (grad, trialGrad) = (trialGrad, grad);
            loss = trialLoss;
        }
        return (theta, iteration, converged, loss);
    }

    private static double Dot(double[] a, double[] b) => System.Numerics.Tensors.TensorPrimitives.Dot<double>(a, b);

    private static void Axpy(double a, double[] x, double[] y) =>
        System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(x, a, y, y);

    private static double MaxAbs(double[] a) => Math.Abs(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude<double>(a));
}
