namespace Repa.Kernels.Cuda;

// The loss family (IBackend.Loss.cs) has no CUDA kernels in this backend yet: every member says so in one sentence.
// Its kernels get wired in here; ComputeDevice keeps training and sampling off CUDA until then.
public sealed partial class CudaBackend
{
    public void MseForward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer loss, int samples, long inner) =>
        throw NotImplementedYet(nameof(MseForward));

    public void MseBackward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer dLoss, DeviceBuffer? dPrediction, DeviceBuffer? dTarget, int samples, long inner) =>
        throw NotImplementedYet(nameof(MseBackward));

    public void CosineAlignmentForward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer loss, int samples, int tokens, int dim, double eps) =>
        throw NotImplementedYet(nameof(CosineAlignmentForward));

    public void CosineAlignmentBackward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer dLoss, DeviceBuffer? dz, DeviceBuffer? dh, int samples, int tokens, int dim, double eps) =>
        throw NotImplementedYet(nameof(CosineAlignmentBackward));

    public void RowL2NormalizeForward(DeviceBuffer x, DeviceBuffer y, long rows, int dim, double eps) =>
        throw NotImplementedYet(nameof(RowL2NormalizeForward));

    public void RowL2NormalizeBackward(DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long rows, int dim, double eps) =>
        throw NotImplementedYet(nameof(RowL2NormalizeBackward));

    public void DiagonalCrossEntropyForward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer loss, int samples, int n, double scale) =>
        throw NotImplementedYet(nameof(DiagonalCrossEntropyForward));

    public void DiagonalCrossEntropyBackward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer dLoss, DeviceBuffer dLogits, int samples, int n, double scale) =>
        throw NotImplementedYet(nameof(DiagonalCrossEntropyBackward));

    public void DiffusionVlbForward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams, DeviceBuffer loss, int samples, long inner) =>
        throw NotImplementedYet(nameof(DiffusionVlbForward));

    public void DiffusionVlbBackward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams, DeviceBuffer dLoss, DeviceBuffer dVarValues, int samples, long inner) =>
        throw NotImplementedYet(nameof(DiffusionVlbBackward));
}
