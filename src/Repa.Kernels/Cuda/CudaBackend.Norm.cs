namespace Repa.Kernels.Cuda;

// The norm family (IBackend.Norm.cs) has no CUDA kernels in this backend yet: every member says so in one sentence.
// Its kernels get wired in here; ComputeDevice keeps training and sampling off CUDA until then.
public sealed partial class CudaBackend
{
    public void LayerNormForward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? shift, DeviceBuffer? scale, DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd, int rows, int dim, int rowsPerGroup, double eps) =>
        throw NotImplementedYet(nameof(LayerNormForward));

    public void LayerNormBackward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? scale, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer dy, DeviceBuffer? dx, DeviceBuffer? dweight, DeviceBuffer? dbias, DeviceBuffer? dshift, DeviceBuffer? dscale, int rows, int dim, int rowsPerGroup) =>
        throw NotImplementedYet(nameof(LayerNormBackward));

    public void GatedResidualForward(DeviceBuffer x, DeviceBuffer y, DeviceBuffer gate, DeviceBuffer output, int rows, int dim, int rowsPerGroup) =>
        throw NotImplementedYet(nameof(GatedResidualForward));

    public void GatedResidualBackward(DeviceBuffer y, DeviceBuffer gate, DeviceBuffer dout, DeviceBuffer? dx, DeviceBuffer? dy, DeviceBuffer? dgate, int rows, int dim, int rowsPerGroup) =>
        throw NotImplementedYet(nameof(GatedResidualBackward));
}
