using Repa.Kernels;

namespace Repa.Autograd;

/// <summary>Linear layers (PyTorch layout, weight [out, in]) and batched matrix products, on the backend's GEMM.</summary>
public static partial class Ops
{
    /// <summary>
    /// y = x W^T + b for x [..., in], W [out, in], b [out] (torch.nn.functional.linear), optionally followed by an
    /// activation in the same op (f(linear(x)): the backend fuses it into the GEMM's epilogue where it can).
    /// </summary>
    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias = null, Activation? activation = null)
    {
        const string op = "linear";
        SameBackend(op, bias == null ? [x, weight] : [x, weight, bias]);
        Require(weight.Rank == 2, op, $"weight {weight.Describe()} must be [out, in].");
        int outF = weight.Shape[0], inF = weight.Shape[1];
        Require(x.Rank >= 1 && x.Shape[^1] == inF, op, $"input {x.Describe()} does not end in in_features {inF} of weight {weight.Describe()}.");
        if (bias != null) Require(bias.Rank == 1 && bias.Shape[0] == outF, op, $"bias {bias.Describe()} must be [{outF}] for weight {weight.Describe()}.");
        int rows = (int)(x.Count / inF);
        var shape = (int[])x.Shape.Clone();
        shape[^1] = outF;
        var y = NewLike(x, shape);
        var pre = activation != null ? NewLike(x, shape) : null; // saved for the activation's backward
        var be = x.Backend;
        be.LinearForward(x.Buffer, weight.Buffer, bias?.Buffer, y.Buffer, activation, pre?.Buffer, rows, inF, outF);
        var result = Record(op, y, bias == null ? [x, weight] : [x, weight, bias], dy =>
        {
            Tensor? dPre = null;
            if (activation is { } f)
            {
                dPre = Tensor.Zeros(be, x.DType, shape);
                be.ActivationBackward(f, pre!.Buffer, dy.Buffer, dPre.Buffer, dPre.Count);
            }
            var g = dPre ?? dy;
            if (GradOf(x) is { } gx) be.Gemm(false, false, rows, inF, outF, 1, g.Buffer, 0, outF, 0, weight.Buffer, 0, inF, 0, 1, gx.Buffer, 0, inF, 0);
            var gw = GradOf(weight);
            var gb = bias != null ? GradOf(bias) : null;
            if (gw != null || gb != null) be.LinearWeightBackward(g.Buffer, x.Buffer, gw?.Buffer, gb?.Buffer, rows, inF, outF);
            dPre?.Dispose();
        });
        if (result.Creator == null) pre?.Dispose(); // nothing will run the backward
        return result;
    }

    /// <summary>
    /// Matrix product of the last two axes, op(a) op(b), with an optional leading batch axis: [m,k]x[k,n], [B,m,k]x[k,n],
    /// [m,k]x[B,k,n] or [B,m,k]x[B,k,n]; a transposed operand is given in its stored layout.
    /// </summary>
    public static Tensor MatMul(Tensor a, Tensor b, bool transA = false, bool transB = false)
    {
        const string op = "matmul";
        SameBackend(op, a, b);
        Require(a.Rank is 2 or 3 && b.Rank is 2 or 3, op, $"operands {a.Describe()} and {b.Describe()} must have rank 2 or 3.");
        int batchA = a.Rank == 3 ? a.Shape[0] : 1, batchB = b.Rank == 3 ? b.Shape[0] : 1;
        Require(batchA == batchB || a.Rank == 2 || b.Rank == 2, op, $"batch sizes of {a.Describe()} and {b.Describe()} differ.");
        int batch = Math.Max(batchA, batchB);
        int ar = a.Shape[^2], ac = a.Shape[^1], br = b.Shape[^2], bc = b.Shape[^1];
        int m = transA ? ac : ar, k = transA ? ar : ac, kb = transB ? bc : br, n = transB ? br : bc;
        Require(k == kb, op, $"inner sizes differ: {a.Describe()}{(transA ? "^T" : "")} x {b.Describe()}{(transB ? "^T" : "")} ({k} vs {kb}).");
        long sa = a.Rank == 3 ? (long)ar * ac : 0, sb = b.Rank == 3 ? (long)br * bc : 0, sc = (long)m * n;
        var y = NewLike(a, a.Rank == 3 || b.Rank == 3 ? [batch, m, n] : [m, n]);
        var be = a.Backend;
        be.Gemm(transA, transB, m, n, k, 1, a.Buffer, 0, ac, sa, b.Buffer, 0, bc, sb, 0, y.Buffer, 0, n, sc, batch);
        return Record(op, y, [a, b], dy =>
        {
            if (GradOf(a) is { } ga)
            {
                // dA = dC op(B)^T, or (stored transposed) dA^T = op(B) dC^T.
                for (int i = 0; i < (sa == 0 ? batch : 1); i++)
                {
                    int bt = sa == 0 ? 1 : batch;
                    long offC = sa == 0 ? i * sc : 0, offB = sa == 0 ? i * sb : 0;
                    if (!transA) be.Gemm(false, !transB, m, k, n, 1, dy.Buffer, offC, n, sc, b.Buffer, offB, bc, sb, 1, ga.Buffer, 0, ac, sa, bt);
                    else be.Gemm(transB, true, k, m, n, 1, b.Buffer, offB, bc, sb, dy.Buffer, offC, n, sc, 1, ga.Buffer, 0, ac, sa, bt);
                }
            }
            if (GradOf(b) is { } gb)
            {
                // dB = op(A)^T dC, or (stored transposed) dB^T = dC^T op(A).
                for (int i = 0; i < (sb == 0 ? batch : 1); i++)
                {
                    int bt = sb == 0 ? 1 : batch;
                    long offC = sb == 0 ? i * sc : 0, offA = sb == 0 ? i * sa : 0;
                    if (!transB) be.Gemm(!transA, false, k, n, m, 1, a.Buffer, offA, ac, sa, dy.Buffer, offC, n, sc, 1, gb.Buffer, 0, bc, sb, bt);
                    else be.Gemm(true, transA, n, k, m, 1, dy.Buffer, offC, n, sc, a.Buffer, offA, ac, sa, 1, gb.Buffer, 0, bc, sb, bt);
                }
            }
        });
    }
}
