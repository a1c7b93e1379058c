using Repa.Kernels.Cpu;
using Repa.Kernels.Cuda;

namespace Repa.Kernels.Profiling;

/// <summary>Where a recorded call spends its time on a GPU (see <see cref="StepCostModel"/>).</summary>
public enum ComputeUnit
{
    /// <summary>cuBLAS GEMMs: tensor cores for bf16 operands, CUDA-core FMA for fp32 (CUBLAS_COMPUTE_32F, no TF32).</summary>
    Gemm,

    /// <summary>kernels/attention.cu's CUDA-core kernels: fp32 FMA (fp32 activations, and bf16 when the tensor-core
    /// kernels are off or, in the backward, head_dim exceeds 80).</summary>
    CudaCores,

    /// <summary>kernels/attention.cu's tensor-core kernels (bf16 mma.sync m16n8k16, fp32 accumulation), hand-written:
    /// priced at their own efficiency, not cuBLAS's.</summary>
    TensorCores,

    /// <summary>Bandwidth-bound kernels and device-to-device copies (everything else on the device).</summary>
    Memory,

    /// <summary>Host transfers (uploads and downloads through PCIe).</summary>
    Host,
}

/// <summary>
/// One call of an <see cref="IBackend"/> member as the CUDA backend would run it: the op family (the kernels/*.cu file,
/// "gemm" for cuBLAS, "host" for transfers), the kind of call, a shape label, the launches, the FLOPs and the DRAM bytes
/// (reads plus writes).
/// </summary>
public sealed record KernelCall(string Family, string Kind, string Shape, int Launches, double Flops, long Bytes, ComputeUnit Unit)
{
    /// <summary>The GEMM operands' element type (bf16: tensor cores; fp32: CUDA cores); null for other calls.</summary>
    public DType? InputType { get; init; }

    /// <summary>Times the call waits for the device to drain and reads a result back to the host (a download, the
    /// squared norm's double, the embedding's bad-id flag).</summary>
    public int Synchronizations { get; init; }

    /// <summary>Whether the call is a node of a replayed graph (<see cref="IBackend.Capture"/>): its launches cost the
    /// device's per-node floor, not a launch from C#.</summary>
    public bool InGraph { get; init; }
}

/// <summary>
/// A backend that computes nothing: its buffers hold no memory (a dtype and a length only), every member records what
/// the CUDA backend (src/Repa.Kernels/Cuda, kernels/*.cu) would launch for it, with its FLOPs and DRAM bytes, and
/// <see cref="IBackend.Download"/> gives zeros (the host <c>SumOfSquares</c> 0). Running a training step through it
/// yields the step's kernel trace for <see cref="StepCostModel"/>. Every per-op cost formula lives in this file.
/// </summary>
/// <remarks>
/// Assumptions of the formulas (what "bytes" means):
/// <list type="bullet">
/// <item>Bytes are DRAM traffic: every element a kernel reads counts once and every element it writes once, at its
/// buffer's element size; an accumulated gradient (dx += ...) is read and written. Re-reads of a row that a kernel makes
/// within itself (LayerNorm's three passes over a warp's row, attention's K/V tiles shared by the query tiles of one
/// (batch, head) pair, a broadcast operand) are assumed to hit L1/L2 and are not counted again.</item>
/// <item>GEMM: A, B and C once each (C twice when beta != 0; an operand with batch stride 0 once); FLOPs 2 m n k per
/// batch item.</item>
/// <item>Attention as executed by kernels/attention.cu, the kernels chosen by <see cref="CudaBackend.AttentionUsesTensorCores"/>
/// (with the tensor-core kernels on, the CUDA backend's default). CUDA cores: forward 4 N H T^2 hd FLOPs, backward
/// 14 N H T^2 hd (S and dP are recomputed in both the query and the key pass). Tensor cores (mma m16n8k16): the products'
/// k dimension padded to 16 and n to 8, forward 2 N H T^2 (hd16 + hd8), backward 2 N H T^2 (4 hd16 + 3 hd8) (S and dP in
/// both passes, then dQ, dV, dK; 72 -> 80 for SiT's heads). The exps are not counted as FLOPs; DRAM bytes are the same
/// for both kinds.</item>
/// <item>Element-wise FLOPs are rough per-element operation counts (they never decide a memory-bound kernel's time).</item>
/// <item>Launches (kernels, plus memsets and device-to-device copies, which cost about as much) follow the CUDA
/// backend: e.g. LayerNorm backward is an input kernel, a parameter kernel and one column sum per affine gradient; a
/// broadcast over more than six merged axes is one launch per slice; the squared norm is two kernels (and, in the host
/// overload, a read-back).
/// The parameter-gradient chunks use an H100's <see cref="MultiprocessorCount"/> multiprocessors.</item>
/// <item><see cref="Capture"/> records the body's calls without keeping them; each launch of the graph records one
/// cuGraphLaunch and the captured calls again, marked <see cref="KernelCall.InGraph"/>. Upload, Download and Synchronize
/// are refused during a capture, as on CUDA.</item>
/// </list>
/// </remarks>
public sealed class CostBackend : IBackend
{
    /// <summary>Multiprocessors of an H100 SXM: the CUDA backend sizes some grids (and so its scratch) by them.</summary>
    public const int MultiprocessorCount = 132;

    private readonly List<KernelCall> calls = [];
    private long allocations;
    private bool capturing;

    public CostBackend() => Pool = new BufferPool(this);

    /// <summary>A buffer of the counting backend: a dtype and a length, no memory.</summary>
    private sealed class CostBuffer(IBackend backend, DType dtype, long length) : DeviceBuffer(backend, dtype, length)
    {
        protected override void Release() { }
    }

    /// <summary>Elements of one dtype a call moves through DRAM (reads plus writes).</summary>
    private readonly record struct BufferTraffic(DType Type, long Elements);

    public string Name => "cost";
    public string Description => "cost: counts the CUDA backend's launches, FLOPs and DRAM bytes; computes nothing";
    public BufferPool Pool { get; }
    public long AllocationCount => allocations;

    /// <summary>The calls recorded since the last <see cref="Clear"/>, in order.</summary>
    public IReadOnlyList<KernelCall> Calls => calls;

    /// <summary>Forgets the recorded calls (buffers stay valid).</summary>
    public void Clear() => calls.Clear();

    /// <summary>What the CUDA backend computes in (fp32, bf16, int32), so the trainer chooses what it would on a GPU.</summary>
    public bool Supports(DType dtype) => dtype is DType.F32 or DType.BF16 or DType.I32;

    /// <summary>A buffer of any dtype, as the CUDA backend allocates any (fp64/fp16 as storage).</summary>
    public DeviceBuffer Allocate(DType dtype, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        allocations++;
        return new CostBuffer(this, dtype, length);
    }

    public void Dispose() => Pool.Dispose();

    private void RecordSynchronizing(string family, string kind, string shape, int launches, double flops, ComputeUnit unit,
        params ReadOnlySpan<BufferTraffic> traffic)
    {
        Record(family, kind, shape, launches, flops, unit, traffic);
        calls[^1] = calls[^1] with { Synchronizations = 1 };
    }

    private void Record(string family, string kind, string shape, int launches, double flops, ComputeUnit unit,
        params ReadOnlySpan<BufferTraffic> traffic)
    {
        long bytes = 0;
        foreach (var t in traffic) bytes += t.Elements * t.Type.SizeInBytes();
        calls.Add(new KernelCall(family, kind, shape, launches, flops, bytes, unit));
    }

    private static BufferTraffic T(DeviceBuffer buffer, long elements) => new(buffer.DType, elements);

    /// <summary>Traffic of an optional buffer (none when null or not <paramref name="present"/>).</summary>
    private static BufferTraffic T(DeviceBuffer? buffer, long elements, bool present) =>
        buffer != null && present ? new(buffer.DType, elements) : default;

    /// <summary>Traffic of a temporary the CUDA backend makes inside a call (statistics, partial sums).</summary>
    private static BufferTraffic Scratch(DType dtype, long elements) => new(dtype, elements);

    /// <summary>Read and written: an accumulated output.</summary>
    private static long ReadWrite(long elements) => 2 * elements;

    // ---- memory --------------------------------------------------------------------------------------------------

    public void Upload<T1>(ReadOnlySpan<T1> source, DeviceBuffer destination, long offset = 0) where T1 : unmanaged
    {
        RefuseDuringCapture("Upload");
        long bytes = (long)source.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<T1>();
        Record("host", "upload", "", 0, 0, ComputeUnit.Host, T(destination, bytes / destination.DType.SizeInBytes()));
    }

    public void Download<T1>(DeviceBuffer source, Span<T1> destination, long offset = 0) where T1 : unmanaged
    {
        RefuseDuringCapture("Download");
        destination.Clear();
        long bytes = (long)destination.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<T1>();
        RecordSynchronizing("host", "download", "", 0, 0, ComputeUnit.Host, T(source, bytes / source.DType.SizeInBytes()));
    }

    /// <summary>cuMemcpyDtoD: counted as one launch (a device operation with a kernel's latency).</summary>
    public void Copy(DeviceBuffer source, long sourceOffset, DeviceBuffer destination, long destinationOffset, long count) =>
        Record("memory", "Copy", "", count > 0 ? 1 : 0, 0, ComputeUnit.Memory, T(source, count), T(destination, count));

    /// <summary>32-bit fills are cuMemsetD32, 16/64-bit fills a fill kernel: one launch either way.</summary>
    public void Fill(DeviceBuffer destination, long offset, long count, double value) =>
        Record("memory", "Fill", "", count > 0 ? 1 : 0, 0, ComputeUnit.Memory, T(destination, count));

    public void Convert(DeviceBuffer source, DeviceBuffer destination, long count) =>
        Record("memory", "Convert", $"{source.DType.Name()}->{destination.DType.Name()}", 1, count, ComputeUnit.Memory,
            T(source, count), T(destination, count));

    public void Synchronize() => RefuseDuringCapture("Synchronize");

    /// <summary>As the CUDA backend, which throws this so that the trainer falls back to eager steps.</summary>
    private void RefuseDuringCapture(string member)
    {
        if (capturing) throw new InvalidOperationException($"cost: {member} during a graph capture is refused, as on CUDA.");
    }

    // ---- graphs --------------------------------------------------------------------------------------------------

    /// <summary>Runs the body's host code once, as a CUDA capture does, keeping its calls for the graph instead of the
    /// trace; each <see cref="IDeviceGraph.Launch"/> records a cuGraphLaunch and the captured calls as graph nodes.</summary>
    public IDeviceGraph Capture(Action body)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (capturing) throw new InvalidOperationException("cost: a graph capture is already in progress; captures do not nest.");
        int start = calls.Count;
        capturing = true;
        try
        {
            body();
        }
        catch
        {
            calls.RemoveRange(start, calls.Count - start); // as on CUDA: a refused capture leaves nothing done
            throw;
        }
        finally
        {
            capturing = false;
        }
        var nodes = calls.Skip(start).Select(c => c with { InGraph = true }).ToArray();
        calls.RemoveRange(start, calls.Count - start);
        return new RecordedGraph(this, nodes);
    }

    private sealed class RecordedGraph(CostBackend backend, KernelCall[] nodes) : IDeviceGraph
    {
        private bool disposed;

        public void Launch()
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (backend.capturing) throw new InvalidOperationException("cost: launching a graph inside a capture is not supported.");
            // The launch call itself: one launch from the host (not a node).
            backend.calls.Add(new KernelCall("graph", "cuGraphLaunch", $"{nodes.Length} nodes", 1, 0, 0, ComputeUnit.Memory));
            backend.calls.AddRange(nodes);
        }

        public void Dispose() => disposed = true;
    }

    // ---- gemm ----------------------------------------------------------------------------------------------------

    public void Gemm(bool transA, bool transB, int m, int n, int k, double alpha,
        DeviceBuffer a, long offsetA, int lda, long strideA,
        DeviceBuffer b, long offsetB, int ldb, long strideB,
        double beta, DeviceBuffer c, long offsetC, int ldc, long strideC, int batch = 1)
    {
        if (m == 0 || n == 0 || batch == 0) return;
        bool reads = k > 0 && alpha != 0;
        long copiesA = strideA == 0 ? 1 : batch, copiesB = strideB == 0 ? 1 : batch;
        string shape = $"{(transA ? "T" : "N")}{(transB ? "T" : "N")} {m}x{n}x{k}" + (batch > 1 ? $" x{batch}" : "");
        Record("gemm", "Gemm", shape, 1, reads ? 2.0 * m * n * k * batch : 0, ComputeUnit.Gemm,
            T(a, reads ? (long)m * k * copiesA : 0), T(b, reads ? (long)k * n * copiesB : 0),
            T(c, (long)m * n * batch * (beta != 0 ? 2 : 1)));
        calls[^1] = calls[^1] with { InputType = a.DType };
    }

    /// <summary>
    /// As the CUDA backend: one cuBLASLt GEMM with the bias and GELU in its epilogue (GELU's input written as the aux
    /// matrix) when the activation is none or GELU and the buffers share fp32 or bf16; otherwise the composition
    /// (GEMM, bias add, activation), recorded call by call.
    /// </summary>
    public void LinearForward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer? bias, DeviceBuffer y, Activation? activation,
        DeviceBuffer? preActivation, int rows, int inFeatures, int outFeatures)
    {
        if (!CudaBackend.LinearForwardFuses(x, weight, bias, y, activation, preActivation, rows, inFeatures, outFeatures))
        {
            LinearComposition.Forward(this, x, weight, bias, y, activation, preActivation, rows, inFeatures, outFeatures);
            return;
        }
        long output = (long)rows * outFeatures;
        string epilogue = (activation != null, bias != null) switch
        {
            (false, false) => "no epilogue",
            (false, true) => "bias epilogue",
            (true, false) => "GELU epilogue",
            (true, true) => "bias + GELU epilogue",
        };
        Record("gemm", $"LinearForward ({epilogue})", $"NT {rows}x{outFeatures}x{inFeatures}", 1, 2.0 * rows * outFeatures * inFeatures, ComputeUnit.Gemm,
            T(x, (long)rows * inFeatures), T(weight, (long)outFeatures * inFeatures), T(bias, outFeatures, true), T(y, output),
            T(preActivation, output, activation != null));
        calls[^1] = calls[^1] with { InputType = x.DType };
    }

    /// <summary>
    /// As the CUDA backend: with both gradients and fitting dtypes, one cuBLASLt GEMM (dweight += dy^T x) whose BGRADB
    /// epilogue writes the bias gradient to a scratch vector, then an axpby adding it into dbias; otherwise the
    /// composition (GEMM, column sum).
    /// </summary>
    public void LinearWeightBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? dweight, DeviceBuffer? dbias,
        int rows, int inFeatures, int outFeatures)
    {
        if (!CudaBackend.LinearWeightBackwardFuses(dy, x, dweight, dbias, rows, inFeatures, outFeatures))
        {
            LinearComposition.WeightBackward(this, dy, x, dweight, dbias, rows, inFeatures, outFeatures);
            return;
        }
        Record("gemm", "LinearWeightBackward (bias-gradient epilogue)", $"TN {outFeatures}x{inFeatures}x{rows}", 1,
            2.0 * rows * outFeatures * inFeatures, ComputeUnit.Gemm,
            T(x, (long)rows * inFeatures), T(dy, (long)rows * outFeatures), T(dweight, ReadWrite((long)outFeatures * inFeatures)),
            Scratch(dbias.DType, outFeatures));
        calls[^1] = calls[^1] with { InputType = x.DType };
        Record("elementwise", "Axpby", "", 1, 3.0 * outFeatures, ComputeUnit.Memory, Scratch(dbias.DType, outFeatures), T(dbias, ReadWrite(outFeatures)));
    }

    // ---- attention -----------------------------------------------------------------------------------------------

    public void AttentionForward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer logSumExp,
        int batch, int tokens, int heads, int headDim, double scale)
    {
        long rows = (long)batch * tokens, width = (long)heads * headDim, pairs = (long)batch * heads;
        if (rows * width == 0) return;
        bool tensorCores = CudaBackend.AttentionUsesTensorCores(TensorCoreAttention, qkv.DType, headDim, backward: false);
        // Tensor cores: S = Q K^T with k = hd padded to 16, O = P V with n = hd padded to 8.
        double perScore = tensorCores ? 2.0 * (PadTo(headDim, 16) + PadTo(headDim, 8)) : 4.0 * headDim;
        Record("attention", tensorCores ? "AttentionForward (tensor cores)" : "AttentionForward", AttentionShape(batch, tokens, heads, headDim), 1,
            perScore * pairs * tokens * tokens, tensorCores ? ComputeUnit.TensorCores : ComputeUnit.CudaCores,
            T(qkv, rows * 3 * width), T(output, rows * width), T(logSumExp, pairs * tokens));
    }

    public void AttentionBackward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer dOutput, DeviceBuffer logSumExp,
        DeviceBuffer dQkv, int batch, int tokens, int heads, int headDim, double scale)
    {
        long rows = (long)batch * tokens, width = (long)heads * headDim, pairs = (long)batch * heads;
        if (rows * width == 0) return;
        // Query pass: q, k, v, O, dO, lse read, Di written, dQ accumulated. Key pass: q, k, v, dO, lse, Di read, dK and
        // dV accumulated. S and dP are computed in both passes: 14 N H T^2 hd against the minimal 10. On tensor cores the
        // four S/dP products have k = hd padded to 16, the three gradient products n = hd padded to 8.
        bool tensorCores = CudaBackend.AttentionUsesTensorCores(TensorCoreAttention, qkv.DType, headDim, backward: true);
        double perScore = tensorCores ? 2.0 * (4 * PadTo(headDim, 16) + 3 * PadTo(headDim, 8)) : 14.0 * headDim;
        Record("attention", tensorCores ? "AttentionBackward (tensor cores)" : "AttentionBackward", AttentionShape(batch, tokens, heads, headDim), 2,
            perScore * pairs * tokens * tokens, tensorCores ? ComputeUnit.TensorCores : ComputeUnit.CudaCores,
            T(qkv, 2 * rows * 3 * width), T(output, rows * width), T(dOutput, 2 * rows * width), T(logSumExp, 2 * pairs * tokens),
            Scratch(DType.F32, 2 * pairs * tokens), T(dQkv, ReadWrite(rows * 3 * width)));
    }

    private static string AttentionShape(int batch, int tokens, int heads, int headDim) => $"N {batch}, T {tokens}, H {heads}, hd {headDim}";

    private static long PadTo(int value, int multiple) => (value + multiple - 1L) / multiple * multiple;

    /// <summary>Whether bf16 attention is priced on the tensor-core kernels (the CUDA backend's default, true) or on
    /// the CUDA-core ones, as <c>CudaBackend.TensorCoreAttention</c>.</summary>
    public bool TensorCoreAttention { get; init; } = true;

    // ---- element-wise --------------------------------------------------------------------------------------------

    /// <summary>Rough FLOPs per element of the tanh GELU and of SiLU (exp, divide, a few multiply-adds).</summary>
    private static double ActivationFlops(Activation activation, bool backward) =>
        activation == Activation.Gelu ? (backward ? 18 : 10) : (backward ? 10 : 5);

    public void ActivationForward(Activation activation, DeviceBuffer x, DeviceBuffer y, long n) =>
        Record("elementwise", $"{activation}Forward", "", n > 0 ? 1 : 0, ActivationFlops(activation, false) * n, ComputeUnit.Memory,
            T(x, n), T(y, n));

    public void ActivationBackward(Activation activation, DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long n) =>
        Record("elementwise", $"{activation}Backward", "", n > 0 ? 1 : 0, ActivationFlops(activation, true) * n, ComputeUnit.Memory,
            T(x, n), T(dy, n), T(dx, ReadWrite(n)));

    public void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<long> stridesA, DeviceBuffer b, ReadOnlySpan<long> stridesB,
        DeviceBuffer y, ReadOnlySpan<int> shape)
    {
        var (sizes, sa, sb) = BroadcastLayout.MergeAxes(shape, stridesA, stridesB);
        long n = 1;
        foreach (int s in shape) n *= s;
        if (n == 0) return;
        // A broadcast operand is read once (its repeats come from cache); the same launch choice as the CUDA backend.
        long distinctA = 1, distinctB = 1;
        for (int d = 0; d < sizes.Count; d++)
        {
            if (sa[d] != 0) distinctA *= sizes[d];
            if (sb[d] != 0) distinctB *= sizes[d];
        }
        int rank = sizes.Count;
        string kind = rank == 0 || (rank == 1 && sa[0] == 1 && sb[0] == 1) ? "same"
            : rank == 2 && sa[0] == sizes[1] && sa[1] == 1 && sb[0] == 0 && sb[1] == 1 ? "rows" : "broadcast";
        int launches = 1;
        if (kind == "broadcast" && rank > 6)
            for (int d = 0; d < rank - 6; d++) launches *= sizes[d];
        Record("elementwise", $"{op} ({kind})", "", launches, n, ComputeUnit.Memory, T(a, distinctA), T(b, distinctB), T(y, n));
    }

    public void Axpby(DeviceBuffer x, DeviceBuffer y, long n, double alpha, double beta) =>
        Record("elementwise", "Axpby", "", n > 0 ? 1 : 0, 3.0 * n, ComputeUnit.Memory, T(x, n), T(y, beta != 0 ? ReadWrite(n) : n));

    public void Sum(DeviceBuffer x, DeviceBuffer y, int outer, int reduce, int inner, double alpha, double beta)
    {
        long input = (long)outer * reduce * inner, output = (long)outer * inner;
        if (output == 0) return;
        Record("elementwise", inner == 1 ? "Sum (rows)" : "Sum (columns)", "", 1, input, ComputeUnit.Memory,
            T(x, input), T(y, beta != 0 ? ReadWrite(output) : output));
    }

    public void Permute(DeviceBuffer x, DeviceBuffer y, ReadOnlySpan<int> shape, ReadOnlySpan<int> perm, double beta)
    {
        var (sizes, _) = PermuteLayout.MergeAxes(shape, perm);
        long n = 1;
        foreach (int s in shape) n *= s;
        if (n == 0) return;
        int launches = 1;
        for (int d = 0; d < sizes.Count - 6; d++) launches *= sizes[d];
        Record("memory", "Permute", "", launches, beta != 0 ? 2.0 * n : 0, ComputeUnit.Memory, T(x, n), T(y, beta != 0 ? ReadWrite(n) : n));
    }

    public void CopyRows(DeviceBuffer source, long sourceOffset, long sourceStride, DeviceBuffer destination,
        long destinationOffset, long destinationStride, int rows, int width, double beta)
    {
        long n = (long)rows * width;
        if (n == 0) return;
        Record("memory", "CopyRows", "", 1, beta != 0 ? 2.0 * n : 0, ComputeUnit.Memory,
            T(source, n), T(destination, beta != 0 ? ReadWrite(n) : n));
    }

    // ---- norm ----------------------------------------------------------------------------------------------------

    public void LayerNormForward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? shift, DeviceBuffer? scale,
        DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd, int rows, int dim, int rowsPerGroup, double eps)
    {
        long n = (long)rows * dim, groups = shift != null || scale != null ? (long)(rows / rowsPerGroup) * dim : 0;
        if (rows == 0) return;
        // Per element: sum, centred square, normalise, the folded affine/modulation multiply-add.
        Record("norm", "LayerNormForward", "", 1, 8.0 * n, ComputeUnit.Memory,
            T(x, n), T(weight, dim, true), T(bias, dim, true), T(shift, groups, true), T(scale, groups, true),
            T(y, n), T(mean, rows), T(rstd, rows));
    }

    public void LayerNormBackward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? scale,
        DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer dy,
        DeviceBuffer? dx, DeviceBuffer? dweight, DeviceBuffer? dbias, DeviceBuffer? dshift, DeviceBuffer? dscale,
        int rows, int dim, int rowsPerGroup)
    {
        bool parameters = dweight != null || dbias != null || dshift != null || dscale != null;
        if (rows == 0 || (dx == null && !parameters)) return;
        long n = (long)rows * dim;
        bool grouped = scale != null || dshift != null || dscale != null;
        long groupElements = grouped ? (long)(rows / Math.Max(rowsPerGroup, 1)) * dim : 0;
        if (dx != null)
            Record("norm", "LayerNormBackward input", "", 1, 12.0 * n, ComputeUnit.Memory,
                T(x, n), T(dy, n), T(weight, dim, true), T(scale, groupElements, true), T(mean, rows), T(rstd, rows), T(dx, ReadWrite(n)));
        if (!parameters) return;
        // The CUDA backend's chunking: one modulation group per chunk with dshift/dscale, else ~8 blocks per SM.
        int tiles = (dim + 31) / 32;
        long chunkCount = Math.Clamp(8L * MultiprocessorCount / tiles, 1, Math.Max(rows, 1));
        int rowsPerChunk = dshift != null || dscale != null ? Math.Max(rowsPerGroup, 1) : (int)Math.Max(1, (rows + chunkCount - 1) / chunkCount);
        long chunks = (rows + rowsPerChunk - 1) / rowsPerChunk;
        int partials = (dweight != null ? 1 : 0) + (dbias != null ? 1 : 0);
        Record("norm", "LayerNormBackward params", "", 1, 8.0 * n, ComputeUnit.Memory,
            T(x, n), T(dy, n), T(weight, dim, true), T(bias, dim, dscale != null), T(scale, groupElements, true), T(mean, rows), T(rstd, rows),
            Scratch(DType.F32, partials * chunks * dim), T(dshift, ReadWrite(groupElements), true), T(dscale, ReadWrite(groupElements), true));
        // Folding the fp32 partials (sum_columns_f32 with alpha = beta = 1), charged to the norm family that causes it.
        foreach (var gradient in new[] { dweight, dbias })
            if (gradient != null)
                Record("norm", "LayerNormBackward fold", "", 1, chunks * dim, ComputeUnit.Memory,
                    Scratch(DType.F32, chunks * dim), T(gradient, ReadWrite(dim)));
    }

    public void GatedResidualForward(DeviceBuffer x, DeviceBuffer y, DeviceBuffer gate, DeviceBuffer output, int rows, int dim, int rowsPerGroup)
    {
        long n = (long)rows * dim;
        if (rows == 0) return;
        Record("norm", "GatedResidualForward", "", 1, 2.0 * n, ComputeUnit.Memory,
            T(x, n), T(y, n), T(gate, (long)(rows / rowsPerGroup) * dim), T(output, n));
    }

    public void GatedResidualBackward(DeviceBuffer y, DeviceBuffer gate, DeviceBuffer dout, DeviceBuffer? dx, DeviceBuffer? dy, DeviceBuffer? dgate,
        int rows, int dim, int rowsPerGroup)
    {
        if (rows == 0 || (dx == null && dy == null && dgate == null)) return;
        long n = (long)rows * dim, groupElements = (long)(rows / rowsPerGroup) * dim;
        // y is read for dgate only, gate for dy only; dx may alias dy (one read-modify-write stream then).
        bool aliased = dx != null && ReferenceEquals(dx, dy);
        Record("norm", "GatedResidualBackward", "", 1, 4.0 * n, ComputeUnit.Memory,
            T(y, n, dgate != null), T(gate, groupElements, dy != null), T(dout, n),
            T(dx, ReadWrite(n), true), T(dy, ReadWrite(n), !aliased), T(dgate, ReadWrite(groupElements), true));
    }

    // ---- loss ----------------------------------------------------------------------------------------------------

    public void MseForward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer loss, int samples, long inner)
    {
        if (samples == 0) return;
        long n = samples * inner;
        Record("loss", "MseForward", "", 1, 3.0 * n, ComputeUnit.Memory, T(prediction, n), T(target, n), T(loss, samples));
    }

    public void MseBackward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer dLoss, DeviceBuffer? dPrediction,
        DeviceBuffer? dTarget, int samples, long inner)
    {
        if ((dPrediction == null && dTarget == null) || samples == 0 || inner == 0) return;
        long n = samples * inner;
        Record("loss", "MseBackward", "", 1, 4.0 * n, ComputeUnit.Memory, T(prediction, n), T(target, n), T(dLoss, samples),
            T(dPrediction, ReadWrite(n), true), T(dTarget, ReadWrite(n), true));
    }

    public void CosineAlignmentForward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer loss, int samples, int tokens, int dim, double eps)
    {
        long n = (long)samples * tokens * dim;
        if (samples == 0) return;
        Record("loss", "CosineAlignmentForward", "", 1, 6.0 * n, ComputeUnit.Memory, T(z, n), T(h, n), T(loss, samples));
    }

    public void CosineAlignmentBackward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer dLoss, DeviceBuffer? dz, DeviceBuffer? dh,
        int samples, int tokens, int dim, double eps)
    {
        long n = (long)samples * tokens * dim;
        if ((dz == null && dh == null) || n == 0) return;
        Record("loss", "CosineAlignmentBackward", "", 1, 12.0 * n, ComputeUnit.Memory, T(z, n), T(h, n), T(dLoss, samples),
            T(dz, ReadWrite(n), true), T(dh, ReadWrite(n), true));
    }

    public void RowL2NormalizeForward(DeviceBuffer x, DeviceBuffer y, long rows, int dim, double eps)
    {
        long n = rows * dim;
        if (n == 0) return;
        Record("loss", "RowL2NormalizeForward", "", 1, 3.0 * n, ComputeUnit.Memory, T(x, n), T(y, n));
    }

    public void RowL2NormalizeBackward(DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long rows, int dim, double eps)
    {
        long n = rows * dim;
        if (n == 0) return;
        Record("loss", "RowL2NormalizeBackward", "", 1, 6.0 * n, ComputeUnit.Memory, T(x, n), T(dy, n), T(dx, ReadWrite(n)));
    }

    public void DiagonalCrossEntropyForward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer loss, int samples, int n, double scale)
    {
        long e = (long)samples * n * n;
        if (samples == 0) return;
        Record("loss", "DiagonalCrossEntropyForward", "", 1, 4.0 * e, ComputeUnit.Memory, T(logits, e), T(lse, (long)samples * n), T(loss, samples));
    }

    public void DiagonalCrossEntropyBackward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer dLoss, DeviceBuffer dLogits, int samples, int n, double scale)
    {
        long e = (long)samples * n * n;
        if (e == 0) return;
        Record("loss", "DiagonalCrossEntropyBackward", "", 1, 5.0 * e, ComputeUnit.Memory, T(logits, e), T(lse, (long)samples * n),
            T(dLoss, samples), T(dLogits, ReadWrite(e)));
    }

    public void DiffusionVlbForward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer loss, int samples, long inner)
    {
        long n = samples * inner;
        if (samples == 0) return;
        Record("loss", "DiffusionVlbForward", "", 1, 30.0 * n, ComputeUnit.Memory, T(varValues, n), T(mean, n), T(trueMean, n), T(x0, n),
            T(stepParams, 4L * samples), T(loss, samples));
    }

    public void DiffusionVlbBackward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer dLoss, DeviceBuffer dVarValues, int samples, long inner)
    {
        long n = samples * inner;
        if (n == 0) return;
        Record("loss", "DiffusionVlbBackward", "", 1, 30.0 * n, ComputeUnit.Memory, T(varValues, n), T(mean, n), T(trueMean, n), T(x0, n),
            T(stepParams, 4L * samples), T(dLoss, samples), T(dVarValues, ReadWrite(n)));
    }

    // ---- embed ---------------------------------------------------------------------------------------------------

    public void EmbeddingForward(DeviceBuffer table, DeviceBuffer ids, DeviceBuffer y, long count, int vocab, int dim)
    {
        if (count == 0) return;
        // Plus an 8-byte flag: eagerly uploaded before and read back after (one synchronisation); in a capture set by a
        // fill (one more launch) and never read.
        if (capturing)
            Record("embed", "EmbeddingForward", "", 2, 0, ComputeUnit.Memory, T(ids, count), T(table, count * dim), T(y, count * dim), Scratch(DType.F64, 1));
        else
            RecordSynchronizing("embed", "EmbeddingForward", "", 1, 0, ComputeUnit.Memory, T(ids, count), T(table, count * dim), T(y, count * dim));
    }

    public void EmbeddingBackward(DeviceBuffer ids, DeviceBuffer dy, DeviceBuffer dTable, long count, int vocab, int dim)
    {
        if (count == 0) return;
        Record("embed", "EmbeddingBackward", "", 1, count * dim, ComputeUnit.Memory, T(ids, count), T(dy, count * dim), T(dTable, ReadWrite(count * dim)));
    }

    public void TimestepEmbeddingForward(DeviceBuffer t, DeviceBuffer y, long count, int dim, double maxPeriod)
    {
        if (count == 0) return;
        Record("embed", "TimestepEmbeddingForward", "", 1, 10.0 * count * dim, ComputeUnit.Memory, T(t, count), T(y, count * dim));
    }

    public void TimestepEmbeddingBackward(DeviceBuffer t, DeviceBuffer dy, DeviceBuffer dt, long count, int dim, double maxPeriod)
    {
        if (count == 0) return;
        Record("embed", "TimestepEmbeddingBackward", "", 1, 12.0 * count * dim, ComputeUnit.Memory, T(t, count), T(dy, count * dim), T(dt, ReadWrite(count)));
    }

    // ---- sampler -------------------------------------------------------------------------------------------------

    /// <summary>kernels/sampler.cu's flow_step: x (fp64) and the model output (both halves under guidance) read, the
    /// destination written, Euler's saved direction written or Heun's read; a few fp64 operations per element.</summary>
    public void FlowStep(in FlowStepCoefficients step, DeviceBuffer x, DeviceBuffer modelOutput, DeviceBuffer? direction,
        DeviceBuffer destination, long n)
    {
        step.Validate(x, modelOutput, direction, destination, n);
        if (n == 0) return;
        long outputs = step.GuidanceScale.HasValue ? 2 * n : n;
        Record("sampler", $"FlowStep ({step.Update})", "", 1, (step.GuidanceScale.HasValue ? 10.0 : 6.0) * n, ComputeUnit.Memory,
            T(x, n), T(modelOutput, outputs), T(direction, n, step.Update is FlowUpdate.Euler or FlowUpdate.Heun), T(destination, n));
    }

    // ---- optim ---------------------------------------------------------------------------------------------------

    /// <summary>Records the partial and finishing kernels and the read-back of one double; returns 0.</summary>
    public double SumOfSquares(DeviceBuffer x, long n)
    {
        RefuseDuringCapture("SumOfSquares (host)");
        if (n == 0) return 0;
        long blocks = Math.Min((n + 1023) / 1024, 1024);
        RecordSynchronizing("optim", "SumOfSquares", "", 2, 2.0 * n, ComputeUnit.Memory, T(x, n), Scratch(DType.F64, 2 * blocks + 1));
        return 0;
    }

    /// <summary>The device overload: sum_of_squares_partial_f32 (x read, a float64 partial per block of up to 1024)
    /// and sum_of_squares_finish (the partials read, the total written, or read and written when accumulating); n = 0
    /// fills the total unless accumulating.</summary>
    public void SumOfSquares(DeviceBuffer x, long n, DeviceBuffer total, bool accumulate)
    {
        if (n <= 0)
        {
            if (!accumulate) Fill(total, 0, 1, 0);
            return;
        }
        long blocks = Math.Min((n + 1023) / 1024, 1024);
        Record("optim", "SumOfSquares (device)", "", 2, 2.0 * n, ComputeUnit.Memory, T(x, n), Scratch(DType.F64, 2 * blocks),
            T(total, accumulate ? 2 : 1));
    }

    /// <summary>adamw_step_device_f32: the host overload's traffic and arithmetic plus the four float64 scalars (the
    /// clip scale is formed per thread from the first).</summary>
    public void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double beta1, double beta2,
        double eps, double maxGradNorm, DeviceBuffer scalars)
    {
        if (n == 0) return;
        Record("optim", "AdamWStep (device scalars)", "", 1, 15.0 * n, ComputeUnit.Memory,
            T(param, ReadWrite(n)), T(grad, n), T(m, ReadWrite(n)), T(v, ReadWrite(n)), T(scalars, 4));
    }

    /// <summary>accumulate_scalar_*: one thread reads the source and adds into one float64.</summary>
    public void AccumulateScalar(DeviceBuffer source, DeviceBuffer accumulator, long index, double divisor) =>
        Record("optim", "AccumulateScalar", "", 1, 2, ComputeUnit.Memory, T(source, 1), T(accumulator, ReadWrite(1)));

    public void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double lr, double beta1,
        double beta2, double eps, double weightDecay, double gradScale, int step)
    {
        if (n == 0) return;
        Record("optim", "AdamWStep", "", 1, 15.0 * n, ComputeUnit.Memory, T(param, ReadWrite(n)), T(grad, n), T(m, ReadWrite(n)), T(v, ReadWrite(n)));
    }

    public void EmaUpdate(DeviceBuffer ema, DeviceBuffer param, long n, double decay)
    {
        if (n == 0) return;
        Record("optim", "EmaUpdate", "", 1, 3.0 * n, ComputeUnit.Memory, T(ema, ReadWrite(n)), T(param, n));
    }
}
