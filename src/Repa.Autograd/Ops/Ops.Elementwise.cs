using Repa.Kernels;

namespace Repa.Autograd;

/// <summary>Broadcasting add/sub/mul, scaling, GELU (tanh) and SiLU.</summary>
public static partial class Ops
{
    public static Tensor Add(Tensor a, Tensor b) => Binary("add", BinaryOp.Add, a, b);
    public static Tensor Sub(Tensor a, Tensor b) => Binary("sub", BinaryOp.Sub, a, b);
    public static Tensor Mul(Tensor a, Tensor b) => Binary("mul", BinaryOp.Mul, a, b);

    private static Tensor Binary(string op, BinaryOp kind, Tensor a, Tensor b)
    {
        SameBackend(op, a, b);
        var shape = Shapes.Broadcast(op, a.Shape, b.Shape);
        var sa = Shapes.BroadcastStrides(a.Shape, shape);
        var sb = Shapes.BroadcastStrides(b.Shape, shape);
        var y = NewLike(a, shape);
        var backend = a.Backend;
        backend.Binary(kind, a.Buffer, sa, b.Buffer, sb, y.Buffer, shape);
        return Record(op, y, [a, b], dy =>
        {
            // d(a op b)/da: 1 for add/sub, b for mul; /db: 1, -1, a. Broadcast axes are summed back.
            if (GradOf(a) is { } ga)
            {
                if (kind == BinaryOp.Mul) { using var t = MulBroadcast(dy, b, shape, sb); ReduceInto(t, ga, 1); }
                else ReduceInto(dy, ga, 1);
            }
            if (GradOf(b) is { } gb)
            {
                if (kind == BinaryOp.Mul) { using var t = MulBroadcast(dy, a, shape, sa); ReduceInto(t, gb, 1); }
                else ReduceInto(dy, gb, kind == BinaryOp.Sub ? -1 : 1);
            }
        });
    }

    private static Tensor MulBroadcast(Tensor dy, Tensor other, int[] shape, long[] otherStrides)
    {
        var t = NewLike(dy, shape);
        dy.Backend.Binary(BinaryOp.Mul, dy.Buffer, Shapes.Strides(shape), other.Buffer, otherStrides, t.Buffer, shape);
        return t;
    }

    /// <summary>
    /// target += alpha * (source summed over the axes that broadcasting expanded). Adjacent axes are merged so that
    /// the common cases (bias [D] from [N, D]; per-sample [N, 1, D] from [N, T, D]) are one backend sum.
    /// </summary>
    internal static void ReduceInto(Tensor source, Tensor target, double alpha)
    {
        var backend = source.Backend;
        if (source.Count == target.Count)
        {
            backend.Axpby(source.Buffer, target.Buffer, target.Count, alpha, 1);
            return;
        }
        // Align target's shape to source's rank, then group axes into runs of (kept | reduced).
        int rank = source.Rank, lead = rank - target.Rank;
        var groups = new List<(long size, bool reduced)>();
        for (int i = 0; i < rank; i++)
        {
            int ts = i < lead ? 1 : target.Shape[i - lead];
            int ss = source.Shape[i];
            if (ss == 1) continue;
            bool reduced = ts == 1;
            if (groups.Count > 0 && groups[^1].reduced == reduced) groups[^1] = (groups[^1].size * ss, reduced);
            else groups.Add((ss, reduced));
        }
        // Reduce one group at a time, innermost first; the last reduction accumulates into the target.
        Tensor current = source;
        long total = source.Count;
        int reducedGroups = groups.Count(g => g.reduced);
        for (int gi = groups.Count - 1, done = 0; gi >= 0; gi--)
        {
            if (!groups[gi].reduced) continue;
            long inner = 1, outer = 1;
            for (int j = gi + 1; j < groups.Count; j++) inner *= groups[j].size;
            for (int j = 0; j < gi; j++) outer *= groups[j].size;
            int reduce = (int)groups[gi].size;
            bool last = ++done == reducedGroups;
            var next = last ? target : Tensor.Empty(backend, source.DType, (int)(total / reduce));
            backend.Sum(current.Buffer, next.Buffer, (int)outer, reduce, (int)inner, last ? alpha : 1, last ? 1 : 0);
            groups[gi] = (1, false);
            total /= reduce;
            if (current != source) current.Dispose();
            current = next;
        }
    }

    /// <summary>
    /// x converted to <paramref name="dtype"/> (torch's x.to(dtype)), differentiable: the gradient is converted back and
    /// accumulated in x's dtype. Mixed precision rests on it: float32 master weights are cast to bfloat16 for the GEMMs
    /// and their gradients land in float32. Returns x itself when it already has the dtype.
    /// </summary>
    public static Tensor Cast(Tensor x, DType dtype)
    {
        if (x.DType == dtype) return x;
        var be = x.Backend;
        Require(be.Supports(dtype), "cast", $"{be.Name} does not compute in {dtype.Name()}, so {x.Describe()} cannot be cast to it.");
        var y = Tensor.Empty(be, dtype, x.Shape);
        be.Convert(x.Buffer, y.Buffer, x.Count);
        return Record("cast", y, [x], dy =>
        {
            if (GradOf(x) is not { } gx) return;
            using var converted = Tensor.Empty(be, x.DType, x.Shape);
            be.Convert(dy.Buffer, converted.Buffer, x.Count);
            Accumulate(converted, gx);
        });
    }

    /// <summary>y = alpha * x.</summary>
    public static Tensor Scale(Tensor x, double alpha)
    {
        var y = NewLike(x, x.Shape);
        x.Backend.Axpby(x.Buffer, y.Buffer, x.Count, alpha, 0);
        return Record("scale", y, [x], dy =>
        {
            if (GradOf(x) is { } gx) x.Backend.Axpby(dy.Buffer, gx.Buffer, gx.Count, alpha, 1);
        });
    }

    public static Tensor Gelu(Tensor x) => Activate("gelu", Activation.Gelu, x);
    public static Tensor Silu(Tensor x) => Activate("silu", Activation.Silu, x);

    private static Tensor Activate(string op, Activation activation, Tensor x)
    {
        var y = NewLike(x, x.Shape);
        x.Backend.ActivationForward(activation, x.Buffer, y.Buffer, x.Count);
        return Record(op, y, [x], dy =>
        {
            if (GradOf(x) is { } gx) x.Backend.ActivationBackward(activation, x.Buffer, dy.Buffer, gx.Buffer, x.Count);
        });
    }
}
