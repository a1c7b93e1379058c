using System.Diagnostics.CodeAnalysis;
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

/// <summary>
/// The Linear members on cuBLASLt: the bias add and GELU fused into the forward GEMM's epilogue (GELU's input written as
/// the aux matrix for the backward), and the bias gradient fused into the weight-gradient GEMM (BGRADB). What the
/// epilogues do not cover (SiLU, an aux leading dimension that is not a multiple of 8, no cuBLASLt library, no
/// algorithm from the heuristic) runs as <see cref="LinearComposition"/>. Plans (descriptor, layouts, algorithm) are
/// cached per shape; the pointers are set per call.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    private readonly record struct LtKey(int M, int N, int K, bool TransA, bool TransB, int Epilogue, DType Input, DType Output);

    private sealed class LtPlan
    {
        public nint Desc, A, B, C;
        public CublasLt.MatmulAlgo Algo;
        public bool Usable;
    }

    private readonly Dictionary<LtKey, LtPlan> ltPlans = [];
    private nint ltHandle;
    private bool ltUnavailable;

    /// <summary>Whether the last Linear call ran on a cuBLASLt epilogue (tests check the fused path is taken).</summary>
    internal bool LastLinearWasFused { get; private set; }

    public void LinearForward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer? bias, DeviceBuffer y, Activation? activation,
        DeviceBuffer? preActivation, int rows, int inFeatures, int outFeatures)
    {
        LastLinearWasFused = false;
        if (LinearForwardFuses(x, weight, bias, y, activation, preActivation, rows, inFeatures, outFeatures))
        {
            int epilogue = (activation, bias) switch
            {
                (null, null) => CublasLt.EpilogueDefault,
                (null, _) => CublasLt.EpilogueBias,
                (_, null) => CublasLt.EpilogueGeluAux,
                _ => CublasLt.EpilogueGeluAuxBias,
            };
            // Row-major y[rows, out] = x W^T is column-major D[out, rows] = op(A) B with A = W viewed [in, out] (op T)
            // and B = x viewed [in, rows]; the bias runs along D's rows (output features).
            OpChecks.Range(x, 0, (long)rows * inFeatures);
            OpChecks.Range(weight, 0, (long)outFeatures * inFeatures);
            OpChecks.Range(y, 0, (long)rows * outFeatures);
            if (bias != null) OpChecks.Range(bias, 0, outFeatures);
            if (preActivation != null) OpChecks.Range(preActivation, 0, (long)rows * outFeatures);
            if (TryLtMatmul(new LtKey(outFeatures, rows, inFeatures, true, false, epilogue, x.DType, y.DType),
                    weight, inFeatures, x, inFeatures, y, beta: 0, bias, activation != null ? preActivation : null))
            {
                LastLinearWasFused = true;
                return;
            }
        }
        LinearComposition.Forward(this, x, weight, bias, y, activation, preActivation, rows, inFeatures, outFeatures);
    }

    public void LinearWeightBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? dweight, DeviceBuffer? dbias,
        int rows, int inFeatures, int outFeatures)
    {
        LastLinearWasFused = false;
        if (LinearWeightBackwardFuses(dy, x, dweight, dbias, rows, inFeatures, outFeatures))
        {
            // Row-major dW[out, in] += dy^T x is column-major D[in, out] = A op(B) with A = x viewed [in, rows] and
            // B = dy viewed [out, rows] (op T); BGRADB sums op(B)'s columns over k = rows: the bias gradient, which
            // cuBLASLt writes (not accumulates), so it lands in a scratch vector first.
            OpChecks.Range(dy, 0, (long)rows * outFeatures);
            OpChecks.Range(x, 0, (long)rows * inFeatures);
            OpChecks.Range(dweight, 0, (long)outFeatures * inFeatures);
            OpChecks.Range(dbias, 0, outFeatures);
            var scratch = Pool.Rent(dbias.DType, outFeatures);
            try
            {
                if (TryLtMatmul(new LtKey(inFeatures, outFeatures, rows, false, true, CublasLt.EpilogueBiasGradientB, x.DType, dweight.DType),
                        x, inFeatures, dy, outFeatures, dweight, beta: 1, scratch, null))
                {
                    Axpby(scratch, dbias, outFeatures, 1, 1);
                    LastLinearWasFused = true;
                    return;
                }
            }
            finally
            {
                Pool.Return(scratch);
            }
        }
        LinearComposition.WeightBackward(this, dy, x, dweight, dbias, rows, inFeatures, outFeatures);
    }

    /// <summary>Whether <see cref="LinearForward"/> takes a cuBLASLt epilogue (given a library and an algorithm): no
    /// activation or GELU, every buffer fp32 or every buffer bf16. The cost backend predicts the same.</summary>
    internal static bool LinearForwardFuses(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer? bias, DeviceBuffer y, Activation? activation,
        DeviceBuffer? pre, int rows, int inFeatures, int outFeatures) =>
        activation is null or Activation.Gelu && rows > 0 && inFeatures > 0 && outFeatures > 0
        && x.DType is DType.F32 or DType.BF16 && weight.DType == x.DType && y.DType == x.DType
        && (bias == null || bias.DType == x.DType) && (pre == null || pre.DType == x.DType);

    /// <summary>Whether <see cref="LinearWeightBackward"/> takes the BGRADB epilogue: both gradients, dy and x of one
    /// dtype (fp32 or bf16), the gradients of dy's dtype or fp32 under bf16. The cost backend predicts the same.</summary>
    internal static bool LinearWeightBackwardFuses(DeviceBuffer dy, DeviceBuffer x, [NotNullWhen(true)] DeviceBuffer? dweight,
        [NotNullWhen(true)] DeviceBuffer? dbias,
        int rows, int inFeatures, int outFeatures) =>
        dweight != null && dbias != null && rows > 0 && inFeatures > 0 && outFeatures > 0
        && dy.DType == x.DType && dweight.DType == dbias.DType && dy.DType is DType.F32 or DType.BF16
        && (dweight.DType == dy.DType || (dy.DType == DType.BF16 && dweight.DType == DType.F32));

    /// <summary>
    /// Column-major D[m, n] = op(A) op(B) + beta D through cuBLASLt with the key's epilogue; <paramref name="vector"/> is
    /// the bias (BIAS) or the bias gradient (BGRADB), <paramref name="aux"/> GELU's input (leading dimension m). False
    /// when cuBLASLt cannot run it (no library, no algorithm): the caller composes the op instead.
    /// </summary>
    private bool TryLtMatmul(LtKey key, DeviceBuffer a, int lda, DeviceBuffer b, int ldb, DeviceBuffer d, float beta,
        DeviceBuffer? vector, DeviceBuffer? aux)
    {
        Enter();
        var plan = LtPlanFor(key, lda, ldb);
        if (plan == null) return false;
        ulong vectorAddress = vector != null ? Address(vector) : 0, auxAddress = aux != null ? Address(aux) : 0;
        long auxLd = key.M;
        if (vector != null) LtCheck(CublasLt.cublasLtMatmulDescSetAttribute(plan.Desc, CublasLt.MatmulDescBiasPointer, &vectorAddress, sizeof(ulong)));
        if (aux != null)
        {
            LtCheck(CublasLt.cublasLtMatmulDescSetAttribute(plan.Desc, CublasLt.MatmulDescEpilogueAuxPointer, &auxAddress, sizeof(ulong)));
            LtCheck(CublasLt.cublasLtMatmulDescSetAttribute(plan.Desc, CublasLt.MatmulDescEpilogueAuxLd, &auxLd, sizeof(long)));
        }
        float alpha = 1;
        var algo = plan.Algo;
        ulong dAddress = Address(d);
        var status = CublasLt.cublasLtMatmul(ltHandle, plan.Desc, &alpha, Address(a), plan.A, Address(b), plan.B, &beta,
            dAddress, plan.C, dAddress, plan.C, &algo, 0, 0, stream);
        if (status != CublasStatus.Success)
        {
            string detail = IsEmulated && EmulatorError() is { Length: > 0 } why ? $": {why.TrimEnd('.')}" : "";
            throw new CudaException("cublasLtMatmul", status.Name(), $"cublasLtMatmul failed with {status.Name()}{detail}.");
        }
        return true;
    }

    /// <summary>The cached plan of a shape, built on first use; null when cuBLASLt is missing or has no algorithm.</summary>
    private LtPlan? LtPlanFor(LtKey key, int lda, int ldb)
    {
        if (ltUnavailable) return null;
        if (ltHandle == 0)
        {
            if (!CudaLibraries.TryLoad(CudaLibraries.CublasLt, out _, out _))
            {
                ltUnavailable = true;
                return null;
            }
            nint handle = 0;
            LtCheck(CublasLt.cublasLtCreate(&handle));
            ltHandle = handle;
        }
        if (ltPlans.TryGetValue(key, out var cached)) return cached.Usable ? cached : null;
        var plan = new LtPlan();
        ltPlans[key] = plan;
        int input = key.Input == DType.BF16 ? Cublas.R16BF : Cublas.R32F, output = key.Output == DType.BF16 ? Cublas.R16BF : Cublas.R32F;
        nint desc = 0, la = 0, lb = 0, lc = 0, preference = 0;
        LtCheck(CublasLt.cublasLtMatmulDescCreate(&desc, Cublas.Compute32F, Cublas.R32F));
        plan.Desc = desc;
        int transA = key.TransA ? Cublas.OpT : Cublas.OpN, transB = key.TransB ? Cublas.OpT : Cublas.OpN, epilogue = key.Epilogue;
        LtCheck(CublasLt.cublasLtMatmulDescSetAttribute(desc, CublasLt.MatmulDescTransA, &transA, sizeof(int)));
        LtCheck(CublasLt.cublasLtMatmulDescSetAttribute(desc, CublasLt.MatmulDescTransB, &transB, sizeof(int)));
        LtCheck(CublasLt.cublasLtMatmulDescSetAttribute(desc, CublasLt.MatmulDescEpilogue, &epilogue, sizeof(int)));
        if (key.Epilogue is CublasLt.EpilogueGeluAux or CublasLt.EpilogueGeluAuxBias)
        {
            long auxLd = key.M; // the heuristic checks it (a multiple of 8)
            LtCheck(CublasLt.cublasLtMatmulDescSetAttribute(desc, CublasLt.MatmulDescEpilogueAuxLd, &auxLd, sizeof(long)));
        }
        // Stored shapes: op(A) is [m, k], op(B) is [k, n]; a transposed operand is stored the other way round.
        LtCheck(CublasLt.cublasLtMatrixLayoutCreate(&la, input, (ulong)(key.TransA ? key.K : key.M), (ulong)(key.TransA ? key.M : key.K), lda));
        LtCheck(CublasLt.cublasLtMatrixLayoutCreate(&lb, input, (ulong)(key.TransB ? key.N : key.K), (ulong)(key.TransB ? key.K : key.N), ldb));
        LtCheck(CublasLt.cublasLtMatrixLayoutCreate(&lc, output, (ulong)key.M, (ulong)key.N, key.M));
        (plan.A, plan.B, plan.C) = (la, lb, lc);
        LtCheck(CublasLt.cublasLtMatmulPreferenceCreate(&preference));
        try
        {
            ulong workspace = 0;
            LtCheck(CublasLt.cublasLtMatmulPreferenceSetAttribute(preference, CublasLt.MatmulPreferenceMaxWorkspaceBytes, &workspace, sizeof(ulong)));
            CublasLt.HeuristicResult result;
            int returned = 0;
            var status = CublasLt.cublasLtMatmulAlgoGetHeuristic(ltHandle, desc, la, lb, lc, lc, preference, 1, &result, &returned);
            plan.Usable = status == CublasStatus.Success && returned > 0 && result.State == CublasStatus.Success;
            plan.Algo = result.Algo;
        }
        finally
        {
            CublasLt.cublasLtMatmulPreferenceDestroy(preference);
        }
        return plan.Usable ? plan : null;
    }

    private void LtCheck(CublasStatus status)
    {
        if (status == CublasStatus.Success) return;
        string detail = IsEmulated && EmulatorError() is { Length: > 0 } why ? $": {why.TrimEnd('.')}" : "";
        throw new CudaException("cuBLASLt", status.Name(), $"a cuBLASLt call failed with {status.Name()}{detail}.");
    }

    /// <summary>Destroys the cached plans and the cuBLASLt handle (Dispose).</summary>
    private void DisposeLt()
    {
        foreach (var plan in ltPlans.Values)
        {
            if (plan.A != 0) CublasLt.cublasLtMatrixLayoutDestroy(plan.A);
            if (plan.B != 0) CublasLt.cublasLtMatrixLayoutDestroy(plan.B);
            if (plan.C != 0) CublasLt.cublasLtMatrixLayoutDestroy(plan.C);
            if (plan.Desc != 0) CublasLt.cublasLtMatmulDescDestroy(plan.Desc);
        }
        ltPlans.Clear();
        if (ltHandle != 0) CublasLt.cublasLtDestroy(ltHandle);
        ltHandle = 0;
    }
}
