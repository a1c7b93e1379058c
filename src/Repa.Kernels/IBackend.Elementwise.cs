namespace Repa.Kernels;

/// <summary>Point-wise activations. GELU is the tanh approximation (PyTorch approximate="tanh").</summary>
public enum Activation
{
    Gelu,
    Silu,
}

public enum BinaryOp
{
    Add,
    Sub,
    Mul,
}

public partial interface IBackend
{
    /// <summary>y = f(x) for n elements.</summary>
    void ActivationForward(Activation activation, DeviceBuffer x, DeviceBuffer y, long n);

    /// <summary>dx += f'(x) * dy for n elements.</summary>
    void ActivationBackward(Activation activation, DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long n);

    /// <summary>
    /// y = a op b over <paramref name="shape"/> (the output shape), reading a and b through element strides in which
    /// 0 marks a broadcast axis (numpy broadcasting). y is contiguous and may alias a or b when their strides are
    /// y's own (in-place update).
    /// </summary>
    void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<long> stridesA, DeviceBuffer b, ReadOnlySpan<long> stridesB,
        DeviceBuffer y, ReadOnlySpan<int> shape);

    /// <summary>y = alpha * x + beta * y over n elements (beta = 0 ignores y's old contents).</summary>
    void Axpby(DeviceBuffer x, DeviceBuffer y, long n, double alpha, double beta);

    /// <summary>y[o, i] = alpha * sum_r x[o, r, i] + beta * y[o, i] for x viewed as [outer, reduce, inner].</summary>
    void Sum(DeviceBuffer x, DeviceBuffer y, int outer, int reduce, int inner, double alpha, double beta);

    /// <summary>y = permute(x, perm) + beta * y: axis j of y is axis perm[j] of x; <paramref name="shape"/> is x's.</summary>
    void Permute(DeviceBuffer x, DeviceBuffer y, ReadOnlySpan<int> shape, ReadOnlySpan<int> perm, double beta);

    /// <summary>
    /// Strided row copy, the primitive under concat/split/chunk: for r in [0, rows):
    /// dst[dstOffset + r*dstStride + j] = src[srcOffset + r*srcStride + j] + beta * dst[...] for j in [0, width).
    /// </summary>
    void CopyRows(DeviceBuffer source, long sourceOffset, long sourceStride, DeviceBuffer destination,
        long destinationOffset, long destinationStride, int rows, int width, double beta);
}
