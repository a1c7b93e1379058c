using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Repa.Kernels.Cuda;
using Repa.Kernels.Cuda.Native;

namespace Repa.Tests;

/// <summary>Library resolution, the probe's one-sentence answers and the status names of the native bindings.</summary>
[TestFixture]
public sealed class CudaLibrariesTests
{
    [Test]
    public void VersionedNamesAreTriedNewestFirst()
    {
        if (OperatingSystem.IsWindows()) Assert.Ignore("The Linux file names are checked on Linux.");
        Assert.That(CudaLibraries.DriverCandidates[0], Is.EqualTo("libcuda.so.1"));
        Assert.That(CudaLibraries.CublasCandidates, Is.EqualTo(new[] { "libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so" }));
        Assert.That(CudaLibraries.CublasLtCandidates, Is.EqualTo(new[] { "libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so" }));
        Assert.That(CudaLibraries.NvrtcCandidates,
            Is.EqualTo(new[] { "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so.11.1", "libnvrtc.so.11.0", "libnvrtc.so" }));
        Assert.That(CudaLibraries.Candidates(CudaLibraries.Nvrtc), Is.SameAs(CudaLibraries.NvrtcCandidates));
        var e = Assert.Throws<ArgumentException>(() => CudaLibraries.Candidates("cudart"))!;
        Assert.That(e.Message, Does.Contain("'cudart'"));
    }

    /// <summary>Without a driver the probe says why in one sentence (what `--device auto` prints before falling back to
    /// the CPU). Where a driver exists the probe would bind it, and this test process keeps "repa_cuda" for the
    /// emulator, so the check runs only on driverless machines (CI's, this project's developers'). Once the emulated
    /// backend's tests have bound "repa_cuda" to the emulator, the probe reports the emulated device instead, and a fresh
    /// process (ComputeDeviceTests) checks the driverless sentence.</summary>
    [Test]
    public void WithoutADriverTheProbeSaysWhyInOneSentence()
    {
        if (CudaLibraries.DriverCandidates.Any(name => NativeLibrary.TryLoad(name, out _)))
            Assert.Ignore("An NVIDIA driver library is installed here; the probe is checked on machines without one.");
        if (CudaLibraries.IsEmulated)
        {
            var emulated = CudaLibraries.Probe();
            Assert.That(emulated.IsAvailable, Is.True, emulated.Message);
            Assert.That(emulated.Message, Does.StartWith("CUDA device 0: Repa CUDA emulator (CPU").And.EndWith(", emulated)."));
            Assert.That(emulated.ComputeCapability, Is.GreaterThanOrEqualTo(CudaLibraries.MinimumComputeCapability));
            return;
        }
        var probe = CudaLibraries.Probe();
        Assert.That(probe.IsAvailable, Is.False);
        Assert.That(probe.Message, Does.StartWith("CUDA is unavailable: the NVIDIA driver library (libcuda.so.1"));
        Assert.That(probe.Message, Does.EndWith("was not found."));
        Assert.That(Regex.Replace(probe.Message, @"[\w-]+\.so[\w.]*", "file").Count(c => c == '.'), Is.EqualTo(1),
            "one sentence: the only other dots are in file names");
        Assert.That(probe.Message, Does.Not.Contain('\n'));
        Assert.That(CudaLibraries.BoundPath(CudaLibraries.Driver), Is.Null, "a failed probe binds nothing");
    }

    [Test]
    public void TheEmulatorMustExist()
    {
        string missing = Path.Combine(Path.GetTempPath(), "no-such-dir", "librepa_cuda_emu.so");
        bool before = CudaLibraries.IsEmulated; // the emulated backend's tests may have chosen the real emulator already
        var e = Assert.Throws<FileNotFoundException>(() => CudaLibraries.UseEmulator(missing))!;
        Assert.That(e.Message, Does.Contain(missing).And.Contain("does not exist"));
        Assert.That(CudaLibraries.IsEmulated, Is.EqualTo(before), "a missing file changes nothing");
    }

    [Test]
    public void StatusNamesAreTheCSpellings()
    {
        Assert.That(CudaResult.Success.Name(), Is.EqualTo("CUDA_SUCCESS"));
        Assert.That(CudaResult.OutOfMemory.Name(), Is.EqualTo("CUDA_ERROR_OUT_OF_MEMORY"));
        Assert.That(CudaResult.NoBinaryForGpu.Name(), Is.EqualTo("CUDA_ERROR_NO_BINARY_FOR_GPU"));
        Assert.That(CudaResult.InvalidPtx.Name(), Is.EqualTo("CUDA_ERROR_INVALID_PTX"));
        Assert.That(((CudaResult)12345).Name(), Is.EqualTo("CUresult 12345"));
        Assert.That(CublasStatus.NotSupported.Name(), Is.EqualTo("CUBLAS_STATUS_NOT_SUPPORTED"));
        Assert.That(NvrtcResult.Compilation.Name(), Is.EqualTo("NVRTC_ERROR_COMPILATION"));
        Assert.That(NvrtcResult.Success.Name(), Is.EqualTo("NVRTC_SUCCESS"));
    }

    /// <summary>cublasLtMatmulAlgo_t is 8 x uint64; cublasLtMatmulHeuristicResult_t adds size_t, status, float, int[4].</summary>
    [Test]
    public void CublasLtStructsHaveTheCLayout()
    {
        Assert.That(Unsafe.SizeOf<CublasLt.MatmulAlgo>(), Is.EqualTo(64));
        Assert.That(Unsafe.SizeOf<CublasLt.HeuristicResult>(), Is.EqualTo(96));
        Assert.That(Marshal.OffsetOf<CublasLt.HeuristicResult>(nameof(CublasLt.HeuristicResult.WorkspaceSize)), Is.EqualTo((nint)64));
        Assert.That(Marshal.OffsetOf<CublasLt.HeuristicResult>(nameof(CublasLt.HeuristicResult.WavesCount)), Is.EqualTo((nint)76));
    }

    [Test]
    public void FailedCallsBecomeOneSentenceNamingTheCall()
    {
        var e = Assert.Throws<CudaException>(() => Cublas.Check(CublasStatus.AllocFailed, "Cublas.cublasCreate_v2(&handle)"))!;
        Assert.That(e.Message, Is.EqualTo("cublasCreate_v2 failed with CUBLAS_STATUS_ALLOC_FAILED."));
        Assert.That(e.Call, Is.EqualTo("cublasCreate_v2"));
        Assert.That(CudaDriver.CallName("CudaDriver.cuMemAlloc_v2(&pointer, bytes)"), Is.EqualTo("cuMemAlloc_v2"));
        Assert.That(CudaDriver.CallName("cuInit(0)"), Is.EqualTo("cuInit"));
    }
}
