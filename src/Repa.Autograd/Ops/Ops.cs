using Repa.Kernels;

namespace Repa.Autograd;

/// <summary>
/// The op catalogue. Each op family lives in its own file (Ops.Elementwise.cs, Ops.Linear.cs, ...): a forward that
/// calls the backend and, when recording, a backward closure that accumulates input gradients through the backend.
/// </summary>
public static partial class Ops
{
    /// <summary>Creates an output tensor on the inputs' backend and dtype.</summary>
    internal static Tensor NewLike(Tensor like, params int[] shape) => Tensor.Empty(like.Backend, like.DType, shape);

    /// <summary>
    /// The dtype that statistics and sums of <paramref name="activation"/> values are kept in (mixed precision):
    /// float32 for bfloat16/float16 activations (LayerNorm mean/rstd and affine, softmax log-sum-exp), else the
    /// activation's own dtype.
    /// </summary>
    public static DType AccumulationType(DType activation) => activation is DType.BF16 or DType.F16 ? DType.F32 : activation;

    /// <summary>Creates a statistics tensor for <paramref name="activation"/> in its <see cref="AccumulationType"/>.</summary>
    internal static Tensor NewStatistics(Tensor activation, params int[] shape) =>
        Tensor.Empty(activation.Backend, AccumulationType(activation.DType), shape);

    /// <summary>
    /// Records <paramref name="output"/> as produced by <paramref name="op"/> from <paramref name="inputs"/> when a tape
    /// is recording and any input requires grad. The backward closure receives the output's gradient.
    /// </summary>
    internal static Tensor Record(string op, Tensor output, Tensor[] inputs, Action<Tensor> backward)
    {
        if (!Tape.IsRecording) return output;
        bool any = false;
        foreach (var t in inputs) any |= t.RequiresGrad;
        if (!any) return output;
        output.RequiresGrad = true;
        var node = new Tape.Node(op, output, inputs, backward);
        output.Creator = node;
        Tape.Current!.Record(node);
        return output;
    }

    /// <summary>The gradient buffer of <paramref name="t"/> when it needs one, else null (skip that input's backward).</summary>
    internal static Tensor? GradOf(Tensor t) => t.RequiresGrad ? t.GradBuffer() : null;

    internal static void SameBackend(string op, params Tensor[] tensors)
    {
        for (int i = 1; i < tensors.Length; i++)
        {
            if (tensors[i].Backend != tensors[0].Backend)
                throw new ShapeMismatchException($"{op}: {tensors[0].Describe()} is on {tensors[0].Backend.Name} but {tensors[i].Describe()} is on {tensors[i].Backend.Name}.");
            if (tensors[i].DType != tensors[0].DType)
                throw new ShapeMismatchException($"{op}: dtypes differ: {tensors[0].Describe()} and {tensors[i].Describe()}.");
        }
    }

    internal static void Require(bool condition, string op, string message)
    {
        if (!condition) throw new ShapeMismatchException($"{op}: {message}");
    }

    internal static void RequireShape(string op, Tensor t, params int[] shape)
    {
        if (!t.Shape.AsSpan().SequenceEqual(shape))
            throw new ShapeMismatchException($"{op}: {t.Name ?? "input"} has shape {t.ShapeString}, expected {Shapes.Format(shape)}.");
    }

    /// <summary>dst += src (same element count).</summary>
    internal static void Accumulate(Tensor src, Tensor dst) => dst.Backend.Axpby(src.Buffer, dst.Buffer, dst.Count, 1, 1);
}
