namespace Repa.Kernels.Cpu;

public sealed unsafe partial class CpuBackend
{
    public void Gemm(bool transA, bool transB, int m, int n, int k, double alpha,
        DeviceBuffer a, long offsetA, int lda, long strideA,
        DeviceBuffer b, long offsetB, int ldb, long strideB,
        double beta, DeviceBuffer c, long offsetC, int ldc, long strideC, int batch = 1)
    {
        OpChecks.GemmTypes(a, b, c);
        switch (c.DType)
        {
            case DType.F32:
                CpuGemm.Gemm(transA, transB, m, n, k, (float)alpha, Host(a).Ptr<float>() + offsetA, lda, strideA,
                    Host(b).Ptr<float>() + offsetB, ldb, strideB, (float)beta, Host(c).Ptr<float>() + offsetC, ldc, strideC, batch, Threads);
                break;
            case DType.F64:
                CpuGemm.Gemm(transA, transB, m, n, k, alpha, Host(a).Ptr<double>() + offsetA, lda, strideA,
                    Host(b).Ptr<double>() + offsetB, ldb, strideB, beta, Host(c).Ptr<double>() + offsetC, ldc, strideC, batch, Threads);
                break;
            default: throw Unsupported(c.DType);
        }
    }
}
