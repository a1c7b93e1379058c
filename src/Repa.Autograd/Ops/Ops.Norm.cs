using Repa.Kernels;

namespace Repa.Autograd;

/// <summary>LayerNorm, the adaLN LayerNorm + modulate and the gated residual of the SiT/DiT blocks, each one fused backend kernel.</summary>
public static partial class Ops
{
    /// <summary>
    /// torch.nn.functional.layer_norm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias, with the biased
    /// variance; x [..., D], weight/bias [D] or null (no affine).
    /// </summary>
    public static Tensor LayerNorm(Tensor x, Tensor? weight = null, Tensor? bias = null, double eps = 1e-6)
    {
        const string op = "layer_norm";
        SameBackend(op, x);
        Require(x.Rank >= 1 && x.Shape[^1] > 0, op, $"input {x.Describe()} needs a non-empty last axis to normalise.");
        LayerNormRequireAffine(op, x, weight, bias);
        return LayerNormCore(op, x, weight, bias, null, null, 1, eps);
    }

    /// <summary>
    /// The DiT/SiT adaLN "modulate(norm(x), shift, scale)": LayerNorm(x, weight, bias, eps) * (1 + scale) + shift with
    /// per-sample shift/scale [N, D] broadcast over the T tokens of x [N, T, D] (or applied row-wise to x [N, D]).
    /// </summary>
    public static Tensor LayerNormModulate(Tensor x, Tensor shift, Tensor scale, double eps = 1e-6, Tensor? weight = null, Tensor? bias = null)
    {
        const string op = "layer_norm_modulate";
        SameBackend(op, x, shift, scale);
        Require(x.Rank is 2 or 3 && x.Shape[^1] > 0, op, $"input {x.Describe()} must be [N, T, D] or [N, D] with D > 0.");
        int n = x.Shape[0], dim = x.Shape[^1], tokens = x.Rank == 3 ? x.Shape[1] : 1;
        Require(shift.Rank == 2 && shift.Shape[0] == n && shift.Shape[1] == dim, op,
            $"shift {shift.Describe()} must be [N, D] = [{n}, {dim}] for input {x.Describe()}.");
        Require(scale.Rank == 2 && scale.Shape[0] == n && scale.Shape[1] == dim, op,
            $"scale {scale.Describe()} must be [N, D] = [{n}, {dim}] for input {x.Describe()}.");
        LayerNormRequireAffine(op, x, weight, bias);
        return LayerNormCore(op, x, weight, bias, shift, scale, Math.Max(tokens, 1), eps);
    }

    /// <summary>
    /// The adaLN-Zero gated residual x + gate * y of the DiT/SiT blocks: x, y [N, T, D] (or [N, D]), the per-sample
    /// gate [N, D] broadcast over the tokens.
    /// </summary>
    public static Tensor GatedResidual(Tensor x, Tensor gate, Tensor y)
    {
        const string op = "gated_residual";
        SameBackend(op, x, gate, y);
        Require(x.Rank is 2 or 3 && x.Shape[^1] > 0, op, $"input {x.Describe()} must be [N, T, D] or [N, D] with D > 0.");
        Require(y.Shape.AsSpan().SequenceEqual(x.Shape), op, $"branch {y.Describe()} must have the shape of the residual {x.Describe()}.");
        int n = x.Shape[0], dim = x.Shape[^1], tokens = x.Rank == 3 ? x.Shape[1] : 1;
        Require(gate.Rank == 2 && gate.Shape[0] == n && gate.Shape[1] == dim, op,
            $"gate {gate.Describe()} must be [N, D] = [{n}, {dim}] for input {x.Describe()}.");
        int rows = (int)(x.Count / dim), rowsPerGroup = Math.Max(tokens, 1);
        var output = NewLike(x, x.Shape);
        var be = x.Backend;
        be.GatedResidualForward(x.Buffer, y.Buffer, gate.Buffer, output.Buffer, rows, dim, rowsPerGroup);
        return Record(op, output, [x, gate, y], dout =>
        {
            var gx = GradOf(x);
            var gg = GradOf(gate);
            var gy = GradOf(y);
            if (gx == null && gg == null && gy == null) return;
            be.GatedResidualBackward(y.Buffer, gate.Buffer, dout.Buffer, gx?.Buffer, gy?.Buffer, gg?.Buffer, rows, dim, rowsPerGroup);
        });
    }

    private static Tensor[] LayerNormPresent(Tensor? weight, Tensor? bias) =>
        weight != null && bias != null ? [weight, bias] : weight != null ? [weight] : bias != null ? [bias] : [];

    /// <summary>Shapes of the affine, and its dtype: the activations' <see cref="AccumulationType"/> (float32 master
    /// weights beside bfloat16 activations, as the statistics).</summary>
    private static void LayerNormRequireAffine(string op, Tensor x, Tensor? weight, Tensor? bias)
    {
        int dim = x.Shape[^1];
        var affineType = AccumulationType(x.DType);
        foreach (var p in LayerNormPresent(weight, bias))
        {
            Require(p.Backend == x.Backend, op, $"{p.Describe()} is on {p.Backend.Name} but the input {x.Describe()} is on {x.Backend.Name}.");
            Require(p.DType == affineType, op, $"the affine {p.Describe()} must be {affineType.Name()} for input {x.Describe()}.");
        }
        if (weight != null) Require(weight.Rank == 1 && weight.Shape[0] == dim, op, $"weight {weight.Describe()} must be [{dim}] for input {x.Describe()}.");
        if (bias != null) Require(bias.Rank == 1 && bias.Shape[0] == dim, op, $"bias {bias.Describe()} must be [{dim}] for input {x.Describe()}.");
    }

    /// <summary>The shared forward/record of LayerNorm and LayerNormModulate; shapes are already validated.</summary>
    private static Tensor LayerNormCore(string op, Tensor x, Tensor? weight, Tensor? bias, Tensor? shift, Tensor? scale, int rowsPerGroup, double eps)
    {
        int dim = x.Shape[^1], rows = (int)(x.Count / dim);
        var y = NewLike(x, x.Shape);
        var mean = NewStatistics(x, rows);
        var rstd = NewStatistics(x, rows);
        var be = x.Backend;
        be.LayerNormForward(x.Buffer, weight?.Buffer, bias?.Buffer, shift?.Buffer, scale?.Buffer, y.Buffer, mean.Buffer, rstd.Buffer,
            rows, dim, rowsPerGroup, eps);
        Tensor[] inputs = shift != null && scale != null ? [x, shift, scale, .. LayerNormPresent(weight, bias)] : [x, .. LayerNormPresent(weight, bias)];
        var result = Record(op, y, inputs, dy =>
        {
            var gx = GradOf(x);
            var gw = weight == null ? null : GradOf(weight);
            var gb = bias == null ? null : GradOf(bias);
            var gs = shift == null ? null : GradOf(shift);
            var gc = scale == null ? null : GradOf(scale);
            if (gx == null && gw == null && gb == null && gs == null && gc == null) return;
            be.LayerNormBackward(x.Buffer, weight?.Buffer, bias?.Buffer, scale?.Buffer, mean.Buffer, rstd.Buffer, dy.Buffer,
                gx?.Buffer, gw?.Buffer, gb?.Buffer, gs?.Buffer, gc?.Buffer, rows, dim, rowsPerGroup);
        });
        // Unrecorded (no tape, NoGrad, or nothing requires grad): the saved statistics have no reader; give them back now
        // rather than leaving them to the tape (or, with no tape, to no one).
        if (result.Creator == null)
        {
            mean.Dispose();
            rstd.Dispose();
        }
        return result;
    }
}
