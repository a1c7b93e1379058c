using System.Diagnostics;
using System.Runtime.InteropServices;
using NUnit.Framework;
using Repa.Kernels.Cuda;
using Repa.Runtime;
using Repa.Tests.Cuda;
using Choice = Repa.Runtime.ComputeDevice.Choice;

namespace Repa.Tests;

/// <summary>
/// `--device`: the decision (with stand-in probes, so every branch runs on any machine) and, in fresh processes (CUDA's
/// libraries are bound once per process), the CLI's one-line refusal of cuda without a driver and, through
/// REPA_CUDA_EMULATOR, with a device whose backend still lacks op families.
/// </summary>
[TestFixture]
public sealed class ComputeDeviceTests
{
    private static readonly CudaProbeResult NoDriver = new(false, "CUDA is unavailable: the NVIDIA driver library (libcuda.so.1, libcuda.so) was not found.", null, 0, 0);
    private static readonly CudaProbeResult Device = new(true, "CUDA device 0: NVIDIA H100 (compute capability 9.0, 79.1 GiB, driver API 12.4).", "NVIDIA H100", 90, 12040);
    private static readonly string[] Missing = ["norm", "loss", "attention", "embedding", "optimiser"];

    private static readonly ComputeDevice.IlgpuProbe NoGpu = new(false, "ILGPU found no CUDA or OpenCL GPU");
    private static readonly ComputeDevice.IlgpuProbe OpenClGpu = new(true, "ILGPU found Radeon RX 7900 (OpenCL)");

    private static Func<CudaProbeResult> Probe(CudaProbeResult result, List<string> calls) => () =>
    {
        calls.Add("probe");
        return result;
    };

    private static Func<ComputeDevice.IlgpuProbe> Ilgpu(ComputeDevice.IlgpuProbe result, List<string>? calls = null) => () =>
    {
        calls?.Add("ilgpu");
        return result;
    };

    [Test]
    public void AutoStaysOnTheCpuWhileTheCudaBackendIsIncomplete()
    {
        var calls = new List<string>();
        Assert.That(ComputeDevice.Choose("auto", Missing, Probe(Device, calls), Ilgpu(NoGpu), out string? note), Is.EqualTo(Choice.Cpu));
        Assert.That(note, Is.EqualTo("auto chose the CPU: the CUDA backend does not implement the norm, loss, attention, embedding and optimiser ops yet; ILGPU found no CUDA or OpenCL GPU"));
        Assert.That(calls, Is.Empty, "no probe (it would bind the driver for nothing)");
        Assert.That(ComputeDevice.Choose("cpu", Missing, Probe(Device, calls), Ilgpu(NoGpu), out note), Is.EqualTo(Choice.Cpu));
        Assert.That(note, Is.Null);
        Assert.That(calls, Is.Empty);
    }

    [Test]
    public void AutoTakesACompleteBackendOnAUsableDevice()
    {
        var calls = new List<string>();
        Assert.That(ComputeDevice.Choose("auto", [], Probe(Device, calls), Ilgpu(NoGpu), out string? note), Is.EqualTo(Choice.Cuda));
        Assert.That(note, Is.EqualTo("auto chose CUDA: CUDA device 0: NVIDIA H100 (compute capability 9.0, 79.1 GiB, driver API 12.4)"));
        Assert.That(ComputeDevice.Choose("auto", [], Probe(NoDriver, calls), Ilgpu(NoGpu), out note), Is.EqualTo(Choice.Cpu));
        Assert.That(note, Is.EqualTo("auto chose the CPU: CUDA is unavailable: the NVIDIA driver library (libcuda.so.1, libcuda.so) was not found; ILGPU found no CUDA or OpenCL GPU"));
        Assert.That(calls, Has.Count.EqualTo(2));
    }

    [Test]
    public void CudaNeedsADeviceAndACompleteBackend()
    {
        var calls = new List<string>();
        var e = Assert.Throws<NotSupportedException>(() => ComputeDevice.Choose("cuda", Missing, Probe(NoDriver, calls), Ilgpu(NoGpu), out _))!;
        Assert.That(e.Message, Is.EqualTo("--device cuda: CUDA is unavailable: the NVIDIA driver library (libcuda.so.1, libcuda.so) was not found; use --device cpu or auto."));
        e = Assert.Throws<NotSupportedException>(() => ComputeDevice.Choose("cuda", Missing, Probe(Device, calls), Ilgpu(NoGpu), out _))!;
        Assert.That(e.Message, Is.EqualTo("--device cuda: the CUDA backend does not implement the norm, loss, attention, embedding and optimiser ops yet, which training and sampling need; use --device cpu or auto."));
        e = Assert.Throws<NotSupportedException>(() => ComputeDevice.Choose("cuda", ["attention"], Probe(Device, calls), Ilgpu(NoGpu), out _))!;
        Assert.That(e.Message, Does.Contain("does not implement the attention ops yet,"));
        Assert.That(ComputeDevice.Choose("cuda", [], Probe(Device, calls), Ilgpu(NoGpu), out string? note), Is.EqualTo(Choice.Cuda));
        Assert.That(note, Is.Null);
        Assert.Throws<NotSupportedException>(() => ComputeDevice.Choose("ilgpu", [], Probe(Device, calls), Ilgpu(NoGpu), out _));
        var unknown = Assert.Throws<ArgumentException>(() => ComputeDevice.Choose("gpu", [], Probe(Device, calls), Ilgpu(NoGpu), out _))!;
        Assert.That(unknown.Message, Is.EqualTo("--device must be one of auto, cpu, cuda, ilgpu, got 'gpu'."));
    }

    [Test]
    public void AutoFallsBackToIlgpuOnAGpuAndIlgpuNeedsOne()
    {
        var calls = new List<string>();
        Assert.That(ComputeDevice.Choose("auto", [], Probe(NoDriver, calls), Ilgpu(OpenClGpu, calls), out string? note), Is.EqualTo(Choice.Ilgpu));
        Assert.That(note, Is.EqualTo("auto chose ILGPU: ILGPU found Radeon RX 7900 (OpenCL) (CUDA is unavailable: the NVIDIA driver library (libcuda.so.1, libcuda.so) was not found)"));
        Assert.That(calls, Is.EqualTo(new[] { "probe", "ilgpu" }));
        calls.Clear();
        Assert.That(ComputeDevice.Choose("auto", [], Probe(Device, calls), Ilgpu(OpenClGpu, calls), out note), Is.EqualTo(Choice.Cuda));
        Assert.That(calls, Is.EqualTo(new[] { "probe" }), "CUDA first: ILGPU is not even probed");
        calls.Clear();
        Assert.That(ComputeDevice.Choose("ilgpu", [], Probe(Device, calls), Ilgpu(OpenClGpu, calls), out note), Is.EqualTo(Choice.Ilgpu));
        Assert.That(note, Is.Null);
        Assert.That(calls, Is.EqualTo(new[] { "ilgpu" }));
        var e = Assert.Throws<NotSupportedException>(() => ComputeDevice.Choose("ilgpu", [], Probe(Device, calls), Ilgpu(NoGpu), out _))!;
        Assert.That(e.Message, Is.EqualTo("--device ilgpu: ILGPU found no CUDA or OpenCL GPU (its CPU accelerator is a simulator for tests only); use --device cpu or auto."));
    }

    /// <summary>A fresh process without a driver: the probe's sentence, on one line, before any data is read.</summary>
    [Test]
    public void TrainOnCudaWithoutADriverFailsInOneLine()
    {
        if (CudaLibraries.DriverCandidates.Any(name => NativeLibrary.TryLoad(name, out _)))
            Assert.Ignore("An NVIDIA driver library is installed here; the driverless refusal is checked on machines without one.");
        var (code, output) = RunCli(null, "train", "--device", "cuda", "--data", "/nonexistent");
        Assert.That(code, Is.EqualTo(2), output);
        Assert.That(output.Trim(), Is.EqualTo("error: --device cuda: CUDA is unavailable: the NVIDIA driver library (libcuda.so.1, libcuda.so) was not found; use --device cpu or auto."));
    }

    /// <summary>A fresh process on a machine where ILGPU finds no GPU: `--device ilgpu` refuses in one line.</summary>
    [Test]
    public void TrainOnIlgpuWithoutAGpuFailsInOneLine()
    {
        if (Repa.Kernels.Ilgpu.IlgpuBackend.ProbeGpu(out string reason) != null)
            Assert.Ignore($"{reason}; the refusal without a GPU is checked on machines without one.");
        var (code, output) = RunCli(null, "train", "--device", "ilgpu", "--data", "/nonexistent");
        Assert.That(code, Is.EqualTo(2), output);
        Assert.That(output.Trim(), Is.EqualTo("error: --device ilgpu: ILGPU found no CUDA or OpenCL GPU (its CPU accelerator is a simulator for tests only); use --device cpu or auto."));
    }

    /// <summary>A fresh process on the emulated device (REPA_CUDA_EMULATOR): `train --device cuda` runs a real step on it.</summary>
    [Test, Category("EmulatedCuda")]
    public void TrainOnTheEmulatedDevice()
    {
        TrainerTests.Data(); // ignores the test when Fashion-MNIST is not installed
        if (!File.Exists(EmulatedCuda.LibraryPath))
            Assert.Fail($"The CUDA emulator {EmulatedCuda.LibraryPath} was not built: run scripts/setup.sh, then build again.");
        string folder = Path.Combine(Path.GetTempPath(), "repa-cuda-train-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (code, output) = RunCli(EmulatedCuda.LibraryPath, "train", "--device", "cuda", "--config", "SiT-T/4", "--steps", "1", "--batch", "2",
                "--encoder", "none", "--proj-coeff", "0", "--sample-grid", "false", "--out", folder);
            Assert.That(code, Is.EqualTo(0), output);
            Assert.That(output, Does.Contain("device: cuda: CUDA emulator").And.Contain("done: 1 steps"));
            Assert.That(output, Does.Contain("no peak listed for this device, so no MFU").And.Not.Contain("MFU "), "no guessed MFU on the emulator");
            Assert.That(File.Exists(Path.Combine(folder, "checkpoint.safetensors")), Is.True);
        }
        finally
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, true);
        }
    }

    /// <summary>`bench` on the emulated device: bf16 by default there, no MFU without a listed peak.</summary>
    [Test, Category("EmulatedCuda")]
    public void BenchOnTheEmulatedDevice()
    {
        if (!File.Exists(EmulatedCuda.LibraryPath))
            Assert.Fail($"The CUDA emulator {EmulatedCuda.LibraryPath} was not built: run scripts/setup.sh, then build again.");
        var (code, output) = RunCli(EmulatedCuda.LibraryPath, "bench", "--device", "cuda", "--config", "SiT-T/4", "--batch", "2", "--channels", "1",
            "--classes", "10", "--z-dim", "8", "--steps", "1", "--warmup", "1");
        Assert.That(code, Is.EqualTo(0), output);
        Assert.That(output, Does.Contain("device: cuda: CUDA emulator").And.Contain("bf16 mixed precision").And.Contain("median"));
        Assert.That(output, Does.Not.Contain("MFU "), "no guessed MFU on the emulator");
    }

    /// <summary>Runs the repa CLI (Repa.Runtime.dll beside the tests) in a new process; stdout and stderr together.</summary>
    private static (int Code, string Output) RunCli(string? emulator, params string[] args)
    {
        string host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet";
        var info = new ProcessStartInfo(host)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Repa.Runtime.dll"));
        foreach (string a in args) info.ArgumentList.Add(a);
        info.Environment.Remove(ComputeDevice.EmulatorVariable);
        if (emulator != null) info.Environment[ComputeDevice.EmulatorVariable] = emulator;
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(1)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"repa {string.Join(' ', args)} did not finish within a minute.");
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }
}
