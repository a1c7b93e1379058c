using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Repa.Kernels.Cuda.Native;

/// <summary>
/// The cuBLAS subset the backend uses (cublas_api.h, the _v2 API), bound to the logical library "repa_cublas" (libcublas.so.N
/// or the emulator). Column-major, as cuBLAS; matrix pointers are CUdeviceptr, alpha/beta point at host memory (the
/// default pointer mode).
/// </summary>
internal static unsafe partial class Cublas
{
    private const string Lib = CudaLibraries.Cublas;

    static Cublas() => CudaLibraries.EnsureResolver();

    // cublasOperation_t.
    public const int OpN = 0;
    public const int OpT = 1;

    // cublasMath_t.
    public const int DefaultMath = 0;
    public const int PedanticMath = 2;
    public const int Tf32TensorOpMath = 3;
    public const int DisallowReducedPrecisionReduction = 16;

    // cudaDataType_t.
    public const int R32F = 0;
    public const int R64F = 1;
    public const int R16F = 2;
    public const int R16BF = 14;

    // cublasComputeType_t.
    public const int Compute32F = 68;
    public const int Compute32FPedantic = 69;
    public const int Compute32FFastTf32 = 77;

    // cublasGemmAlgo_t.
    public const int GemmDefault = -1;

    /// <summary>Throws a <see cref="CudaException"/> naming the call when <paramref name="status"/> is not success.</summary>
    public static void Check(CublasStatus status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status == CublasStatus.Success) return;
        string name = CudaDriver.CallName(call);
        throw new CudaException(name, status.Name(), $"{name} failed with {status.Name()}.");
    }

    [LibraryImport(Lib)] public static partial CublasStatus cublasCreate_v2(nint* handle);
    [LibraryImport(Lib)] public static partial CublasStatus cublasDestroy_v2(nint handle);
    [LibraryImport(Lib)] public static partial CublasStatus cublasSetStream_v2(nint handle, nint stream);
    [LibraryImport(Lib)] public static partial CublasStatus cublasSetMathMode(nint handle, int mode);

    /// <summary>A user workspace: with one set, cuBLAS allocates nothing during a call, which makes it capturable into
    /// a CUDA graph.</summary>
    [LibraryImport(Lib)] public static partial CublasStatus cublasSetWorkspace_v2(nint handle, ulong workspace, nuint bytes);

    [LibraryImport(Lib)]
    public static partial CublasStatus cublasSgemm_v2(nint handle, int transA, int transB, int m, int n, int k,
        float* alpha, ulong a, int lda, ulong b, int ldb, float* beta, ulong c, int ldc);

    [LibraryImport(Lib)]
    public static partial CublasStatus cublasSgemmStridedBatched(nint handle, int transA, int transB, int m, int n, int k,
        float* alpha, ulong a, int lda, long strideA, ulong b, int ldb, long strideB, float* beta, ulong c, int ldc,
        long strideC, int batchCount);

    /// <summary>Mixed types: e.g. bf16 A/B (<see cref="R16BF"/>), fp32 or bf16 C, <see cref="Compute32F"/>; alpha/beta
    /// are float for fp32 compute.</summary>
    [LibraryImport(Lib)]
    public static partial CublasStatus cublasGemmEx(nint handle, int transA, int transB, int m, int n, int k,
        void* alpha, ulong a, int typeA, int lda, ulong b, int typeB, int ldb, void* beta, ulong c, int typeC, int ldc,
        int computeType, int algorithm);

    [LibraryImport(Lib)]
    public static partial CublasStatus cublasGemmStridedBatchedEx(nint handle, int transA, int transB, int m, int n, int k,
        void* alpha, ulong a, int typeA, int lda, long strideA, ulong b, int typeB, int ldb, long strideB, void* beta,
        ulong c, int typeC, int ldc, long strideC, int batchCount, int computeType, int algorithm);
}
