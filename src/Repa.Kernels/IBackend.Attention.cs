namespace Repa.Kernels;

public partial interface IBackend
{
    /// <summary>
    /// Multi-head softmax attention (timm Attention after the qkv Linear). <paramref name="qkv"/> is [N, T, 3D] with
    /// D = heads * headDim and features ordered [3, heads, headDim]: q is 0..D-1, k is D..2D-1, v is 2D..3D-1, and head h
    /// owns headDim consecutive features of each. Writes output[n, t, h*hd + d] = sum_s softmax_s(scale q_t . k_s) v_s[d]
    /// ([N, T, D], ready for the proj Linear) and logSumExp[n, h, t] = log sum_s exp(scale q_t . k_s) ([N, heads, T]).
    /// The T x T probabilities are never stored: the backward recomputes them from the log-sum-exp.
    /// </summary>
    void AttentionForward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer logSumExp,
        int batch, int tokens, int heads, int headDim, double scale);

    /// <summary>
    /// dQkv += d(attention)/d(qkv) . dOutput, given the forward's qkv, output and logSumExp. With S = scale Q K^T and
    /// P = exp(S - lse): dV = P^T dO; dP = dO V^T; Di = rowsum(dO * O); dS = P * (dP - Di); dQ = scale dS K;
    /// dK = scale dS^T Q. dQkv has qkv's layout.
    /// </summary>
    void AttentionBackward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer dOutput, DeviceBuffer logSumExp,
        DeviceBuffer dQkv, int batch, int tokens, int heads, int headDim, double scale);
}
