namespace Repa.Kernels.Cuda;

// The embedding family (IBackend.Embed.cs) has no CUDA kernels in this backend yet: every member says so in one sentence.
// Its kernels get wired in here; ComputeDevice keeps training and sampling off CUDA until then.
public sealed partial class CudaBackend
{
    public void EmbeddingForward(DeviceBuffer table, DeviceBuffer ids, DeviceBuffer y, long count, int vocab, int dim) =>
        throw NotImplementedYet(nameof(EmbeddingForward));

    public void EmbeddingBackward(DeviceBuffer ids, DeviceBuffer dy, DeviceBuffer dTable, long count, int vocab, int dim) =>
        throw NotImplementedYet(nameof(EmbeddingBackward));

    public void TimestepEmbeddingForward(DeviceBuffer t, DeviceBuffer y, long count, int dim, double maxPeriod) =>
        throw NotImplementedYet(nameof(TimestepEmbeddingForward));

    public void TimestepEmbeddingBackward(DeviceBuffer t, DeviceBuffer dy, DeviceBuffer dt, long count, int dim, double maxPeriod) =>
        throw NotImplementedYet(nameof(TimestepEmbeddingBackward));
}
