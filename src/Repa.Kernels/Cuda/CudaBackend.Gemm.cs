using Repa.Kernels.Cuda.Native;

namespace Repa.Kernels.Cuda;

/// <summary>The row-major batched GEMM of IBackend on cuBLAS's column-major cublasGemmStridedBatchedEx.</summary>
public sealed unsafe partial class CudaBackend
{
    /// <summary>
    /// As <see cref="IBackend.Gemm"/>: float32 operands, or bfloat16 A and B with a bfloat16 or float32 C; products
    /// accumulate in float32 (CUBLAS_COMPUTE_32F: no TF32). A row-major matrix is the column-major view of its
    /// transpose, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: cuBLAS gets B first, then A, with m and n
    /// swapped and the same leading dimensions. A stride of 0 broadcasts A or B over the batch; a C stride of 0 with
    /// more than one batch item is rejected (every product would race for the same C).
    /// </summary>
    public void Gemm(bool transA, bool transB, int m, int n, int k, double alpha,
        DeviceBuffer a, long offsetA, int lda, long strideA,
        DeviceBuffer b, long offsetB, int ldb, long strideB,
        double beta, DeviceBuffer c, long offsetC, int ldc, long strideC, int batch = 1)
    {
        if (a.DType != b.DType || !(c.DType == a.DType || (a.DType == DType.BF16 && c.DType == DType.F32)))
            throw new ArgumentException($"gemm: operand dtypes ({a.DType.Name()}, {b.DType.Name()}, {c.DType.Name()}) are not one of float32 x float32 -> float32, bfloat16 x bfloat16 -> bfloat16 or float32.");
        if (a.DType is not (DType.F32 or DType.BF16))
            throw new NotSupportedException($"cuda: gemm computes in float32 or bfloat16, not {a.DType.Name()}.");
        if (m < 0 || n < 0 || k < 0 || batch < 0) throw new ArgumentOutOfRangeException(nameof(m), "m, n, k and batch must be non-negative.");
        if (m == 0 || n == 0 || batch == 0) return;
        if (ldc < n) throw new ArgumentOutOfRangeException(nameof(ldc), "ldc must be >= n.");
        int rowsA = transA ? k : m, columnsA = transA ? m : k, rowsB = transB ? n : k, columnsB = transB ? k : n;
        bool readsInputs = k > 0 && alpha != 0;
        if (k > 0)
        {
            if (lda < columnsA) throw new ArgumentOutOfRangeException(nameof(lda), "lda is smaller than the stored row width of A.");
            if (ldb < columnsB) throw new ArgumentOutOfRangeException(nameof(ldb), "ldb is smaller than the stored row width of B.");
        }
        if (strideC == 0 && batch > 1)
            throw new ArgumentException($"gemm: a C stride of 0 with batch {batch} would write every product into the same C; give each batch item its own C.");
        CheckMatrix("C", c, offsetC, strideC, batch, m, n, ldc);
        if (readsInputs)
        {
            CheckMatrix("A", a, offsetA, strideA, batch, rowsA, columnsA, lda);
            CheckMatrix("B", b, offsetB, strideB, batch, rowsB, columnsB, ldb);
        }
        else
        {
            // cuBLAS validates the leading dimensions even when it reads neither operand (k == 0).
            lda = Math.Max(lda, Math.Max(1, columnsA));
            ldb = Math.Max(ldb, Math.Max(1, columnsB));
        }
        Enter();
        float alpha32 = (float)alpha, beta32 = (float)beta;
        int inputType = a.DType == DType.BF16 ? Cublas.R16BF : Cublas.R32F;
        int outputType = c.DType == DType.BF16 ? Cublas.R16BF : Cublas.R32F;
        var status = Cublas.cublasGemmStridedBatchedEx(cublas,
            transB ? Cublas.OpT : Cublas.OpN, transA ? Cublas.OpT : Cublas.OpN, n, m, k, &alpha32,
            Address(b, offsetB), inputType, ldb, strideB,
            Address(a, offsetA), inputType, lda, strideA, &beta32,
            Address(c, offsetC), outputType, ldc, strideC, batch, Cublas.Compute32F, Cublas.GemmDefault);
        if (status != CublasStatus.Success)
        {
            string detail = IsEmulated && EmulatorError() is { Length: > 0 } why ? $": {why.TrimEnd('.')}" : "";
            throw new CudaException("cublasGemmStridedBatchedEx", status.Name(), $"cublasGemmStridedBatchedEx failed with {status.Name()}{detail}.");
        }
    }

    /// <summary>Throws unless every element of the <paramref name="batch"/> matrices [rows, columns] (leading dimension
    /// <paramref name="ld"/>, batch stride <paramref name="stride"/>) lies inside the buffer.</summary>
    private static void CheckMatrix(string name, DeviceBuffer buffer, long offset, long stride, int batch, int rows, int columns, int ld)
    {
        long span = (long)(batch - 1) * stride;
        long first = offset + Math.Min(0, span);
        long last = offset + Math.Max(0, span) + (long)(rows - 1) * ld + columns - 1;
        if (first < 0 || last >= buffer.Length)
            throw new ArgumentOutOfRangeException(name, $"gemm: {name} (offset {offset}, {batch} x [{rows}, {columns}], leading dimension {ld}, stride {stride}) reaches elements [{first}, {last}] outside {buffer}.");
    }
}
