namespace Repa.Autograd;

/// <summary>Reshape (a view), permute, split/chunk and concat, and sums/means over axes.</summary>
public static partial class Ops
{
    /// <summary>Same elements, new shape (one axis may be -1). Shares memory with <paramref name="x"/>.</summary>
    public static Tensor Reshape(Tensor x, params int[] shape)
    {
        var resolved = (int[])shape.Clone();
        int infer = Array.IndexOf(resolved, -1);
        if (infer >= 0)
        {
            long rest = 1;
            for (int i = 0; i < resolved.Length; i++) if (i != infer) rest *= resolved[i];
            Require(rest > 0 && x.Count % rest == 0, "reshape", $"cannot infer -1 in {Shapes.Format(shape)} for {x.Describe()}.");
            resolved[infer] = (int)(x.Count / rest);
        }
        Require(Shapes.Count(resolved) == x.Count, "reshape", $"{x.Describe()} ({x.Count} elements) cannot be viewed as {Shapes.Format(shape)}.");
        var y = x.View(resolved);
        return Record("reshape", y, [x], dy =>
        {
            if (GradOf(x) is { } gx) Accumulate(dy, gx);
        });
    }

    /// <summary>Axis j of the result is axis perm[j] of <paramref name="x"/> (torch.permute); copies.</summary>
    public static Tensor Permute(Tensor x, params int[] perm)
    {
        Require(perm.Length == x.Rank, "permute", $"{x.Describe()} has {x.Rank} axes but the permutation has {perm.Length}.");
        var shape = new int[x.Rank];
        var inverse = new int[x.Rank];
        for (int j = 0; j < perm.Length; j++)
        {
            int p = Shapes.Axis("permute", perm[j], x.Rank);
            shape[j] = x.Shape[p];
            inverse[p] = j;
        }
        var y = NewLike(x, shape);
        x.Backend.Permute(x.Buffer, y.Buffer, x.Shape, perm, 0);
        return Record("permute", y, [x], dy =>
        {
            if (GradOf(x) is { } gx) x.Backend.Permute(dy.Buffer, gx.Buffer, shape, inverse, 1);
        });
    }

    /// <summary>torch.transpose of two axes.</summary>
    public static Tensor Transpose(Tensor x, int axis0, int axis1)
    {
        var perm = Enumerable.Range(0, x.Rank).ToArray();
        int a = Shapes.Axis("transpose", axis0, x.Rank), b = Shapes.Axis("transpose", axis1, x.Rank);
        (perm[a], perm[b]) = (perm[b], perm[a]);
        return Permute(x, perm);
    }

    /// <summary>Splits along <paramref name="axis"/> into pieces of the given sizes (torch.split with a list).</summary>
    public static Tensor[] Split(Tensor x, int[] sizes, int axis)
    {
        int ax = Shapes.Axis("split", axis, x.Rank);
        Require(sizes.Sum() == x.Shape[ax] && sizes.All(s => s >= 0), "split",
            $"sizes {Shapes.Format(sizes)} do not add up to axis {ax} of {x.Describe()}.");
        var (outer, inner) = AroundAxis(x.Shape, ax);
        long width = (long)x.Shape[ax] * inner;
        var pieces = new Tensor[sizes.Length];
        long offset = 0;
        for (int i = 0; i < sizes.Length; i++)
        {
            var shape = (int[])x.Shape.Clone();
            shape[ax] = sizes[i];
            var piece = NewLike(x, shape);
            long pieceWidth = sizes[i] * inner, start = offset;
            x.Backend.CopyRows(x.Buffer, start, width, piece.Buffer, 0, pieceWidth, outer, (int)pieceWidth, 0);
            pieces[i] = Record("split", piece, [x], dy =>
            {
                if (GradOf(x) is { } gx) x.Backend.CopyRows(dy.Buffer, 0, pieceWidth, gx.Buffer, start, width, outer, (int)pieceWidth, 1);
            });
            offset += pieceWidth;
        }
        return pieces;
    }

    /// <summary>torch.chunk into <paramref name="chunks"/> equal pieces along <paramref name="axis"/>.</summary>
    public static Tensor[] Chunk(Tensor x, int chunks, int axis)
    {
        int ax = Shapes.Axis("chunk", axis, x.Rank);
        Require(chunks > 0 && x.Shape[ax] % chunks == 0, "chunk", $"axis {ax} of {x.Describe()} does not split into {chunks} equal chunks.");
        return Split(x, Enumerable.Repeat(x.Shape[ax] / chunks, chunks).ToArray(), ax);
    }

    /// <summary>torch.cat along <paramref name="axis"/>.</summary>
    public static Tensor Concat(Tensor[] xs, int axis)
    {
        Require(xs.Length > 0, "concat", "needs at least one tensor.");
        SameBackend("concat", xs);
        var first = xs[0];
        int ax = Shapes.Axis("concat", axis, first.Rank);
        var shape = (int[])first.Shape.Clone();
        shape[ax] = 0;
        foreach (var t in xs)
        {
            bool fits = t.Rank == first.Rank;
            for (int d = 0; fits && d < t.Rank; d++) fits = d == ax || t.Shape[d] == first.Shape[d];
            Require(fits, "concat", $"{t.Describe()} does not match {first.Describe()} outside axis {ax}.");
            shape[ax] += t.Shape[ax];
        }
        var y = NewLike(first, shape);
        var (outer, inner) = AroundAxis(shape, ax);
        long width = (long)shape[ax] * inner, offset = 0;
        var offsets = new long[xs.Length];
        for (int i = 0; i < xs.Length; i++)
        {
            long w = xs[i].Shape[ax] * inner;
            offsets[i] = offset;
            first.Backend.CopyRows(xs[i].Buffer, 0, w, y.Buffer, offset, width, outer, (int)w, 0);
            offset += w;
        }
        return Record("concat", y, xs, dy =>
        {
            for (int i = 0; i < xs.Length; i++)
            {
                if (GradOf(xs[i]) is not { } g) continue;
                long w = xs[i].Shape[ax] * inner;
                first.Backend.CopyRows(dy.Buffer, offsets[i], width, g.Buffer, 0, w, outer, (int)w, 1);
            }
        });
    }

    private static (int outer, long inner) AroundAxis(int[] shape, int axis)
    {
        long outer = 1, inner = 1;
        for (int d = 0; d < axis; d++) outer *= shape[d];
        for (int d = axis + 1; d < shape.Length; d++) inner *= shape[d];
        return ((int)outer, inner);
    }

    /// <summary>Sum over <paramref name="axes"/> (all axes when empty); keepDim keeps them as size 1 (torch.sum).</summary>
    public static Tensor Sum(Tensor x, int[]? axes = null, bool keepDim = false) => Reduce("sum", x, axes, keepDim, mean: false);

    /// <summary>Mean over <paramref name="axes"/> (all axes when empty); keepDim keeps them as size 1 (torch.mean).</summary>
    public static Tensor Mean(Tensor x, int[]? axes = null, bool keepDim = false) => Reduce("mean", x, axes, keepDim, mean: true);

    private static Tensor Reduce(string op, Tensor x, int[]? axes, bool keepDim, bool mean)
    {
        var reduced = new bool[x.Rank];
        if (axes == null || axes.Length == 0) Array.Fill(reduced, true);
        else foreach (int a in axes) reduced[Shapes.Axis(op, a, x.Rank)] = true;
        var kept = new int[x.Rank];
        long n = 1;
        for (int d = 0; d < x.Rank; d++)
        {
            kept[d] = reduced[d] ? 1 : x.Shape[d];
            if (reduced[d]) n *= x.Shape[d];
        }
        double alpha = mean ? 1.0 / Math.Max(n, 1) : 1.0;
        var keptTensor = Tensor.Zeros(x.Backend, x.DType, kept);
        ReduceInto(x, keptTensor, alpha);
        var shape = keepDim ? kept : kept.Where((_, d) => !reduced[d]).ToArray();
        var y = keepDim ? keptTensor : keptTensor.View(shape);
        return Record(op, y, [x], dy =>
        {
            // Broadcast the gradient back over the reduced axes.
            if (GradOf(x) is not { } gx) return;
            using var scaled = Tensor.Empty(x.Backend, x.DType, x.Shape);
            x.Backend.Fill(scaled.Buffer, 0, scaled.Count, alpha);
            x.Backend.Binary(Kernels.BinaryOp.Mul, scaled.Buffer, Shapes.Strides(x.Shape), dy.Buffer,
                Shapes.BroadcastStrides(kept, x.Shape), scaled.Buffer, x.Shape);
            Accumulate(scaled, gx);
        });
    }
}
