using System.Reflection;
using System.Runtime.InteropServices;
using Repa.Kernels.Cuda.Native;

namespace Repa.Kernels.Cuda;

/// <summary>What <see cref="CudaLibraries.Probe"/> found: a usable device, or one sentence saying why there is none.</summary>
/// <param name="IsAvailable">True when device 0 can run Repa's kernels.</param>
/// <param name="Message">One sentence: the device (name, compute capability, memory, driver) or why CUDA is unavailable.</param>
/// <param name="DeviceName">Device 0's name, when the driver answered.</param>
/// <param name="ComputeCapability">Device 0's compute capability as major * 10 + minor (e.g. 90), or 0.</param>
/// <param name="DriverVersion">cuDriverGetVersion (e.g. 12040), or 0.</param>
public sealed record CudaProbeResult(bool IsAvailable, string Message, string? DeviceName, int ComputeCapability, int DriverVersion);

/// <summary>
/// Finds the CUDA libraries and binds the logical library names of the native bindings to them, once per process:
/// "repa_cuda" (driver API: libcuda.so.1), "repa_cublas" / "repa_cublaslt" (libcublas[Lt].so.{13,12,11}) and
/// "repa_nvrtc" (libnvrtc.so.{13,12,11.2,11.1,11.0}). <see cref="UseEmulator"/> points "repa_cuda" and
/// "repa_cublas" at the kernel emulator instead (it exports the same C symbols); NVRTC is always the real library.
/// The choice is fixed by the first call into a library; choosing differently afterwards throws.
/// </summary>
public static class CudaLibraries
{
    /// <summary>Logical name of the driver API library in the bindings.</summary>
    public const string Driver = "repa_cuda";

    /// <summary>Logical name of cuBLAS in the bindings.</summary>
    public const string Cublas = "repa_cublas";

    /// <summary>Logical name of cuBLASLt in the bindings.</summary>
    public const string CublasLt = "repa_cublaslt";

    /// <summary>Logical name of NVRTC in the bindings.</summary>
    public const string Nvrtc = "repa_nvrtc";

    /// <summary>The compute capability Repa's kernels are compiled for at least (compute_80: Ampere).</summary>
    public const int MinimumComputeCapability = 80;

    private static readonly Lock Gate = new();
    private static readonly Dictionary<string, (nint Handle, string Path)> Loaded = [];
    private static string? emulatorPath;

    static CudaLibraries() =>
        // One resolver per assembly: it answers only for the repa_* names and leaves every other name to the default.
        NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);

    /// <summary>Makes sure the resolver is registered (the bindings' static constructors call this).</summary>
    internal static void EnsureResolver() { }

    /// <summary>File names tried for the driver API, in order.</summary>
    public static IReadOnlyList<string> DriverCandidates { get; } =
        OperatingSystem.IsWindows() ? ["nvcuda.dll"] : ["libcuda.so.1", "libcuda.so"];

    /// <summary>File names tried for cuBLAS, newest major version first.</summary>
    public static IReadOnlyList<string> CublasCandidates { get; } =
        OperatingSystem.IsWindows() ? ["cublas64_13.dll", "cublas64_12.dll", "cublas64_11.dll"]
        : ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"];

    /// <summary>File names tried for cuBLASLt, newest major version first (the one matching cuBLAS's is tried first).</summary>
    public static IReadOnlyList<string> CublasLtCandidates { get; } =
        OperatingSystem.IsWindows() ? ["cublasLt64_13.dll", "cublasLt64_12.dll", "cublasLt64_11.dll"]
        : ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"];

    /// <summary>File names tried for NVRTC, newest first. Debian's libnvrtc11.2 package (NVRTC 11.8) installs
    /// libnvrtc.so.11.2, with libnvrtc-builtins.so.11.8 beside it.</summary>
    public static IReadOnlyList<string> NvrtcCandidates { get; } =
        OperatingSystem.IsWindows() ? ["nvrtc64_130_0.dll", "nvrtc64_120_0.dll", "nvrtc64_112_0.dll", "nvrtc64_111_0.dll", "nvrtc64_110_0.dll"]
        : ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so.11.1", "libnvrtc.so.11.0", "libnvrtc.so"];

    /// <summary>Folders tried after the loader's own search: the CUDA toolkit's usual homes.</summary>
    private static IEnumerable<string> ExtraDirectories()
    {
        foreach (var variable in new[] { "CUDA_PATH", "CUDA_HOME" })
            if (Environment.GetEnvironmentVariable(variable) is { Length: > 0 } root)
            {
                yield return Path.Combine(root, OperatingSystem.IsWindows() ? "bin" : "lib64");
                yield return Path.Combine(root, "lib");
            }
        if (!OperatingSystem.IsWindows())
        {
            yield return "/usr/local/cuda/lib64";
            yield return "/usr/lib/wsl/lib"; // WSL's libcuda.so.1
        }
    }

    /// <summary>The candidates of a logical name, as tried.</summary>
    public static IReadOnlyList<string> Candidates(string logicalName) => logicalName switch
    {
        Driver => DriverCandidates,
        Cublas => CublasCandidates,
        CublasLt => CublasLtCandidates,
        Nvrtc => NvrtcCandidates,
        _ => throw new ArgumentException($"'{logicalName}' is not one of Repa's CUDA library names ({Driver}, {Cublas}, {CublasLt}, {Nvrtc}).", nameof(logicalName)),
    };

    /// <summary>
    /// Points "repa_cuda" and "repa_cublas" at the kernel emulator (librepa_cuda_emu.so) for this process. Call it before
    /// the first CUDA call; calling it again with the same file does nothing.
    /// </summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidOperationException">A real CUDA library or another emulator was bound already.</exception>
    public static void UseEmulator(string libraryPath)
    {
        string full = Path.GetFullPath(libraryPath);
        if (!File.Exists(full))
            throw new FileNotFoundException($"The CUDA emulator library {full} does not exist; build it with cmake (see docs/notes/cuda.md).", full);
        lock (Gate)
        {
            if (emulatorPath == full) return;
            foreach (var name in new[] { Driver, Cublas })
                if (Loaded.TryGetValue(name, out var bound))
                    throw new InvalidOperationException($"{name} is already bound to {bound.Path} in this process; choose the emulator before the first CUDA call.");
            emulatorPath = full;
        }
    }

    /// <summary>True when "repa_cuda" and "repa_cublas" go to the emulator.</summary>
    public static bool IsEmulated
    {
        get { lock (Gate) return emulatorPath != null; }
    }

    /// <summary>The file a logical name is bound to, or null when it has not been loaded yet.</summary>
    public static string? BoundPath(string logicalName)
    {
        lock (Gate) return Loaded.TryGetValue(logicalName, out var bound) ? bound.Path : null;
    }

    /// <summary>
    /// Loads (once) the library behind a logical name. False with one sentence in <paramref name="failure"/> when none
    /// of its candidates loads.
    /// </summary>
    public static bool TryLoad(string logicalName, out string path, out string failure)
    {
        var candidates = Candidates(logicalName);
        lock (Gate)
        {
            failure = "";
            if (Loaded.TryGetValue(logicalName, out var bound))
            {
                path = bound.Path;
                return true;
            }
            if (emulatorPath != null && logicalName is Driver or Cublas or CublasLt)
            {
                if (!NativeLibrary.TryLoad(emulatorPath, out nint emu))
                {
                    path = "";
                    failure = $"The CUDA emulator library {emulatorPath} could not be loaded; rebuild it with cmake (see docs/notes/cuda.md).";
                    return false;
                }
                Loaded[logicalName] = (emu, emulatorPath);
                path = emulatorPath;
                return true;
            }
            foreach (var file in Ordered(logicalName, candidates))
            {
                if (TryLoadFile(file, out nint handle, out string resolved))
                {
                    Loaded[logicalName] = (handle, resolved);
                    path = resolved;
                    return true;
                }
            }
            path = "";
            failure = logicalName switch
            {
                Driver => $"the NVIDIA driver library ({string.Join(", ", candidates)}) was not found",
                Nvrtc => $"NVRTC ({string.Join(", ", candidates)}) was not found: run scripts/install-cuda-tools.sh or install the CUDA toolkit",
                _ => $"{(logicalName == Cublas ? "cuBLAS" : "cuBLASLt")} ({string.Join(", ", candidates)}) was not found: install the CUDA toolkit's libraries",
            };
            return false;
        }
    }

    // cuBLASLt from the same CUDA major version as the cuBLAS already loaded comes first.
    private static IEnumerable<string> Ordered(string logicalName, IReadOnlyList<string> candidates)
    {
        if (logicalName == CublasLt && Loaded.TryGetValue(Cublas, out var cublas) && cublas.Path != emulatorPath)
        {
            string suffix = Path.GetFileName(cublas.Path).Replace("cublas", "", StringComparison.Ordinal);
            var match = candidates.FirstOrDefault(c => c.Replace("cublasLt", "", StringComparison.Ordinal) == suffix);
            if (match != null) return candidates.Where(c => c != match).Prepend(match);
        }
        return candidates;
    }

    private static bool TryLoadFile(string file, out nint handle, out string resolved)
    {
        resolved = file;
        if (NativeLibrary.TryLoad(file, out handle)) return true;
        foreach (var directory in ExtraDirectories())
        {
            string path = Path.Combine(directory, file);
            if (File.Exists(path) && NativeLibrary.TryLoad(path, out handle))
            {
                resolved = path;
                return true;
            }
        }
        return false;
    }

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName is not (Driver or Cublas or CublasLt or Nvrtc)) return 0;
        if (TryLoad(libraryName, out _, out string failure))
        {
            lock (Gate) return Loaded[libraryName].Handle;
        }
        throw new DllNotFoundException(char.ToUpperInvariant(failure[0]) + failure[1..] + ".");
    }

    /// <summary>
    /// Checks whether CUDA device 0 can be used: the driver library loads, cuInit succeeds, a device exists and has
    /// compute capability 8.0 or newer. Never throws; <see cref="CudaProbeResult.Message"/> is one sentence for
    /// `--device auto` (why it falls back to the CPU) and `--device cuda` (the error).
    /// </summary>
    public static unsafe CudaProbeResult Probe()
    {
        if (!TryLoad(Driver, out _, out string failure))
            return new(false, $"CUDA is unavailable: {failure}.", null, 0, 0);
        try
        {
            var init = CudaDriver.cuInit(0);
            if (init == CudaResult.NoDevice)
                return new(false, "CUDA is unavailable: the NVIDIA driver found no CUDA device (cuInit returned CUDA_ERROR_NO_DEVICE).", null, 0, 0);
            if (init != CudaResult.Success)
                return new(false, $"CUDA is unavailable: the NVIDIA driver failed to initialise (cuInit returned {init.Name()}).", null, 0, 0);
            int version = 0, count = 0, device = 0, major = 0, minor = 0;
            CudaDriver.cuDriverGetVersion(&version);
            var counted = CudaDriver.cuDeviceGetCount(&count);
            if (counted != CudaResult.Success)
                return new(false, $"CUDA is unavailable: cuDeviceGetCount returned {counted.Name()}.", null, 0, version);
            if (count == 0)
                return new(false, "CUDA is unavailable: the NVIDIA driver reports no CUDA device.", null, 0, version);
            CudaDriver.Check(CudaDriver.cuDeviceGet(&device, 0));
            byte* name = stackalloc byte[256];
            CudaDriver.Check(CudaDriver.cuDeviceGetName(name, 256, device));
            string deviceName = Marshal.PtrToStringUTF8((nint)name) ?? "device 0";
            CudaDriver.Check(CudaDriver.cuDeviceGetAttribute(&major, CudaDriver.AttributeComputeCapabilityMajor, device));
            CudaDriver.Check(CudaDriver.cuDeviceGetAttribute(&minor, CudaDriver.AttributeComputeCapabilityMinor, device));
            nuint bytes = 0;
            CudaDriver.Check(CudaDriver.cuDeviceTotalMem_v2(&bytes, device));
            int capability = major * 10 + minor;
            if (capability < MinimumComputeCapability)
                return new(false, $"CUDA is unavailable: {deviceName} has compute capability {major}.{minor} and Repa's kernels need 8.0 (Ampere) or newer.",
                    deviceName, capability, version);
            return new(true, $"CUDA device 0: {deviceName} (compute capability {major}.{minor}, {bytes / (double)(1L << 30):F1} GiB, driver API {version / 1000}.{version % 1000 / 10}{(IsEmulated ? ", emulated" : "")}).",
                deviceName, capability, version);
        }
        catch (CudaException e)
        {
            return new(false, $"CUDA is unavailable: {e.Message.TrimEnd('.')}.", null, 0, 0);
        }
        catch (EntryPointNotFoundException e)
        {
            return new(false, $"CUDA is unavailable: the driver library lacks a function Repa needs ({e.Message.TrimEnd('.')}).", null, 0, 0);
        }
    }
}
