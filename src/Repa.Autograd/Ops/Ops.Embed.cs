using Repa.Kernels;

namespace Repa.Autograd;

/// <summary>Embedding table lookups (SiT's label embedder) and DiT's sinusoidal timestep embedding.</summary>
public static partial class Ops
{
    /// <summary>
    /// torch.nn.functional.embedding: rows of <paramref name="table"/> [V, D] picked by int32 <paramref name="ids"/> of
    /// any shape, giving [..ids.Shape, D]. The backward scatter-adds into the table's gradient (repeated ids add up);
    /// ids get no gradient. An id outside [0, V) throws <see cref="ArgumentOutOfRangeException"/> naming the id and V.
    /// </summary>
    public static Tensor Embedding(Tensor table, Tensor ids)
    {
        const string op = "embedding";
        Require(table.Rank == 2, op, $"table {table.Describe()} must be [V, D].");
        Require(table.DType.IsFloatingPoint(), op, $"table {table.Describe()} must be floating point.");
        Require(ids.DType == DType.I32, op, $"ids {ids.Describe()} must be int32.");
        Require(ids.Backend == table.Backend, op, $"table {table.Describe()} is on {table.Backend.Name} but ids {ids.Describe()} are on {ids.Backend.Name}.");
        int vocab = table.Shape[0], dim = table.Shape[1];
        var be = table.Backend;
        var y = NewLike(table, [.. ids.Shape, dim]);
        try
        {
            be.EmbeddingForward(table.Buffer, ids.Buffer, y.Buffer, ids.Count, vocab, dim);
        }
        catch
        {
            y.Dispose();
            throw;
        }
        return Record(op, y, [table, ids], dy =>
        {
            if (GradOf(table) is { } gt) be.EmbeddingBackward(ids.Buffer, dy.Buffer, gt.Buffer, ids.Count, vocab, dim);
        });
    }

    /// <summary>
    /// DiT/SiT's frequency embedding of timesteps (TimestepEmbedder.timestep_embedding): for t of any shape (usually
    /// [N]) gives [..t.Shape, dim] with half = dim / 2, freqs_k = exp(-ln(maxPeriod) k / half) for k in [0, half),
    /// args = t * freqs and output [cos(args) | sin(args)] (cos first), plus a zero column when dim is odd. t is used
    /// raw: REPA's SiT passes t in [0, 1] (no * 1000); DiT passes 0..999. Differentiable with respect to t.
    /// </summary>
    public static Tensor TimestepEmbedding(Tensor t, int dim = 256, double maxPeriod = 10000)
    {
        const string op = "timestep_embedding";
        Require(t.DType.IsFloatingPoint(), op, $"t {t.Describe()} must be floating point.");
        Require(dim >= 1, op, $"dim must be >= 1, got {dim}.");
        Require(maxPeriod > 0 && double.IsFinite(maxPeriod), op, $"maxPeriod must be positive and finite, got {maxPeriod}.");
        var be = t.Backend;
        var y = NewLike(t, [.. t.Shape, dim]);
        be.TimestepEmbeddingForward(t.Buffer, y.Buffer, t.Count, dim, maxPeriod);
        return Record(op, y, [t], dy =>
        {
            if (GradOf(t) is { } gt) be.TimestepEmbeddingBackward(t.Buffer, dy.Buffer, gt.Buffer, t.Count, dim, maxPeriod);
        });
    }
}
