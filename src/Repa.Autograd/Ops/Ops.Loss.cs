using Repa.Kernels;

namespace Repa.Autograd;

/// <summary>
/// REPA's training losses (sihyun-yu/REPA loss.py): the denoising MSE and the projection (representation alignment)
/// loss, cosine by default and NT-Xent as the paper's Table 2 alternative; and DiT's variational-bound term of the learned
/// variance. Losses are per sample ([N]) so the caller decides how samples and encoders are averaged.
/// </summary>
public static partial class Ops
{
    /// <summary>The norm clamp of torch.nn.functional.normalize.</summary>
    private const double LossNormalizeEps = 1e-12;

    /// <summary>
    /// Per-sample mean squared error: loss[n] = mean over every non-batch element of (prediction - target)^2, for
    /// inputs of equal shape [N, ...]. This is REPA's denoising loss before the batch mean (mean_flat((v_hat - v)^2)).
    /// Gradients flow to both inputs.
    /// </summary>
    public static Tensor MsePerSample(Tensor prediction, Tensor target)
    {
        const string op = "mse_per_sample";
        SameBackend(op, prediction, target);
        Require(prediction.Shape.AsSpan().SequenceEqual(target.Shape), op,
            $"prediction {prediction.Describe()} and target {target.Describe()} must have the same shape.");
        Require(prediction.Rank >= 1 && prediction.Shape[0] > 0 && prediction.Count > 0, op,
            $"prediction {prediction.Describe()} must be [N, ...] with N >= 1 and at least one element per sample.");
        int samples = prediction.Shape[0];
        long inner = prediction.Count / samples;
        var be = prediction.Backend;
        var loss = NewLike(prediction, samples);
        be.MseForward(prediction.Buffer, target.Buffer, loss.Buffer, samples, inner);
        return Record(op, loss, [prediction, target], dy =>
            be.MseBackward(prediction.Buffer, target.Buffer, dy.Buffer, GradOf(prediction)?.Buffer, GradOf(target)?.Buffer, samples, inner));
    }

    /// <summary>Mean squared error over every element (torch.nn.functional.mse_loss, reduction "mean"): a scalar.</summary>
    public static Tensor Mse(Tensor prediction, Tensor target) => Mean(MsePerSample(prediction, target));

    /// <summary>
    /// REPA's projection loss per sample: for projected hidden states z and target (encoder) features h, both
    /// [N, T, Z], loss[n] = mean over tokens t of -&lt;normalize(z[n, t]), normalize(h[n, t])&gt;, with
    /// normalize(x) = x / max(|x|, 1e-12) (torch.nn.functional.normalize). It lies in [-1, 1]: -1 when every token of
    /// z points along h. The fp32 path normalises in fp32 (as REPA does). One fused pass per token row forward and
    /// backward; the target usually has RequiresGrad false and then gets no gradient. REPA's total is
    /// sum over encoders and samples / (n_encoders * N).
    /// </summary>
    public static Tensor CosineAlignmentLoss(Tensor projected, Tensor target)
    {
        const string op = "cosine_alignment_loss";
        var (samples, tokens, dim) = AlignmentShapes(op, projected, target);
        var be = projected.Backend;
        var loss = NewLike(projected, samples);
        be.CosineAlignmentForward(projected.Buffer, target.Buffer, loss.Buffer, samples, tokens, dim, LossNormalizeEps);
        return Record(op, loss, [projected, target], dy =>
            be.CosineAlignmentBackward(projected.Buffer, target.Buffer, dy.Buffer, GradOf(projected)?.Buffer, GradOf(target)?.Buffer,
                samples, tokens, dim, LossNormalizeEps));
    }

    /// <summary>
    /// NT-Xent (normalised temperature-scaled cross-entropy; REPA paper Table 2) per sample, defined patch-wise within
    /// each image. For sample n with projected z and target h, both [N, T, Z]:
    /// s_ij = &lt;normalize(z[n, i]), normalize(h[n, j])&gt; / temperature for tokens i, j in [0, T), and
    /// loss[n] = (1/T) sum_i -log softmax_j(s_i.)[i] = (1/T) sum_i (logsumexp_j s_ij - s_ii).
    /// The positive of token i of z is the same patch i of the target; the negatives are the image's other T - 1
    /// patches of the target (no cross-image and no z-z negatives). normalize(x) = x / max(|x|, 1e-12). With T = 1
    /// the loss is 0. Composed from row normalisation, a batched matmul ([N, T, T] logits) and a fused
    /// cross-entropy-on-the-diagonal kernel; gradients flow to both inputs.
    /// </summary>
    public static Tensor NtXentLoss(Tensor projected, Tensor target, double temperature = 0.1)
    {
        const string op = "nt_xent_loss";
        AlignmentShapes(op, projected, target);
        Require(temperature > 0 && double.IsFinite(temperature), op, $"temperature must be positive and finite, got {temperature}.");
        var zn = NormalizeRowsL2(projected);
        var hn = NormalizeRowsL2(target);
        var logits = MatMul(zn, hn, transB: true);
        var loss = DiagonalCrossEntropy(logits, 1.0 / temperature);
        if (!loss.RequiresGrad)
        {
            // Nothing will run backward: hand the intermediates back to the pool now.
            zn.Dispose();
            hn.Dispose();
            logits.Dispose();
        }
        return loss;
    }

    private static (int samples, int tokens, int dim) AlignmentShapes(string op, Tensor projected, Tensor target)
    {
        SameBackend(op, projected, target);
        Require(projected.Rank == 3, op, $"projected {projected.Describe()} must be [N, T, Z].");
        Require(projected.Shape.AsSpan().SequenceEqual(target.Shape), op,
            $"projected {projected.Describe()} and target {target.Describe()} must have the same shape [N, T, Z].");
        Require(projected.Count > 0, op, $"projected {projected.Describe()} is empty.");
        return (projected.Shape[0], projected.Shape[1], projected.Shape[2]);
    }

    /// <summary>x / max(|x|, 1e-12) along the last axis (torch.nn.functional.normalize(x, dim=-1)).</summary>
    internal static Tensor NormalizeRowsL2(Tensor x)
    {
        const string op = "normalize";
        Require(x.Rank >= 1 && x.Shape[^1] > 0, op, $"{x.Describe()} needs a non-empty last axis.");
        int dim = x.Shape[^1];
        long rows = x.Count / dim;
        var be = x.Backend;
        var y = NewLike(x, x.Shape);
        be.RowL2NormalizeForward(x.Buffer, y.Buffer, rows, dim, LossNormalizeEps);
        return Record(op, y, [x], dy =>
        {
            if (GradOf(x) is { } gx) be.RowL2NormalizeBackward(x.Buffer, dy.Buffer, gx.Buffer, rows, dim, LossNormalizeEps);
        });
    }

    /// <summary>
    /// For logits S [N, T, T]: loss[n] = (1/T) sum_i (logsumexp_j(scale S[n, i, j]) - scale S[n, i, i]), the mean
    /// cross-entropy of each row against its diagonal entry.
    /// </summary>
    internal static Tensor DiagonalCrossEntropy(Tensor logits, double scale)
    {
        const string op = "diagonal_cross_entropy";
        Require(logits.Rank == 3 && logits.Shape[1] == logits.Shape[2] && logits.Count > 0, op,
            $"logits {logits.Describe()} must be [N, T, T] and non-empty.");
        int samples = logits.Shape[0], n = logits.Shape[1];
        var be = logits.Backend;
        var lse = NewLike(logits, samples, n);
        var loss = NewLike(logits, samples);
        be.DiagonalCrossEntropyForward(logits.Buffer, lse.Buffer, loss.Buffer, samples, n, scale);
        var result = Record(op, loss, [logits], dy =>
        {
            if (GradOf(logits) is { } g) be.DiagonalCrossEntropyBackward(logits.Buffer, lse.Buffer, dy.Buffer, g.Buffer, samples, n, scale);
        });
        if (!result.RequiresGrad) lse.Dispose();
        return result;
    }

    /// <summary>
    /// DiT's variational-bound term ("vb", in bits) per sample for a learned-range variance with the mean frozen
    /// (facebookresearch/DiT gaussian_diffusion.py training_losses -> _vb_terms_bpd). Inputs, all [N, ...] of one shape
    /// except <paramref name="stepParams"/>: <paramref name="varValues"/> the model's raw variance channels (the only input
    /// that gets a gradient); <paramref name="modelMean"/> the mean of p(x_{t-1} | x_t) from the DETACHED eps prediction;
    /// <paramref name="trueMean"/> the mean of the true posterior q(x_{t-1} | x_t, x0); <paramref name="x0"/> the clean data
    /// (for the t = 0 decoder). <paramref name="stepParams"/> [N, 4] holds per sample (min_log, max_log, true_log_var,
    /// decoder): the clipped posterior log variance and log beta of its timestep (the learned range), the posterior's log
    /// variance, and 1 where t = 0 (decoder NLL) or 0 (KL). log_var = frac max_log + (1 - frac) min_log with
    /// frac = (v + 1) / 2; the result is the KL (t &gt; 0) or the discretised Gaussian decoder NLL (t = 0), averaged over
    /// the sample's elements and divided by ln 2. The other inputs must not require grad (detach them): the reference
    /// stops the gradient of the mean here, and a silently dropped gradient would be a bug.
    /// </summary>
    public static Tensor DiffusionVlbTerm(Tensor varValues, Tensor modelMean, Tensor trueMean, Tensor x0, Tensor stepParams)
    {
        const string op = "diffusion_vlb_term";
        SameBackend(op, varValues, modelMean, trueMean, x0, stepParams);
        foreach (var other in new[] { modelMean, trueMean, x0 })
            Require(other.Shape.AsSpan().SequenceEqual(varValues.Shape), op,
                $"{other.Describe()} must have the shape of the variance values {varValues.Describe()}.");
        Require(varValues.Rank >= 1 && varValues.Shape[0] > 0 && varValues.Count > 0, op,
            $"variance values {varValues.Describe()} must be [N, ...] with N >= 1 and at least one element per sample.");
        int samples = varValues.Shape[0];
        RequireShape(op, stepParams, samples, 4);
        Require(!modelMean.RequiresGrad && !trueMean.RequiresGrad && !x0.RequiresGrad && !stepParams.RequiresGrad, op,
            "only the variance values are differentiated; detach the mean, the posterior, x0 and the step parameters.");
        long inner = varValues.Count / samples;
        var be = varValues.Backend;
        var loss = NewLike(varValues, samples);
        be.DiffusionVlbForward(varValues.Buffer, modelMean.Buffer, trueMean.Buffer, x0.Buffer, stepParams.Buffer, loss.Buffer, samples, inner);
        return Record(op, loss, [varValues], dy =>
        {
            if (GradOf(varValues) is { } g)
                be.DiffusionVlbBackward(varValues.Buffer, modelMean.Buffer, trueMean.Buffer, x0.Buffer, stepParams.Buffer, dy.Buffer,
                    g.Buffer, samples, inner);
        });
    }
}
