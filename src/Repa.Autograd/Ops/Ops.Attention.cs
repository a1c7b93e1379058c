namespace Repa.Autograd;

/// <summary>Fused multi-head softmax attention (timm Attention between the qkv and proj Linears).</summary>
public static partial class Ops
{
    /// <summary>
    /// Multi-head attention of a fused qkv projection: <paramref name="qkv"/> [N, T, 3D] with features ordered
    /// [3, heads, head_dim] (timm's qkv Linear output) gives [N, T, D], out[n, t, h*hd + d] =
    /// sum_s softmax_s(scale q_t . k_s) v_s[d], heads concatenated ready for the proj Linear. scale defaults to
    /// head_dim^-0.5. Only the per-row log-sum-exp [N, heads, T] is kept for backward, never the T x T probabilities
    /// (they are recomputed there; see CpuBackend.Attention.cs for the memory arithmetic). The log-sum-exp is float32
    /// for bfloat16 qkv (<see cref="AccumulationType"/>).
    /// </summary>
    public static Tensor Attention(Tensor qkv, int heads, double? scale = null)
    {
        const string op = "attention";
        Require(heads > 0, op, $"heads must be positive, got {heads}.");
        Require(qkv.Rank == 3, op, $"qkv {qkv.Describe()} must be [N, T, 3 * heads * head_dim].");
        int n = qkv.Shape[0], tokens = qkv.Shape[1], features = qkv.Shape[2];
        Require(features > 0 && features % (3 * heads) == 0, op,
            $"qkv {qkv.Describe()} has {features} features, which is not 3 * heads * head_dim for heads = {heads} (it must be a positive multiple of {3 * heads}).");
        int headDim = features / (3 * heads), d = heads * headDim;
        double s = scale ?? 1.0 / Math.Sqrt(headDim);
        Require(double.IsFinite(s), op, $"scale must be finite, got {s}.");

        var y = NewLike(qkv, n, tokens, d);
        var lse = NewStatistics(qkv, n, heads, tokens);
        var be = qkv.Backend;
        be.AttentionForward(qkv.Buffer, y.Buffer, lse.Buffer, n, tokens, heads, headDim, s);
        var result = Record(op, y, [qkv], dy =>
        {
            if (GradOf(qkv) is { } g) be.AttentionBackward(qkv.Buffer, y.Buffer, dy.Buffer, lse.Buffer, g.Buffer, n, tokens, heads, headDim, s);
        });
        // Nothing will replay this op (no tape, NoGrad, or no input needing grad): hand the statistics back now.
        if (result.Creator == null) lse.Dispose();
        return result;
    }
}
