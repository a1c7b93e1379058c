namespace Repa.Kernels;

/// <summary>Element type of a device buffer. F64 exists on the CPU for gradient checks; BF16/F16 are GPU storage types.</summary>
public enum DType
{
    F32,
    F64,
    BF16,
    F16,
    I32,
}

public static class DTypeExtensions
{
    public static int SizeInBytes(this DType dtype) => dtype switch
    {
        DType.F32 => 4,
        DType.F64 => 8,
        DType.BF16 => 2,
        DType.F16 => 2,
        DType.I32 => 4,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown dtype"),
    };

    public static bool IsFloatingPoint(this DType dtype) => dtype != DType.I32;

    /// <summary>PyTorch-style lower-case name (float32, float64, ...), used in error messages.</summary>
    public static string Name(this DType dtype) => dtype switch
    {
        DType.F32 => "float32",
        DType.F64 => "float64",
        DType.BF16 => "bfloat16",
        DType.F16 => "float16",
        DType.I32 => "int32",
        _ => dtype.ToString(),
    };
}
