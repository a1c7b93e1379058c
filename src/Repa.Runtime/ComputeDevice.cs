using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Kernels.Cuda;
using Repa.Kernels.Ilgpu;

namespace Repa.Runtime;

/// <summary>
/// The compute devices a user can name (`--device`): auto, cpu, cuda, ilgpu. cuda opens <see cref="CudaBackend"/> when
/// <see cref="CudaLibraries.Probe"/> finds a usable device; but while the CUDA backend still lacks op families that
/// training and sampling need (<see cref="CudaBackend.MissingOpFamilies"/>), naming it fails up front with one sentence
/// saying which. ilgpu opens <see cref="IlgpuBackend"/> on a CUDA or OpenCL GPU that ILGPU finds (its CPU accelerator
/// is a simulator for tests, never chosen here). auto takes CUDA when it is usable, else ILGPU on a GPU, else the CPU,
/// and its note says what it chose and why.
/// </summary>
public static class ComputeDevice
{
    /// <summary>Every accepted device name, the default first.</summary>
    public static readonly string[] Names = ["auto", "cpu", "cuda", "ilgpu"];

    /// <summary>
    /// For development and tests only: the path of librepa_cuda_emu.so. When set, cuda (and auto) probe and open the CPU
    /// emulator instead of the NVIDIA driver, so the device plumbing can be exercised without a GPU.
    /// </summary>
    public const string EmulatorVariable = "REPA_CUDA_EMULATOR";

    /// <summary>The backend a device name resolves to.</summary>
    internal enum Choice
    {
        Cpu,
        Cuda,
        Ilgpu,
    }

    /// <summary>What ILGPU finds: a GPU (CUDA or OpenCL accelerator) or not, and a sentence saying which.</summary>
    internal readonly record struct IlgpuProbe(bool IsAvailable, string Message);

    /// <summary>
    /// Opens the backend named <paramref name="device"/> with <paramref name="threads"/> CPU threads (0 = all cores).
    /// <paramref name="note"/> says what "auto" chose and why (null for an explicit device). Throws
    /// <see cref="NotSupportedException"/> with one sentence when the device cannot run Repa (cuda without a usable
    /// device or with op families still missing, ilgpu without a GPU) and <see cref="ArgumentException"/> for unknown names.
    /// </summary>
    public static IBackend Open(string device, int threads, out string? note)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (threads < 0) throw new ArgumentException($"the CPU thread count must be >= 0 (0 = all cores), got {threads}.", nameof(threads));
        switch (Choose(device, out note))
        {
            case Choice.Cuda:
            {
                string? emulator = EmulatorPath();
                return emulator != null ? CudaBackend.CreateEmulated(emulator) : CudaBackend.Create();
            }
            case Choice.Ilgpu:
                return IlgpuBackend.Create(preferGpu: true);
            default:
                return new CpuBackend(threads == 0 ? Environment.ProcessorCount : threads);
        }
    }

    /// <summary>
    /// The peak for the MFU figure and how it was found: a GPU's dense peak from <see cref="DevicePeaks"/> for the GEMM
    /// inputs' dtype (bf16 tensor cores under mixed precision, else fp32 CUDA cores; 0 when the device is not listed),
    /// the CPU's measured fp32 FMA peak on <paramref name="threads"/> threads; none (0) for other backends (ILGPU).
    /// </summary>
    public static (double Gflops, string Text) Peak(IBackend backend, DType computeType, int threads)
    {
        string precision = computeType == DType.BF16 ? "bf16 mixed precision" : "fp32";
        if (backend is CudaBackend gpu)
        {
            double peak = DevicePeaks.Gflops(gpu.DeviceName, computeType) ?? 0;
            return (peak, peak > 0 ? $"{precision}, {computeType.Name()} peak {peak:F0} GFLOP/s (table)" : $"{precision}, no peak listed for this device, so no MFU");
        }
        if (backend is not CpuBackend) return (0, $"{precision}, no peak known for {backend.Name} devices, so no MFU");
        double measured = FmaPeak.Measure(threads, 0.1);
        return (measured, $"{precision}, measured fp32 FMA peak {measured:F0} GFLOP/s");
    }

    /// <summary>Validates a device name before any expensive work (probing CUDA where it matters); returns the note of
    /// <see cref="Open"/>.</summary>
    public static string? Check(string device)
    {
        ArgumentNullException.ThrowIfNull(device);
        Choose(device, out string? note);
        return note;
    }

    private static Choice Choose(string device, out string? note) =>
        Choose(device, CudaBackend.MissingOpFamilies, ProbeCuda, ProbeIlgpu, out note);

    private static IlgpuProbe ProbeIlgpu()
    {
        string? gpu = IlgpuBackend.ProbeGpu(out string reason);
        return new IlgpuProbe(gpu != null, reason);
    }

    /// <summary>The emulator library when <see cref="EmulatorVariable"/> is set, or when this process chose it already
    /// (CUDA's libraries are bound once per process).</summary>
    private static string? EmulatorPath() =>
        Environment.GetEnvironmentVariable(EmulatorVariable) is { Length: > 0 } path ? path : null;

    private static CudaProbeResult ProbeCuda()
    {
        if (Environment.GetEnvironmentVariable(EmulatorVariable) is { Length: > 0 } path) CudaLibraries.UseEmulator(path);
        // The emulator is for tests: a process that bound it (a test run) must not have auto or cuda pick it silently.
        else if (CudaLibraries.IsEmulated)
            return new CudaProbeResult(false, $"CUDA is unavailable: this process bound the CUDA emulator, which only {EmulatorVariable} selects.", null, 0, 0);
        return CudaLibraries.Probe();
    }

    /// <summary>
    /// The decision, given the CUDA backend's missing op families and the probes (each called only when the answer
    /// depends on it): cuda needs a usable device and a complete backend; ilgpu a GPU that ILGPU finds; auto takes CUDA
    /// when both hold, else ILGPU on a GPU, else the CPU, with a note saying why.
    /// </summary>
    internal static Choice Choose(string device, IReadOnlyList<string> missingFamilies, Func<CudaProbeResult> probe,
        Func<IlgpuProbe> probeIlgpu, out string? note)
    {
        note = null;
        switch (device)
        {
            case "cpu":
                return Choice.Cpu;
            case "cuda":
            {
                var found = probe();
                if (!found.IsAvailable)
                    throw new NotSupportedException($"--device cuda: {found.Message.TrimEnd('.')}; use --device cpu or auto.");
                if (missingFamilies.Count > 0)
                    throw new NotSupportedException($"--device cuda: the CUDA backend does not implement the {Join(missingFamilies)} ops yet, which training and sampling need; use --device cpu or auto.");
                return Choice.Cuda;
            }
            case "auto":
            {
                // No CUDA probe while the backend is incomplete: probing would bind the driver for nothing.
                string why;
                if (missingFamilies.Count > 0) why = $"the CUDA backend does not implement the {Join(missingFamilies)} ops yet";
                else
                {
                    var found = probe();
                    if (found.IsAvailable)
                    {
                        note = $"auto chose CUDA: {found.Message.TrimEnd('.')}";
                        return Choice.Cuda;
                    }
                    why = found.Message.TrimEnd('.');
                }
                var gpu = probeIlgpu();
                if (gpu.IsAvailable)
                {
                    note = $"auto chose ILGPU: {gpu.Message.TrimEnd('.')} ({why})";
                    return Choice.Ilgpu;
                }
                note = $"auto chose the CPU: {why}; {gpu.Message.TrimEnd('.')}";
                return Choice.Cpu;
            }
            case "ilgpu":
            {
                var gpu = probeIlgpu();
                if (!gpu.IsAvailable)
                    throw new NotSupportedException($"--device ilgpu: {gpu.Message.TrimEnd('.')} (its CPU accelerator is a simulator for tests only); use --device cpu or auto.");
                return Choice.Ilgpu;
            }
            default:
                throw new ArgumentException($"--device must be one of {string.Join(", ", Names)}, got '{device}'.");
        }
    }

    /// <summary>"a", "a and b", "a, b and c".</summary>
    private static string Join(IReadOnlyList<string> items) =>
        items.Count == 1 ? items[0] : $"{string.Join(", ", items.Take(items.Count - 1))} and {items[^1]}";
}
