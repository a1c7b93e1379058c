using System.Numerics;

namespace Repa.Kernels.Cpu;

/// <summary>
/// The plain triple loop GEMM (row-major, same contract as <see cref="IBackend.Gemm"/>), accumulating in double.
/// It is what the fast GEMM is tested against; nothing on a hot path calls it.
/// </summary>
public static unsafe class ReferenceGemm
{
    public static void Gemm<T>(bool transA, bool transB, int m, int n, int k, T alpha, T* a, int lda, long strideA,
        T* b, int ldb, long strideB, T beta, T* c, int ldc, long strideC, int batch)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        double al = double.CreateChecked(alpha), be = double.CreateChecked(beta);
        for (int p = 0; p < batch; p++)
        {
            T* ap = a + p * strideA, bp = b + p * strideB, cp = c + p * strideC;
            for (int i = 0; i < m; i++)
            {
                for (int j = 0; j < n; j++)
                {
                    double s = 0;
                    for (int q = 0; q < k; q++)
                    {
                        double av = double.CreateChecked(transA ? ap[(long)q * lda + i] : ap[(long)i * lda + q]);
                        double bv = double.CreateChecked(transB ? bp[(long)j * ldb + q] : bp[(long)q * ldb + j]);
                        s += av * bv;
                    }
                    T* cij = cp + (long)i * ldc + j;
                    *cij = T.CreateChecked(be == 0 ? al * s : al * s + be * double.CreateChecked(*cij));
                }
            }
        }
    }
}
