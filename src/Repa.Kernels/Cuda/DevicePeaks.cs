namespace Repa.Kernels.Cuda;

/// <summary>
/// Dense peak throughput of NVIDIA GPUs by name, for the MFU column of training (the CPU's peak is measured instead).
/// Figures are the vendor's dense (no sparsity) numbers for the SXM/PCIe parts named; the "~800 measured" for
/// an H100's bf16 is below the 989 listed, so MFU against these is a conservative figure. Unknown devices (and the
/// emulator) have no entry: MFU is then not printed rather than guessed.
/// </summary>
public static class DevicePeaks
{
    /// <summary>(name fragment, fp32 CUDA-core TFLOP/s, bf16 tensor-core TFLOP/s); the first fragment the name contains wins.</summary>
    private static readonly (string Fragment, double Fp32, double Bf16)[] Table =
    [
        ("H200", 67, 989),
        ("H100 PCIe", 51, 756),
        ("H100", 67, 989),
        ("A100", 19.5, 312),
        ("A10G", 31.2, 70),
        ("A10", 31.2, 125),
        ("L40S", 91.6, 362),
        ("L40", 90.5, 181),
        ("L4", 30.3, 121),
        ("RTX 4090", 82.6, 165),
        ("RTX 3090", 35.6, 71),
    ];

    /// <summary>The dense peak in GFLOP/s of <paramref name="deviceName"/> for GEMM inputs of <paramref name="dtype"/>
    /// (F32: CUDA cores, no TF32; BF16: tensor cores), or null when the device is not in the table.</summary>
    public static double? Gflops(string deviceName, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(deviceName);
        foreach (var (fragment, fp32, bf16) in Table)
            if (deviceName.Contains(fragment, StringComparison.OrdinalIgnoreCase))
                return dtype switch
                {
                    DType.F32 => fp32 * 1000,
                    DType.BF16 => bf16 * 1000,
                    _ => null,
                };
        return null;
    }
}
