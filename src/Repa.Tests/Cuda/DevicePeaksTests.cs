using NUnit.Framework;
using Repa.Kernels;
using Repa.Kernels.Cuda;

namespace Repa.Tests.Cuda;

[TestFixture]
public class DevicePeaksTests
{
    [TestCase("NVIDIA H100 80GB HBM3", 67_000, 989_000)]
    [TestCase("NVIDIA H100 PCIe", 51_000, 756_000)]
    [TestCase("NVIDIA H200", 67_000, 989_000)]
    [TestCase("NVIDIA A100-SXM4-80GB", 19_500, 312_000)]
    [TestCase("NVIDIA A10", 31_200, 125_000)]
    [TestCase("NVIDIA L40S", 91_600, 362_000)]
    [TestCase("NVIDIA L4", 30_300, 121_000)]
    public void KnownDevicesHaveTheirDensePeaks(string name, double fp32, double bf16)
    {
        Assert.That(DevicePeaks.Gflops(name, DType.F32), Is.EqualTo(fp32).Within(1e-9));
        Assert.That(DevicePeaks.Gflops(name, DType.BF16), Is.EqualTo(bf16).Within(1e-9));
    }

    [Test]
    public void UnknownDevicesAndDtypesHaveNone()
    {
        Assert.That(DevicePeaks.Gflops("Repa CUDA emulator (CPU)", DType.F32), Is.Null, "the emulator: no MFU rather than a guess");
        Assert.That(DevicePeaks.Gflops("NVIDIA GeForce GTX 1080", DType.F32), Is.Null);
        Assert.That(DevicePeaks.Gflops("NVIDIA H100", DType.I32), Is.Null);
    }
}
