using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Repa.Kernels.Cuda.Native;

/// <summary>
/// The CUDA driver API subset the backend uses (cuda.h, 64-bit ABI), bound to the logical library "repa_cuda", which
/// <see cref="CudaLibraries"/> maps to libcuda.so.1 or to the emulator. Handles are opaque pointers (nint), device
/// pointers are CUdeviceptr (ulong), CUdevice is an ordinal. Every call returns a <see cref="CudaResult"/>; wrap it in
/// <see cref="Check"/> to turn a failure into a <see cref="CudaException"/> naming the call.
/// </summary>
internal static unsafe partial class CudaDriver
{
    private const string Lib = CudaLibraries.Driver;

    static CudaDriver() => CudaLibraries.EnsureResolver();

    // CUdevice_attribute values used by the backend.
    public const int AttributeMaxThreadsPerBlock = 1;
    public const int AttributeWarpSize = 10;
    public const int AttributeMultiprocessorCount = 16;
    public const int AttributeComputeCapabilityMajor = 75;
    public const int AttributeComputeCapabilityMinor = 76;
    public const int AttributeMaxSharedMemoryPerBlockOptin = 97;

    // CUfunction_attribute values.
    public const int FunctionAttributeNumRegisters = 4;
    public const int FunctionAttributeMaxDynamicSharedSizeBytes = 8;

    // CUstreamCaptureMode.
    public const int StreamCaptureModeGlobal = 0;
    public const int StreamCaptureModeThreadLocal = 1;
    public const int StreamCaptureModeRelaxed = 2;

    // Flags.
    public const uint StreamNonBlocking = 1;
    public const uint EventDefault = 0;
    public const uint EventDisableTiming = 2;

    /// <summary>Throws a <see cref="CudaException"/> ("cuMemAlloc_v2 failed with CUDA_ERROR_OUT_OF_MEMORY (out of
    /// memory).") when <paramref name="result"/> is not CUDA_SUCCESS; the call's name comes from the expression.</summary>
    public static void Check(CudaResult result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result == CudaResult.Success) return;
        string name = CallName(call), status = result.Name();
        string? description = null;
        try
        {
            byte* text;
            if (cuGetErrorString(result, &text) == CudaResult.Success && text != null)
                description = Marshal.PtrToStringUTF8((nint)text);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            // The message still names the call and the status.
        }
        string detail = string.IsNullOrEmpty(description) || description == status ? "" : $" ({description.TrimEnd('.')})";
        throw new CudaException(name, status, $"{name} failed with {status}{detail}.");
    }

    /// <summary>"CudaDriver.cuMemAlloc_v2(&amp;p, n)" -> "cuMemAlloc_v2".</summary>
    internal static string CallName(string expression)
    {
        int paren = expression.IndexOf('(');
        string head = paren < 0 ? expression : expression[..paren];
        int dot = head.LastIndexOf('.');
        return (dot < 0 ? head : head[(dot + 1)..]).Trim();
    }

    [LibraryImport(Lib)] public static partial CudaResult cuInit(uint flags);
    [LibraryImport(Lib)] public static partial CudaResult cuDriverGetVersion(int* version);
    [LibraryImport(Lib)] public static partial CudaResult cuGetErrorString(CudaResult error, byte** text);

    [LibraryImport(Lib)] public static partial CudaResult cuDeviceGet(int* device, int ordinal);
    [LibraryImport(Lib)] public static partial CudaResult cuDeviceGetCount(int* count);
    [LibraryImport(Lib)] public static partial CudaResult cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(Lib)] public static partial CudaResult cuDeviceGetAttribute(int* value, int attribute, int device);
    [LibraryImport(Lib)] public static partial CudaResult cuDeviceTotalMem_v2(nuint* bytes, int device);

    [LibraryImport(Lib)] public static partial CudaResult cuCtxCreate_v2(nint* context, uint flags, int device);
    [LibraryImport(Lib)] public static partial CudaResult cuCtxDestroy_v2(nint context);
    [LibraryImport(Lib)] public static partial CudaResult cuCtxSetCurrent(nint context);
    [LibraryImport(Lib)] public static partial CudaResult cuCtxSynchronize();

    [LibraryImport(Lib)] public static partial CudaResult cuMemAlloc_v2(ulong* pointer, nuint bytes);
    [LibraryImport(Lib)] public static partial CudaResult cuMemFree_v2(ulong pointer);
    [LibraryImport(Lib)] public static partial CudaResult cuMemcpyHtoD_v2(ulong destination, void* source, nuint bytes);
    [LibraryImport(Lib)] public static partial CudaResult cuMemcpyDtoH_v2(void* destination, ulong source, nuint bytes);
    [LibraryImport(Lib)] public static partial CudaResult cuMemcpyDtoD_v2(ulong destination, ulong source, nuint bytes);
    [LibraryImport(Lib)] public static partial CudaResult cuMemsetD8_v2(ulong destination, byte value, nuint count);
    [LibraryImport(Lib)] public static partial CudaResult cuMemsetD32_v2(ulong destination, uint value, nuint count);

    // Stream-ordered forms (the backend's own stream; capturable, unlike the synchronous calls on the legacy stream).
    [LibraryImport(Lib)] public static partial CudaResult cuMemcpyHtoDAsync_v2(ulong destination, void* source, nuint bytes, nint stream);
    [LibraryImport(Lib)] public static partial CudaResult cuMemcpyDtoHAsync_v2(void* destination, ulong source, nuint bytes, nint stream);
    [LibraryImport(Lib)] public static partial CudaResult cuMemcpyDtoDAsync_v2(ulong destination, ulong source, nuint bytes, nint stream);
    [LibraryImport(Lib)] public static partial CudaResult cuMemsetD8Async(ulong destination, byte value, nuint count, nint stream);
    [LibraryImport(Lib)] public static partial CudaResult cuMemsetD32Async(ulong destination, uint value, nuint count, nint stream);

    [LibraryImport(Lib)] public static partial CudaResult cuStreamCreate(nint* stream, uint flags);
    [LibraryImport(Lib)] public static partial CudaResult cuStreamDestroy_v2(nint stream);
    [LibraryImport(Lib)] public static partial CudaResult cuStreamSynchronize(nint stream);

    [LibraryImport(Lib)] public static partial CudaResult cuEventCreate(nint* @event, uint flags);
    [LibraryImport(Lib)] public static partial CudaResult cuEventRecord(nint @event, nint stream);
    [LibraryImport(Lib)] public static partial CudaResult cuEventSynchronize(nint @event);
    [LibraryImport(Lib)] public static partial CudaResult cuEventElapsedTime(float* milliseconds, nint start, nint end);
    [LibraryImport(Lib)] public static partial CudaResult cuEventDestroy_v2(nint @event);

    /// <summary>Loads a module from a NUL-terminated PTX string (or a cubin image).</summary>
    [LibraryImport(Lib)] public static partial CudaResult cuModuleLoadData(nint* module, void* image);
    [LibraryImport(Lib)] public static partial CudaResult cuModuleUnload(nint module);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial CudaResult cuModuleGetFunction(nint* function, nint module, string name);
    [LibraryImport(Lib)] public static partial CudaResult cuFuncGetAttribute(int* value, int attribute, nint function);
    [LibraryImport(Lib)] public static partial CudaResult cuFuncSetAttribute(nint function, int attribute, int value);

    /// <summary>kernelParams[i] points at the i-th kernel argument's value; extra is null.</summary>
    [LibraryImport(Lib)]
    public static partial CudaResult cuLaunchKernel(nint function, uint gridX, uint gridY, uint gridZ,
        uint blockX, uint blockY, uint blockZ, uint sharedMemoryBytes, nint stream, void** kernelParams, void** extra);

    // CUDA graphs: capture a stream's launches once, replay them with one launch.
    [LibraryImport(Lib)] public static partial CudaResult cuStreamBeginCapture_v2(nint stream, int mode);
    [LibraryImport(Lib)] public static partial CudaResult cuStreamEndCapture(nint stream, nint* graph);

    /// <summary>status: 0 not capturing, 1 capturing, 2 capturing but invalidated (CUstreamCaptureStatus).</summary>
    [LibraryImport(Lib)] public static partial CudaResult cuStreamIsCapturing(nint stream, int* status);
    [LibraryImport(Lib)] public static partial CudaResult cuGraphInstantiateWithFlags(nint* graphExec, nint graph, ulong flags);
    [LibraryImport(Lib)] public static partial CudaResult cuGraphLaunch(nint graphExec, nint stream);
    [LibraryImport(Lib)] public static partial CudaResult cuGraphExecDestroy(nint graphExec);
    [LibraryImport(Lib)] public static partial CudaResult cuGraphDestroy(nint graph);
}
