namespace Repa.Kernels.Cuda;

// The optimiser family (IBackend.Optim.cs) has no CUDA kernels in this backend yet: every member says so in one sentence.
// Its kernels get wired in here; ComputeDevice keeps training and sampling off CUDA until then.
public sealed partial class CudaBackend
{
    public double SumOfSquares(DeviceBuffer x, long n) =>
        throw NotImplementedYet(nameof(SumOfSquares));

    public void AdamWStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, long n, double lr, double beta1, double beta2, double eps, double weightDecay, double gradScale, int step) =>
        throw NotImplementedYet(nameof(AdamWStep));

    public void EmaUpdate(DeviceBuffer ema, DeviceBuffer param, long n, double decay) =>
        throw NotImplementedYet(nameof(EmaUpdate));
}
