namespace Repa.Runtime.Diffusion;

/// <summary>
/// The discrete Gaussian diffusion of DiT (facebookresearch/DiT diffusion/, after OpenAI's IDDPM/ADM) as DiT configures
/// it with create_diffusion: a named beta schedule (DiT: "linear", 1000 steps), eps prediction, LEARNED_RANGE variance
/// (the model's last C output channels interpolate the log variance between the clipped posterior variance and beta),
/// and the hybrid loss (MSE + variational bound; see <see cref="Training.DdpmObjective"/>). The process is always built
/// as DiT's SpacedDiffusion: the kept timesteps of <see cref="TimestepMap"/> get the betas
/// 1 - alphā[kept_k] / alphā[kept_(k-1)], which for "" (training) are all 1000 steps recomputed that way.
/// All schedule arithmetic is float64, in the reference's order of operations.
/// </summary>
/// <remarks>
/// Timestep indices <c>t</c> taken by the methods below are indices into this (possibly respaced) process,
/// 0..<see cref="NumTimesteps"/>-1; the model is called with the ORIGINAL timestep <c>TimestepMap[t]</c> (DiT's
/// _WrappedModel), which DiT's timestep embedder takes as the raw number 0..999. Arrays are [N, C, ...] flattened with
/// the batch first; per-sample quantities are indexed by sample.
/// </remarks>
public sealed partial class GaussianDiffusion
{
    private readonly int[] timestepMap;
    private readonly double[] betas, logBetas, alphasCumprod, alphasCumprodPrev, alphasCumprodNext, sqrtAlphasCumprod,
        sqrtOneMinusAlphasCumprod, logOneMinusAlphasCumprod, sqrtRecipAlphasCumprod, sqrtRecipm1AlphasCumprod, posteriorVariance,
        posteriorLogVarianceClipped, posteriorMeanCoef1, posteriorMeanCoef2;

    /// <summary>A process with these betas (float64, each in (0, 1]); <paramref name="timestepMap"/> maps its steps to the original ones.</summary>
    public GaussianDiffusion(double[] betas, int[]? timestepMap = null, int? originalNumSteps = null)
    {
        ArgumentNullException.ThrowIfNull(betas);
        if (betas.Length == 0) throw new ArgumentException("a diffusion needs at least one beta.", nameof(betas));
        foreach (double b in betas)
            if (!(b > 0 && b <= 1)) throw new ArgumentException($"every beta must be in (0, 1], got {b}.", nameof(betas));
        int n = betas.Length;
        this.timestepMap = timestepMap ?? Enumerable.Range(0, n).ToArray();
        if (this.timestepMap.Length != n)
            throw new ArgumentException($"the timestep map has {this.timestepMap.Length} entries for {n} betas.", nameof(timestepMap));
        OriginalNumSteps = originalNumSteps ?? n;

        this.betas = (double[])betas.Clone();
        alphasCumprod = new double[n];
        double product = 1;
        for (int i = 0; i < n; i++) alphasCumprod[i] = product *= 1.0 - betas[i];
        alphasCumprodPrev = new double[n];
        alphasCumprodNext = new double[n];
        for (int i = 0; i < n; i++)
        {
            alphasCumprodPrev[i] = i == 0 ? 1.0 : alphasCumprod[i - 1];
            alphasCumprodNext[i] = i == n - 1 ? 0.0 : alphasCumprod[i + 1];
        }
        sqrtAlphasCumprod = Map(alphasCumprod, a => Math.Sqrt(a));
        sqrtOneMinusAlphasCumprod = Map(alphasCumprod, a => Math.Sqrt(1.0 - a));
        logOneMinusAlphasCumprod = Map(alphasCumprod, a => Math.Log(1.0 - a));
        sqrtRecipAlphasCumprod = Map(alphasCumprod, a => Math.Sqrt(1.0 / a));
        sqrtRecipm1AlphasCumprod = Map(alphasCumprod, a => Math.Sqrt(1.0 / a - 1));
        posteriorVariance = new double[n];
        posteriorMeanCoef1 = new double[n];
        posteriorMeanCoef2 = new double[n];
        logBetas = Map(betas, Math.Log);
        for (int i = 0; i < n; i++)
        {
            double ac = alphasCumprod[i], prev = alphasCumprodPrev[i];
            posteriorVariance[i] = betas[i] * (1.0 - prev) / (1.0 - ac);
            posteriorMeanCoef1[i] = betas[i] * Math.Sqrt(prev) / (1.0 - ac);
            posteriorMeanCoef2[i] = (1.0 - prev) * Math.Sqrt(1.0 - betas[i]) / (1.0 - ac);
        }
        // The posterior variance is 0 at t = 0: the reference clips its log by repeating the value of t = 1 (and has
        // no entries at all for a one-step process).
        posteriorLogVarianceClipped = n > 1 ? posteriorVariance.Select((v, i) => Math.Log(i == 0 ? posteriorVariance[1] : v)).ToArray() : [];
    }

    /// <summary>
    /// DiT's create_diffusion(timestep_respacing, noise_schedule, diffusion_steps) with learn_sigma = true and the
    /// defaults (eps prediction, LEARNED_RANGE, MSE + VLB loss): "" for training (every step), "250" for DiT's sampling,
    /// "ddim50" for DDIM's fixed stride, or comma-separated section counts (see <see cref="SpaceTimesteps"/>).
    /// </summary>
    public static GaussianDiffusion Create(string timestepRespacing = "", string noiseSchedule = "linear", int diffusionSteps = 1000)
    {
        var betas = NamedBetaSchedule(noiseSchedule, diffusionSteps);
        var kept = string.IsNullOrEmpty(timestepRespacing)
            ? Enumerable.Range(0, diffusionSteps).ToArray()
            : SpaceTimesteps(diffusionSteps, timestepRespacing);
        // SpacedDiffusion: betas of the kept steps from the base process's cumulative products.
        var baseProcess = new GaussianDiffusion(betas);
        var spacedBetas = new double[kept.Length];
        double last = 1.0;
        for (int k = 0; k < kept.Length; k++)
        {
            double ac = baseProcess.AlphasCumprod[kept[k]];
            spacedBetas[k] = 1 - ac / last;
            last = ac;
        }
        return new GaussianDiffusion(spacedBetas, kept, diffusionSteps);
    }

    /// <summary>
    /// get_named_beta_schedule: "linear" is Ho et al.'s linspace(1e-4, 0.02) scaled by 1000 / steps (numpy's linspace:
    /// start + i * (stop - start) / (steps - 1), the last value exactly stop); "squaredcos_cap_v2" is IDDPM's cosine
    /// schedule (betas_for_alpha_bar with max_beta 0.999).
    /// </summary>
    public static double[] NamedBetaSchedule(string name, int steps)
    {
        if (steps < 1) throw new ArgumentException($"diffusion_steps must be at least 1, got {steps}.", nameof(steps));
        switch (name)
        {
            case "linear":
            {
                double scale = 1000.0 / steps, start = scale * 0.0001, end = scale * 0.02;
                var betas = new double[steps];
                if (steps == 1) return [start];
                double step = (end - start) / (steps - 1);
                for (int i = 0; i < steps; i++) betas[i] = i * step + start;
                betas[^1] = end;
                return betas;
            }
            case "squaredcos_cap_v2":
            {
                static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
                var betas = new double[steps];
                for (int i = 0; i < steps; i++)
                    betas[i] = Math.Min(1 - AlphaBar((i + 1) / (double)steps) / AlphaBar(i / (double)steps), 0.999);
                return betas;
            }
            default:
                throw new ArgumentException($"unknown noise schedule '{name}'; use linear or squaredcos_cap_v2.", nameof(name));
        }
    }

    /// <summary>
    /// DiT's space_timesteps, as a sorted array. "ddimN": the first integer stride s with |range(0, steps, s)| = N (the
    /// DDIM paper's striding). Otherwise comma-separated counts, one per equal section of the original steps (the first
    /// steps % sections sections one step longer): section of size L with K steps takes start + round(k (L-1)/(K-1))
    /// for k = 0..K-1 (accumulated as the reference does, rounding half to even), or just its start for K = 1.
    /// </summary>
    public static int[] SpaceTimesteps(int numTimesteps, string sectionCounts)
    {
        ArgumentNullException.ThrowIfNull(sectionCounts);
        if (sectionCounts.StartsWith("ddim", StringComparison.Ordinal))
        {
            if (!int.TryParse(sectionCounts.AsSpan(4), out int desired) || desired < 1)
                throw new ArgumentException($"timestep respacing '{sectionCounts}' must be ddimN with N a positive integer.", nameof(sectionCounts));
            for (int stride = 1; stride < numTimesteps; stride++)
                if ((numTimesteps + stride - 1) / stride == desired)
                    return Enumerable.Range(0, desired).Select(k => k * stride).ToArray();
            throw new ArgumentException($"timestep respacing '{sectionCounts}': no integer stride gives exactly {desired} of {numTimesteps} steps.", nameof(sectionCounts));
        }
        var counts = new List<int>();
        foreach (var part in sectionCounts.Split(','))
        {
            if (!int.TryParse(part.Trim(), out int c) || c < 0)
                throw new ArgumentException($"timestep respacing '{sectionCounts}' must be comma-separated step counts or ddimN.", nameof(sectionCounts));
            counts.Add(c);
        }
        int sizePer = numTimesteps / counts.Count, extra = numTimesteps % counts.Count, startIndex = 0;
        var steps = new SortedSet<int>();
        for (int i = 0; i < counts.Count; i++)
        {
            int size = sizePer + (i < extra ? 1 : 0), count = counts[i];
            if (size < count)
                throw new ArgumentException($"timestep respacing '{sectionCounts}': cannot divide a section of {size} steps into {count}.", nameof(sectionCounts));
            double stride = count <= 1 ? 1 : (size - 1) / (double)(count - 1);
            double current = 0;
            for (int k = 0; k < count; k++)
            {
                steps.Add(startIndex + (int)Math.Round(current, MidpointRounding.ToEven)); // Python's round()
                current += stride;
            }
            startIndex += size;
        }
        return [.. steps];
    }

    /// <summary>Steps of this process.</summary>
    public int NumTimesteps => betas.Length;

    /// <summary>Steps of the process it was respaced from (1000 for DiT).</summary>
    public int OriginalNumSteps { get; }

    /// <summary>Original timestep of each step of this process (ascending); the model is called with these.</summary>
    public IReadOnlyList<int> TimestepMap => timestepMap;

    public ReadOnlySpan<double> Betas => betas;
    public ReadOnlySpan<double> LogBetas => logBetas;
    public ReadOnlySpan<double> AlphasCumprod => alphasCumprod;
    public ReadOnlySpan<double> AlphasCumprodPrev => alphasCumprodPrev;
    public ReadOnlySpan<double> AlphasCumprodNext => alphasCumprodNext;
    public ReadOnlySpan<double> SqrtAlphasCumprod => sqrtAlphasCumprod;
    public ReadOnlySpan<double> SqrtOneMinusAlphasCumprod => sqrtOneMinusAlphasCumprod;
    public ReadOnlySpan<double> LogOneMinusAlphasCumprod => logOneMinusAlphasCumprod;
    public ReadOnlySpan<double> SqrtRecipAlphasCumprod => sqrtRecipAlphasCumprod;
    public ReadOnlySpan<double> SqrtRecipm1AlphasCumprod => sqrtRecipm1AlphasCumprod;

    /// <summary>Variance of q(x_{t-1} | x_t, x0): beta_t (1 - alphā_{t-1}) / (1 - alphā_t) (0 at t = 0).</summary>
    public ReadOnlySpan<double> PosteriorVariance => posteriorVariance;

    /// <summary>log of <see cref="PosteriorVariance"/> with t = 0 taking the value of t = 1 (the learned range's lower end).</summary>
    public ReadOnlySpan<double> PosteriorLogVarianceClipped => posteriorLogVarianceClipped;

    /// <summary>Posterior mean = coef1 x0 + coef2 x_t.</summary>
    public ReadOnlySpan<double> PosteriorMeanCoef1 => posteriorMeanCoef1;

    public ReadOnlySpan<double> PosteriorMeanCoef2 => posteriorMeanCoef2;

    // ---- the forward process and the posterior ----

    /// <summary>q_sample: x_t = sqrt(alphā_t) x0 + sqrt(1 - alphā_t) noise, per sample t[n].</summary>
    public void QSample(ReadOnlySpan<double> x0, ReadOnlySpan<int> t, ReadOnlySpan<double> noise, Span<double> xt)
    {
        int inner = Inner(x0.Length, t, noise.Length, xt.Length);
        for (int n = 0; n < t.Length; n++)
        {
            double a = sqrtAlphasCumprod[Check(t[n])], s = sqrtOneMinusAlphasCumprod[t[n]];
            for (int i = n * inner; i < (n + 1) * inner; i++) xt[i] = a * x0[i] + s * noise[i];
        }
    }

    /// <summary>
    /// q_posterior_mean_variance: the mean of q(x_{t-1} | x_t, x0) per element; its variance and clipped log variance are
    /// <see cref="PosteriorVariance"/>[t] and <see cref="PosteriorLogVarianceClipped"/>[t].
    /// </summary>
    public void QPosteriorMean(ReadOnlySpan<double> x0, ReadOnlySpan<double> xt, ReadOnlySpan<int> t, Span<double> mean)
    {
        int inner = Inner(x0.Length, t, xt.Length, mean.Length);
        for (int n = 0; n < t.Length; n++)
        {
            double c1 = posteriorMeanCoef1[Check(t[n])], c2 = posteriorMeanCoef2[t[n]];
            for (int i = n * inner; i < (n + 1) * inner; i++) mean[i] = c1 * x0[i] + c2 * xt[i];
        }
    }

    /// <summary>_predict_xstart_from_eps: x0 = sqrt(1/alphā) x_t - sqrt(1/alphā - 1) eps.</summary>
    public void PredictXStartFromEps(ReadOnlySpan<double> xt, ReadOnlySpan<int> t, ReadOnlySpan<double> eps, Span<double> x0)
    {
        int inner = Inner(xt.Length, t, eps.Length, x0.Length);
        for (int n = 0; n < t.Length; n++)
        {
            double a = sqrtRecipAlphasCumprod[Check(t[n])], b = sqrtRecipm1AlphasCumprod[t[n]];
            for (int i = n * inner; i < (n + 1) * inner; i++) x0[i] = a * xt[i] - b * eps[i];
        }
    }

    /// <summary>_predict_eps_from_xstart: eps = (sqrt(1/alphā) x_t - x0) / sqrt(1/alphā - 1).</summary>
    public void PredictEpsFromXStart(ReadOnlySpan<double> xt, ReadOnlySpan<int> t, ReadOnlySpan<double> x0, Span<double> eps)
    {
        int inner = Inner(xt.Length, t, x0.Length, eps.Length);
        for (int n = 0; n < t.Length; n++)
        {
            double a = sqrtRecipAlphasCumprod[Check(t[n])], b = sqrtRecipm1AlphasCumprod[t[n]];
            for (int i = n * inner; i < (n + 1) * inner; i++) eps[i] = (a * xt[i] - x0[i]) / b;
        }
    }

    /// <summary>
    /// p_mean_variance for eps prediction with LEARNED_RANGE: <paramref name="modelOutput"/> is [N, 2C, ...] (eps in the
    /// first C channels, variance values v in the last C), <paramref name="x"/> is x_t [N, C, ...]. Per element:
    /// log_var = frac log(beta_t) + (1 - frac) posterior_log_variance_clipped_t with frac = (v + 1)/2; x0_hat from eps
    /// (clamped to [-1, 1] when <paramref name="clipDenoised"/>); mean = the posterior mean at x0_hat.
    /// </summary>
    public void PMeanVariance(ReadOnlySpan<double> modelOutput, ReadOnlySpan<double> x, ReadOnlySpan<int> t, int channels, bool clipDenoised,
        Span<double> mean, Span<double> logVariance, Span<double> predXStart)
    {
        int inner = Inner(x.Length, t, mean.Length, predXStart.Length);
        if (logVariance.Length != x.Length || modelOutput.Length != 2 * x.Length)
            throw new ArgumentException($"p_mean_variance: the model output has {modelOutput.Length} values for {x.Length} inputs; a learned-variance model gives twice as many ([N, 2C, ...]).");
        if (channels < 1 || inner % channels != 0)
            throw new ArgumentException($"p_mean_variance: {inner} values per sample do not split into {channels} channels.");
        for (int n = 0; n < t.Length; n++)
        {
            int step = Check(t[n]);
            if (posteriorLogVarianceClipped.Length == 0)
                throw new InvalidOperationException("p_mean_variance needs a process of at least two steps (the learned range's lower end is the posterior variance of step 1).");
            double minLog = posteriorLogVarianceClipped[step], maxLog = logBetas[step];
            double a = sqrtRecipAlphasCumprod[step], b = sqrtRecipm1AlphasCumprod[step];
            double c1 = posteriorMeanCoef1[step], c2 = posteriorMeanCoef2[step];
            int xOff = n * inner, oOff = 2 * n * inner;
            for (int i = 0; i < inner; i++)
            {
                double eps = modelOutput[oOff + i], v = modelOutput[oOff + inner + i], xi = x[xOff + i];
                double frac = (v + 1) / 2;
                logVariance[xOff + i] = frac * maxLog + (1 - frac) * minLog;
                double x0 = a * xi - b * eps;
                if (clipDenoised) x0 = Math.Clamp(x0, -1.0, 1.0);
                predXStart[xOff + i] = x0;
                mean[xOff + i] = c1 * x0 + c2 * xi;
            }
        }
    }

    private int Check(int t) =>
        (uint)t < (uint)NumTimesteps ? t : throw new ArgumentOutOfRangeException(nameof(t), t, $"timestep index must be in 0..{NumTimesteps - 1}.");

    /// <summary>Elements per sample, after checking that every array holds the same N samples.</summary>
    private static int Inner(int length, ReadOnlySpan<int> t, params ReadOnlySpan<int> others)
    {
        if (t.Length == 0 || length % t.Length != 0)
            throw new ArgumentException($"{length} values do not split into {t.Length} samples.");
        foreach (int o in others)
            if (o != length) throw new ArgumentException($"arrays of {length} and {o} values do not match.");
        return length / t.Length;
    }

    private static double[] Map(double[] values, Func<double, double> f) => values.Select(f).ToArray();
}
