namespace Repa.Kernels.Cuda;

/// <summary>
/// Fused multi-head attention (kernels/attention.cu), flash-attention style: the forward keeps only the output and the
/// per-row log-sum-exp, the backward recomputes the probabilities from them. qkv, output, dOutput and dQkv are all
/// float32 or all bfloat16; logSumExp is float32, or bfloat16 alongside bfloat16 activations. Softmax statistics and
/// every sum are float32. Head dims up to 128. bfloat16 runs on the tensor cores (bf16 mma.sync, sm_80+; P and dS are
/// rounded to bfloat16 for their products): the forward for every head dim, the backward up to head dim 80; float32
/// and the rest on CUDA cores.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    internal const string AttentionKernels = "attention.cu";

    /// <summary>Rows (queries or keys) per block of kernels/attention.cu, and its threads per block.</summary>
    private const int AttentionTile = 32, AttentionThreads = 128;

    /// <summary>Rows (queries, or keys in the backward's key pass) per block of the tensor-core kernels (4 warps of 16).</summary>
    private const int AttentionMmaRows = 64;

    /// <summary>The largest head dim of the tensor-core backward (its key pass holds K, V, dK and dV of 16 rows in
    /// registers); larger ones take the CUDA-core backward.</summary>
    public const int AttentionMmaBackwardMaxHeadDim = 80;

    /// <summary>
    /// Whether bfloat16 attention takes the tensor-core kernels (attention_*_mma_*; the default: the forward for every
    /// head dim, the backward up to <see cref="AttentionMmaBackwardMaxHeadDim"/>) rather than the CUDA-core ones. The
    /// tests turn it off to hold the CUDA-core bfloat16 kernels against the CPU as well.
    /// </summary>
    internal bool TensorCoreAttention { get; set; } = true;

    /// <summary>
    /// The one rule for which attention kernels run (also what the cost backend predicts): the tensor-core kernels when
    /// <paramref name="enabled"/> (<see cref="TensorCoreAttention"/>) and the activations are bfloat16, the backward
    /// only up to <see cref="AttentionMmaBackwardMaxHeadDim"/>; otherwise the CUDA-core ones.
    /// </summary>
    internal static bool AttentionUsesTensorCores(bool enabled, DType activations, int headDim, bool backward) =>
        enabled && activations == DType.BF16 && (!backward || headDim <= AttentionMmaBackwardMaxHeadDim);

    /// <summary>The largest head dim kernels/attention.cu holds in registers.</summary>
    public const int AttentionMaxHeadDim = 128;

    public void AttentionForward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer logSumExp, int batch, int tokens, int heads, int headDim, double scale)
    {
        string suffix = CheckAttention("attention forward", qkv, output, logSumExp, null, null, batch, tokens, heads, headDim);
        if ((long)batch * tokens * heads * headDim == 0) return;
        Enter();
        bool tensorCores = AttentionUsesTensorCores(TensorCoreAttention, qkv.DType, headDim, backward: false);
        var shape = AttentionShape(batch, tokens, heads, tensorCores);
        Launch(Function(AttentionKernels, tensorCores ? $"attention_forward_mma_{suffix}" : $"attention_forward_{suffix}"), shape,
            Address(qkv), Address(output), Address(logSumExp), batch, tokens, heads, headDim, (float)scale);
    }

    public void AttentionBackward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer dOutput, DeviceBuffer logSumExp, DeviceBuffer dQkv, int batch, int tokens, int heads, int headDim, double scale)
    {
        string suffix = CheckAttention("attention backward", qkv, output, logSumExp, dOutput, dQkv, batch, tokens, heads, headDim);
        if ((long)batch * tokens * heads * headDim == 0) return;
        Enter();
        bool tensorCores = AttentionUsesTensorCores(TensorCoreAttention, qkv.DType, headDim, backward: true);
        var shape = AttentionShape(batch, tokens, heads, tensorCores);
        string kind = tensorCores ? "mma_" : "";
        // Di = rowsum(dO * O) per (pair, query): written by the dQ pass, read by the dK/dV pass (same stream, in order).
        // From the pool: stream order makes its reuse by later work safe, and nothing is allocated inside a capture.
        var delta = Pool.Rent(DType.F32, (long)batch * heads * tokens);
        try
        {
            Launch(Function(AttentionKernels, $"attention_backward_query_{kind}{suffix}"), shape, Address(qkv), Address(output),
                Address(dOutput), Address(logSumExp), Address(dQkv), Address(delta), batch, tokens, heads, headDim, (float)scale);
            Launch(Function(AttentionKernels, $"attention_backward_key_{kind}{suffix}"), shape, Address(qkv), Address(dOutput),
                Address(logSumExp), Address(delta), Address(dQkv), batch, tokens, heads, headDim, (float)scale);
        }
        finally
        {
            Pool.Return(delta);
        }
    }

    /// <summary>One block per 32 rows (the tensor-core kernels: 64) of a (batch, head) pair; grid.y strides over the
    /// pairs beyond 65535.</summary>
    private static LaunchShape AttentionShape(int batch, int tokens, int heads, bool tensorCores)
    {
        int rows = tensorCores ? AttentionMmaRows : AttentionTile;
        return new((uint)((tokens + rows - 1) / rows), (uint)Math.Min((long)batch * heads, 65535), AttentionThreads, 1);
    }

    /// <summary>The shared checks (<see cref="OpChecks.Attention"/>, a float32 log-sum-exp allowed beside bf16 qkv) plus
    /// the kernels' head_dim limit; returns the kernel suffix (f32, bf16, bf16_f32).</summary>
    private static string CheckAttention(string op, DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer logSumExp,
        DeviceBuffer? dOutput, DeviceBuffer? dQkv, int batch, int tokens, int heads, int headDim)
    {
        OpChecks.Attention(op, qkv, output, logSumExp, dOutput, dQkv, batch, tokens, heads, headDim, float32Statistics: true);
        if (headDim > AttentionMaxHeadDim)
            throw new NotSupportedException($"cuda {op}: head_dim {headDim} is above the kernels' {AttentionMaxHeadDim}.");
        string suffix = dOutput != null && dQkv != null
            ? ComputeSuffix(op, qkv, output, dOutput, dQkv)
            : ComputeSuffix(op, qkv, output);
        return logSumExp.DType != qkv.DType ? suffix + "_f32" : suffix;
    }
}
