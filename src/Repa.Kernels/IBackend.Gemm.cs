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
}
