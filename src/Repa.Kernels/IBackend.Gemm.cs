namespace Repa.Kernels;

public partial interface IBackend
{
    /// <summary>
    /// Batched, strided, row-major GEMM: for i in [0, batch): C_i = alpha * op(A_i) op(B_i) + beta * C_i with
    /// op(A_i) of shape [m, k] (stored [k, m] when <paramref name="transA"/>), X_i = x + offX + i * strideX
    /// (a stride of 0 broadcasts). beta = 0 ignores C's old contents.
    /// </summary>
    void Gemm(bool transA, bool transB, int m, int n, int k, double alpha,
        DeviceBuffer a, long offsetA, int lda, long strideA,
        DeviceBuffer b, long offsetB, int ldb, long strideB,
        double beta, DeviceBuffer c, long offsetC, int ldc, long strideC, int batch = 1);

    /// <summary>
    /// A Linear layer's forward with its epilogue: pre = x W^T (+ bias) for x [rows, in], W [out, in], bias [out];
    /// without <paramref name="activation"/> y = pre; with it y = f(pre) and <paramref name="preActivation"/>
    /// [rows, out] receives pre (the backward's input). All buffers share a dtype. Backends with GEMM epilogues
    /// (cuBLASLt) fuse it; the default is the GEMM, the bias add and the activation one after another.
    /// </summary>
    void LinearForward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer? bias, DeviceBuffer y, Activation? activation,
        DeviceBuffer? preActivation, int rows, int inFeatures, int outFeatures) =>
        LinearComposition.Forward(this, x, weight, bias, y, activation, preActivation, rows, inFeatures, outFeatures);

    /// <summary>
    /// A Linear layer's parameter gradients, accumulating: dweight [out, in] += dy^T x, dbias [out] += the column sums
    /// of dy [rows, out] (either may be null). Backends with a bias-gradient GEMM epilogue fuse the sum.
    /// </summary>
    void LinearWeightBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? dweight, DeviceBuffer? dbias,
        int rows, int inFeatures, int outFeatures) =>
        LinearComposition.WeightBackward(this, dy, x, dweight, dbias, rows, inFeatures, outFeatures);
}

/// <summary>The Linear members of <see cref="IBackend"/> as compositions of its other members (the reference, and the
/// fallback of fused implementations for what their epilogues do not cover).</summary>
public static class LinearComposition
{
    public static void Forward(IBackend backend, DeviceBuffer x, DeviceBuffer weight, DeviceBuffer? bias, DeviceBuffer y,
        Activation? activation, DeviceBuffer? preActivation, int rows, int inFeatures, int outFeatures)
    {
        if (activation != null && preActivation == null)
            throw new ArgumentException($"linear: the {activation} epilogue needs a preActivation buffer for the backward.");
        var pre = activation != null ? preActivation! : y;
        backend.Gemm(false, true, rows, outFeatures, inFeatures, 1, x, 0, inFeatures, 0, weight, 0, inFeatures, 0, 0, pre, 0, outFeatures, 0);
        if (bias != null) backend.Binary(BinaryOp.Add, pre, [outFeatures, 1], bias, [0, 1], pre, [rows, outFeatures]);
        if (activation is { } f) backend.ActivationForward(f, pre, y, (long)rows * outFeatures);
    }

    public static void WeightBackward(IBackend backend, DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? dweight, DeviceBuffer? dbias,
        int rows, int inFeatures, int outFeatures)
    {
        if (dweight != null)
            backend.Gemm(true, false, outFeatures, inFeatures, rows, 1, dy, 0, outFeatures, 0, x, 0, inFeatures, 0, 1, dweight, 0, inFeatures, 0);
        if (dbias != null) backend.Sum(dy, dbias, 1, rows, outFeatures, 1, 1);
    }
}
