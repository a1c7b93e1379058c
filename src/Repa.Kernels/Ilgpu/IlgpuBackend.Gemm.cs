using ILGPU;

namespace Repa.Kernels.Ilgpu;

/// <summary>
/// The GEMM: one group per 4T x 4T tile of C (T x T threads, each computing a 4 x 4 block of outputs strided by T so
/// neighbouring threads write neighbouring columns), the K axis in slices staged through shared memory. Batched and
/// strided like cuBLAS's strided-batched GEMM. LinearForward runs the same kernel with an epilogue (bias add and the
/// activation, the pre-activation kept for the backward) in the single write of C; LinearWeightBackward is the
/// interface's composition (the dW GEMM, then the bias gradient as a column sum).
/// </summary>
public sealed partial class IlgpuBackend
{
    public void Gemm(bool transA, bool transB, int m, int n, int k, double alpha,
        DeviceBuffer a, long offsetA, int lda, long strideA,
        DeviceBuffer b, long offsetB, int ldb, long strideB,
        double beta, DeviceBuffer c, long offsetC, int ldc, long strideC, int batch = 1)
    {
        OpChecks.GemmTypes(a, b, c);
        if (c.DType != DType.F32) throw Unsupported(c.DType);
        OpChecks.GemmExtents("ilgpu", transA, transB, m, n, k, alpha, a, offsetA, lda, strideA, b, offsetB, ldb, strideB,
            c, offsetC, ldc, strideC, batch);
        if (m == 0 || n == 0 || batch == 0) return;
        LaunchGemm(transA, transB, m, n, k, alpha, a, offsetA, lda, strideA, b, offsetB, ldb, strideB, beta, c, offsetC, ldc, strideC,
            batch, null, null, IlgpuKernels.NoEpilogue);
    }

    /// <summary>y = f(x W^T + bias) in one GEMM launch: the epilogue adds the bias, stores the pre-activation and applies f.</summary>
    public void LinearForward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer? bias, DeviceBuffer y, Activation? activation,
        DeviceBuffer? preActivation, int rows, int inFeatures, int outFeatures)
    {
        if (activation != null && preActivation == null)
            throw new ArgumentException($"linear: the {activation} epilogue needs a preActivation buffer for the backward.");
        OpChecks.GemmTypes(x, weight, y);
        if (y.DType != DType.F32) throw Unsupported(y.DType);
        OpChecks.GemmExtents("ilgpu", false, true, rows, outFeatures, inFeatures, 1, x, 0, inFeatures, 0, weight, 0, inFeatures, 0,
            y, 0, outFeatures, 0, 1);
        if (bias != null && bias.Length < outFeatures) throw new ArgumentException($"linear: bias {bias} holds fewer than {outFeatures} elements.");
        if (preActivation != null && activation != null && preActivation.Length < (long)rows * outFeatures)
            throw new ArgumentException($"linear: preActivation {preActivation} holds fewer than {rows} x {outFeatures} elements.");
        if (rows == 0 || outFeatures == 0) return;
        LaunchGemm(false, true, rows, outFeatures, inFeatures, 1, x, 0, inFeatures, 0, weight, 0, inFeatures, 0, 0, y, 0, outFeatures, 0,
            1, bias, activation != null ? preActivation : null, activation is { } f ? (int)f : IlgpuKernels.NoEpilogue);
    }

    private void LaunchGemm(bool transA, bool transB, int m, int n, int k, double alpha,
        DeviceBuffer a, long offsetA, int lda, long strideA, DeviceBuffer b, long offsetB, int ldb, long strideB,
        double beta, DeviceBuffer c, long offsetC, int ldc, long strideC, int batch, DeviceBuffer? bias, DeviceBuffer? pre, int activation)
    {
        int t = GemmThreads, tile = 4 * t;
        int tilesM = (m + tile - 1) / tile, tilesN = (n + tile - 1) / tile;
        var args = new GemmArgs(m, n, k, transA ? 1 : 0, transB ? 1 : 0, (float)alpha, (float)beta,
            offsetA, lda, strideA, offsetB, ldb, strideB, offsetC, ldc, strideC, batch, t, IlgpuKernels.GemmSharedTile / tile, tilesN,
            (long)tilesM * tilesN, activation);
        long tiles = args.TilesPerItem * batch;
        Run(new KernelConfig((int)Math.Min(tiles, MaxGroups * 64L), t * t), IlgpuKernels.Gemm, F(a), F(b), F(c),
            new GemmEpilogue(FOrEmpty(bias), FOrEmpty(pre)), args);
    }
}

internal readonly record struct GemmArgs(int M, int N, int K, int TransA, int TransB, float Alpha, float Beta,
    long OffsetA, int Lda, long StrideA, long OffsetB, int Ldb, long StrideB, long OffsetC, int Ldc, long StrideC, int Batch,
    int Threads, int SliceK, int TilesN, long TilesPerItem, int Activation);

/// <summary>The Linear epilogue's buffers: bias [n] (empty: none) and the pre-activation output (empty: none).</summary>
internal readonly record struct GemmEpilogue(ArrayView<float> Bias, ArrayView<float> Pre);

internal static partial class IlgpuKernels
{
    /// <summary>Floats of each shared-memory operand tile (SliceK x 4T): 16 x 64 on a GPU (4 KiB each).</summary>
    public const int GemmSharedTile = 1024;

    /// <summary>GemmArgs.Activation when the GEMM has no activation epilogue.</summary>
    public const int NoEpilogue = -1;

    public static void Gemm(ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, GemmEpilogue epilogue, GemmArgs p)
    {
        var tileA = SharedMemory.Allocate<float>(GemmSharedTile); // [SliceK][4T]: op(A) transposed, rows of the tile contiguous
        var tileB = SharedMemory.Allocate<float>(GemmSharedTile); // [SliceK][4T]
        var acc = LocalMemory.Allocate<float>(16);
        int threads = p.Threads, size = 4 * threads, count = threads * threads;
        int tid = Group.IdxX, tx = tid % threads, ty = tid / threads;
        bool reads = p.K > 0 && p.Alpha != 0f;
        for (long item = Grid.IdxX; item < p.TilesPerItem * p.Batch; item += Grid.DimX)
        {
            long batchIndex = item / p.TilesPerItem;
            long t = item % p.TilesPerItem;
            int row0 = (int)(t / p.TilesN) * size, col0 = (int)(t % p.TilesN) * size;
            long baseA = p.OffsetA + batchIndex * p.StrideA, baseB = p.OffsetB + batchIndex * p.StrideB;
            for (int e = 0; e < 16; e++) acc[e] = 0f;
            for (int k0 = 0; reads && k0 < p.K; k0 += p.SliceK)
            {
                int slice = Math.Min(p.SliceK, p.K - k0), elements = p.SliceK * size;
                // Staging: consecutive threads read consecutive addresses of the operand as it is stored.
                for (int e = tid; e < elements; e += count)
                {
                    int kk, mm;
                    if (p.TransA != 0) { kk = e / size; mm = e % size; } // A stored [k, m]: m is contiguous
                    else { mm = e / p.SliceK; kk = e % p.SliceK; }       // A stored [m, k]: k is contiguous
                    int row = row0 + mm, kAt = k0 + kk;
                    tileA[kk * size + mm] = kk < slice && row < p.M
                        ? a[baseA + (p.TransA != 0 ? (long)kAt * p.Lda + row : (long)row * p.Lda + kAt)] : 0f;
                    int nn;
                    if (p.TransB != 0) { nn = e / p.SliceK; kk = e % p.SliceK; } // B stored [n, k]
                    else { kk = e / size; nn = e % size; }                       // B stored [k, n]
                    int col = col0 + nn;
                    kAt = k0 + kk;
                    tileB[kk * size + nn] = kk < slice && col < p.N
                        ? b[baseB + (p.TransB != 0 ? (long)col * p.Ldb + kAt : (long)kAt * p.Ldb + col)] : 0f;
                }
                Group.Barrier();
                for (int kk = 0; kk < slice; kk++)
                {
                    int rowA = kk * size + ty, rowB = kk * size + tx;
                    float a0 = tileA[rowA], a1 = tileA[rowA + threads], a2 = tileA[rowA + 2 * threads], a3 = tileA[rowA + 3 * threads];
                    float b0 = tileB[rowB], b1 = tileB[rowB + threads], b2 = tileB[rowB + 2 * threads], b3 = tileB[rowB + 3 * threads];
                    acc[0] += a0 * b0; acc[1] += a0 * b1; acc[2] += a0 * b2; acc[3] += a0 * b3;
                    acc[4] += a1 * b0; acc[5] += a1 * b1; acc[6] += a1 * b2; acc[7] += a1 * b3;
                    acc[8] += a2 * b0; acc[9] += a2 * b1; acc[10] += a2 * b2; acc[11] += a2 * b3;
                    acc[12] += a3 * b0; acc[13] += a3 * b1; acc[14] += a3 * b2; acc[15] += a3 * b3;
                }
                Group.Barrier();
            }
            long baseC = p.OffsetC + batchIndex * p.StrideC;
            for (int i = 0; i < 4; i++)
            {
                int row = row0 + ty + i * threads;
                if (row >= p.M) continue;
                for (int j = 0; j < 4; j++)
                {
                    int col = col0 + tx + j * threads;
                    if (col >= p.N) continue;
                    long at = baseC + (long)row * p.Ldc + col;
                    float v = p.Alpha * acc[i * 4 + j];
                    v = p.Beta == 0f ? v : v + p.Beta * c[at];
                    // The Linear epilogue, in the composition's order: + bias, keep the pre-activation, f.
                    if (epilogue.Bias.Length > 0) v += epilogue.Bias[col];
                    if (p.Activation != NoEpilogue)
                    {
                        epilogue.Pre[at] = v;
                        v = Activate(p.Activation, v);
                    }
                    c[at] = v;
                }
            }
        }
    }
}
