namespace Repa.Kernels.Profiling;

/// <summary>
/// Expected GPU time of recorded <see cref="KernelCall"/>s, on paper: per call the roofline max(bytes / bandwidth,
/// FLOPs / peak) at the rate of the unit it runs on, never below a launch floor per kernel launch. The defaults are an
/// H100 SXM's; every figure is a stated assumption, not a measurement.
/// </summary>
public sealed record StepCostModel
{
    /// <summary>The device the figures describe.</summary>
    public string Device { get; init; } = "H100 SXM";

    /// <summary>DRAM bandwidth a streaming kernel can reach, bytes/s (3.35 TB/s peak less what streams lose).</summary>
    public double MemoryBandwidth { get; init; } = 3.0e12;

    /// <summary>Fraction of <see cref="MemoryBandwidth"/> our bandwidth-bound kernels reach (grid-stride, warp-per-row).</summary>
    public double MemoryEfficiency { get; init; } = 0.8;

    /// <summary>Dense bf16 tensor-core rate of large cuBLAS GEMMs, FLOP/s (measured ~800 T, vendor 989 T).</summary>
    public double TensorPeak { get; init; } = 800e12;

    /// <summary>Fraction of <see cref="TensorPeak"/> our GEMM shapes reach (M = 65536 tokens, N and K 1152 to 4608).</summary>
    public double GemmEfficiency { get; init; } = 0.8;

    /// <summary>fp32 CUDA-core (non-tensor) FMA peak, FLOP/s: what fp32 GEMMs (CUBLAS_COMPUTE_32F, no TF32) and
    /// kernels/attention.cu's CUDA-core kernels run on.</summary>
    public double Fp32Peak { get; init; } = 67e12;

    /// <summary>Fraction of <see cref="Fp32Peak"/> cuBLAS SGEMM reaches on large shapes.</summary>
    public double Fp32GemmEfficiency { get; init; } = 0.8;

    /// <summary>Fraction of <see cref="Fp32Peak"/> kernels/attention.cu reaches: one shared float4 load per 4 FFMA, two
    /// shuffles and an exp per score, 8-12 warps per SM (docs/notes/cuda.md's guess, 25-35%).</summary>
    public double AttentionEfficiency { get; init; } = 0.3;

    /// <summary>Fraction of <see cref="TensorPeak"/> the tensor-core attention forward (attention_forward_mma_*) reaches:
    /// mma.sync without ldmatrix or cp.async, 3 blocks per SM; docs/notes/cuda.md's assumption (FlashAttention-2 with
    /// mma.sync reaches ~35% of an H100's dense peak).</summary>
    public double AttentionMmaForwardEfficiency { get; init; } = 0.25;

    /// <summary>Fraction of <see cref="TensorPeak"/> the tensor-core attention backward reaches (8 warps per SM in the key
    /// pass, 32-row tiles, transposed stores); docs/notes/cuda.md's assumption.</summary>
    public double AttentionMmaBackwardEfficiency { get; init; } = 0.2;

    /// <summary>Least time of one kernel launched from C#, seconds (the host's launch call, latency and ramp).</summary>
    public double LaunchFloor { get; init; } = 3e-6;

    /// <summary>Least time of one node of a replayed CUDA graph, seconds: no host work per kernel any more, but the
    /// device still launches each grid after the previous one drains (its ramp and tail). NVIDIA's "Getting Started
    /// with CUDA Graphs" blog measured a chain of ~2.9 µs kernels at 3.4 µs each from a graph against 3.8 µs from
    /// stream launches, i.e. well under 1 µs of per-node overhead (on a V100); 1 µs is a round, cautious figure.</summary>
    public double GraphNodeFloor { get; init; } = 1e-6;

    /// <summary>Host-to-device and back through PCIe from pageable managed memory, bytes/s.</summary>
    public double HostBandwidth { get; init; } = 20e9;

    /// <summary>Cost of one synchronisation with a small read-back, seconds: the stream drains, so the next kernel's
    /// launch latency is no longer hidden behind running work.</summary>
    public double SynchronizationCost { get; init; } = 10e-6;

    /// <summary>The FLOP rate a call runs at: GEMMs on tensor cores for 16-bit operands, on CUDA cores for fp32.</summary>
    public double ComputeRate(KernelCall call) => call.Unit switch
    {
        ComputeUnit.Gemm => call.InputType is DType.BF16 or DType.F16 ? TensorPeak * GemmEfficiency : Fp32Peak * Fp32GemmEfficiency,
        ComputeUnit.CudaCores => Fp32Peak * AttentionEfficiency,
        ComputeUnit.TensorCores => TensorPeak * (call.Kind.StartsWith("AttentionBackward", StringComparison.Ordinal)
            ? AttentionMmaBackwardEfficiency : AttentionMmaForwardEfficiency),
        _ => Fp32Peak, // element-wise arithmetic: never the bound in practice
    };

    /// <summary>
    /// Seconds for a call: max(bytes / bandwidth, FLOPs / rate, launches x floor) plus its synchronisations, the floor
    /// <see cref="GraphNodeFloor"/> for a graph's nodes and <see cref="LaunchFloor"/> otherwise (or always with
    /// <c>eager</c>: the same work launched one kernel at a time); host transfers at <see cref="HostBandwidth"/>.
    /// </summary>
    public double Seconds(KernelCall call) => Seconds(call, eager: false);

    /// <inheritdoc cref="Seconds(KernelCall)"/>
    public double Seconds(KernelCall call, bool eager)
    {
        long bytes = call.Bytes;
        double waits = call.Synchronizations * SynchronizationCost;
        if (call.Unit == ComputeUnit.Host) return bytes / HostBandwidth + waits;
        double memory = bytes / (MemoryBandwidth * MemoryEfficiency);
        double compute = call.Flops / ComputeRate(call);
        double floor = call.InGraph && !eager ? GraphNodeFloor : LaunchFloor;
        return Math.Max(Math.Max(memory, compute), call.Launches * floor) + waits;
    }
}
