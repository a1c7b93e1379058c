using System.Text;
using NUnit.Framework;
using Repa.Kernels.Cuda;
using Repa.Kernels.Cuda.Native;

namespace Repa.Tests.Cuda;

/// <summary>
/// A minimal, test-only launcher for the kernels of kernels/*.cu on the CUDA emulator, through the product's own
/// pieces: <see cref="CudaLibraries.UseEmulator"/> binds "repa_cuda" to librepa_cuda_emu.so (next to the test assembly),
/// <see cref="KernelCompiler"/> makes the PTX with the real NVRTC (compute_80), and the <see cref="CudaDriver"/> bindings
/// load it (cuModuleLoadData) and launch (cuLaunchKernel), exactly as the CUDA backend will. It exists so that the
/// kernel families can be held against the CPU backend before CudaBackend wires them; once the backend's own
/// EmulatedCuda tests cover a family, they supersede this harness for it. Keep it small: memory, modules, launches.
/// </summary>
internal sealed unsafe class KernelHarness
{
    /// <summary>The emulator library's file name (built next to the test assembly by CudaEmulator.targets).</summary>
    public const string EmulatorFileName = "librepa_cuda_emu.so";

    private static readonly Lock Gate = new();
    private static KernelHarness? shared;

    private readonly nint context;
    private readonly KernelCompiler compiler = new();
    private readonly Dictionary<string, nint> modules = [];
    private readonly Dictionary<(string File, string Kernel), nint> functions = [];
    private readonly List<ulong> allocations = [];

    private KernelHarness()
    {
        CudaDriver.Check(CudaDriver.cuInit(0));
        int device;
        CudaDriver.Check(CudaDriver.cuDeviceGet(&device, 0));
        nint created;
        CudaDriver.Check(CudaDriver.cuCtxCreate_v2(&created, 0, device));
        context = created;
    }

    /// <summary>
    /// The process-wide harness (one emulated context), made current on the calling thread. Fails the test when the
    /// emulator was not built, and ignores it (with the reason) when this process already bound a real driver.
    /// </summary>
    public static KernelHarness Open()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("The CUDA emulator is built for Linux only.");
        lock (Gate)
        {
            if (shared == null)
            {
                string path = Path.Combine(AppContext.BaseDirectory, EmulatorFileName);
                if (!File.Exists(path))
                    Assert.Fail($"The CUDA emulator {path} was not built (building it needs g++ and cmake): run scripts/setup.sh, then build again.");
                try
                {
                    CudaLibraries.UseEmulator(path);
                }
                catch (InvalidOperationException e)
                {
                    Assert.Ignore($"The kernels run on the emulator only, and this process already uses a real CUDA driver: {e.Message}");
                }
                shared = new KernelHarness();
            }
        }
        CudaDriver.Check(CudaDriver.cuCtxSetCurrent(shared.context));
        return shared;
    }

    /// <summary>Device memory of <paramref name="bytes"/> bytes, zero-filled; freed by <see cref="FreeAll"/>.</summary>
    public ulong Alloc(long bytes)
    {
        ulong pointer;
        CudaDriver.Check(CudaDriver.cuMemAlloc_v2(&pointer, (nuint)Math.Max(bytes, 1)));
        allocations.Add(pointer);
        CudaDriver.Check(CudaDriver.cuMemsetD8_v2(pointer, 0, (nuint)Math.Max(bytes, 1)));
        return pointer;
    }

    /// <summary>A device copy of <paramref name="data"/>.</summary>
    public ulong Upload<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        ulong pointer = Alloc((long)data.Length * sizeof(T));
        fixed (T* source = data) CudaDriver.Check(CudaDriver.cuMemcpyHtoD_v2(pointer, source, (nuint)(data.Length * sizeof(T))));
        return pointer;
    }

    /// <summary><paramref name="count"/> elements from device memory.</summary>
    public T[] Download<T>(ulong pointer, int count) where T : unmanaged
    {
        var result = new T[count];
        fixed (T* destination = result) CudaDriver.Check(CudaDriver.cuMemcpyDtoH_v2(destination, pointer, (nuint)(count * sizeof(T))));
        return result;
    }

    /// <summary>Frees everything allocated since the last call (call it in [TearDown]).</summary>
    public void FreeAll()
    {
        foreach (ulong pointer in allocations) CudaDriver.Check(CudaDriver.cuMemFree_v2(pointer));
        allocations.Clear();
    }

    /// <summary>
    /// Launches kernels/<paramref name="file"/>'s <paramref name="kernel"/>. Arguments in the kernel's order: ulong
    /// (a device pointer), null (a null pointer), int, long (long long), float or double.
    /// </summary>
    public void Launch(string file, string kernel, (int X, int Y, int Z) grid, (int X, int Y, int Z) block, params object?[] args)
    {
        nint function = Function(file, kernel);
        var slots = stackalloc ulong[Math.Max(args.Length, 1)];
        var pointers = stackalloc void*[Math.Max(args.Length, 1)];
        for (int i = 0; i < args.Length; i++)
        {
            slots[i] = 0;
            var slot = (byte*)(slots + i);
            switch (args[i])
            {
                case null: break; // a null pointer
                case ulong p: *(ulong*)slot = p; break;
                case int n: *(int*)slot = n; break;
                case long n: *(long*)slot = n; break;
                case float f: *(float*)slot = f; break;
                case double d: *(double*)slot = d; break;
                default: throw new ArgumentException($"{kernel}: argument {i} has the unsupported type {args[i]!.GetType().Name}.");
            }
            pointers[i] = slot;
        }
        CudaDriver.Check(CudaDriver.cuLaunchKernel(function, (uint)grid.X, (uint)grid.Y, (uint)grid.Z, (uint)block.X, (uint)block.Y,
            (uint)block.Z, 0, 0, pointers, null));
    }

    private nint Function(string file, string kernel)
    {
        if (functions.TryGetValue((file, kernel), out nint function)) return function;
        if (!modules.TryGetValue(file, out nint module))
        {
            var compiled = compiler.Compile(file, "compute_80");
            byte[] image = Encoding.UTF8.GetBytes(compiled.Ptx + "\0");
            fixed (byte* ptx = image) CudaDriver.Check(CudaDriver.cuModuleLoadData(&module, ptx));
            modules[file] = module;
        }
        CudaDriver.Check(CudaDriver.cuModuleGetFunction(&function, module, kernel));
        return functions[(file, kernel)] = function;
    }
}
