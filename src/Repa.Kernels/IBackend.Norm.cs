namespace Repa.Kernels;

public partial interface IBackend
{
    /// <summary>
    /// LayerNorm over the last axis of x viewed as [rows, dim] (biased variance), with an optional affine and an optional
    /// adaLN modulation in the same pass:
    /// y = (LN(x) * weight + bias) * (1 + scale[g]) + shift[g], g = row / rowsPerGroup.
    /// weight/bias are [dim]; shift/scale are [rows / rowsPerGroup, dim]; any of the four may be null (absent).
    /// mean and rstd = 1 / sqrt(var + eps) are written per row ([rows], x's dtype) for the backward.
    /// </summary>
    void LayerNormForward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? shift, DeviceBuffer? scale,
        DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd, int rows, int dim, int rowsPerGroup, double eps);

    /// <summary>
    /// Backward of <see cref="LayerNormForward"/> from the saved mean/rstd, ACCUMULATING into every non-null gradient:
    /// dx += ..., dweight/dbias += sums over all rows, dshift/dscale += sums over each group's rows. bias is needed only
    /// when dscale is requested (the modulated value is LN(x) * weight + bias); shift never enters the backward.
    /// </summary>
    void LayerNormBackward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? scale,
        DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer dy,
        DeviceBuffer? dx, DeviceBuffer? dweight, DeviceBuffer? dbias, DeviceBuffer? dshift, DeviceBuffer? dscale,
        int rows, int dim, int rowsPerGroup);

    /// <summary>
    /// The adaLN gated residual: output = x + gate[g] * y over [rows, dim], gate [rows / rowsPerGroup, dim],
    /// g = row / rowsPerGroup. output may alias x (in-place residual update).
    /// </summary>
    void GatedResidualForward(DeviceBuffer x, DeviceBuffer y, DeviceBuffer gate, DeviceBuffer output, int rows, int dim, int rowsPerGroup);

    /// <summary>
    /// Backward of <see cref="GatedResidualForward"/>, accumulating: dx += dout; dy += gate[g] * dout;
    /// dgate[g] += sum over the group's rows of y * dout. Null gradients are skipped; dx may alias dy.
    /// </summary>
    void GatedResidualBackward(DeviceBuffer y, DeviceBuffer gate, DeviceBuffer dout, DeviceBuffer? dx, DeviceBuffer? dy, DeviceBuffer? dgate,
        int rows, int dim, int rowsPerGroup);
}
