namespace Repa.Kernels.Cuda;

// The attention family (IBackend.Attention.cs) has no CUDA kernels in this backend yet: every member says so in one sentence.
// Its kernels get wired in here; ComputeDevice keeps training and sampling off CUDA until then.
public sealed partial class CudaBackend
{
    public void AttentionForward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer logSumExp, int batch, int tokens, int heads, int headDim, double scale) =>
        throw NotImplementedYet(nameof(AttentionForward));

    public void AttentionBackward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer dOutput, DeviceBuffer logSumExp, DeviceBuffer dQkv, int batch, int tokens, int heads, int headDim, double scale) =>
        throw NotImplementedYet(nameof(AttentionBackward));
}
