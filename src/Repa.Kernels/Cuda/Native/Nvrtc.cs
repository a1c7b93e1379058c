using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Repa.Kernels.Cuda.Native;

/// <summary>
/// NVRTC (nvrtc.h), bound to the logical library "repa_nvrtc", which <see cref="CudaLibraries"/> maps to the newest
/// libnvrtc.so.{13,12,11.2,11.1,11.0} present. NVRTC is always the real library, also when the device is emulated.
/// Strings are passed as NUL-terminated UTF-8 (byte*).
/// </summary>
internal static unsafe partial class Nvrtc
{
    private const string Lib = CudaLibraries.Nvrtc;

    static Nvrtc() => CudaLibraries.EnsureResolver();

    /// <summary>Throws a <see cref="CudaException"/> naming the call when <paramref name="result"/> is not success.</summary>
    public static void Check(NvrtcResult result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result == NvrtcResult.Success) return;
        string name = CudaDriver.CallName(call);
        throw new CudaException(name, result.Name(), $"{name} failed with {result.Name()}.");
    }

    [LibraryImport(Lib)] public static partial NvrtcResult nvrtcVersion(int* major, int* minor);
    [LibraryImport(Lib)] public static partial byte* nvrtcGetErrorString(NvrtcResult result);

    [LibraryImport(Lib)]
    public static partial NvrtcResult nvrtcCreateProgram(nint* program, byte* source, byte* name, int headerCount,
        byte** headers, byte** includeNames);
    [LibraryImport(Lib)] public static partial NvrtcResult nvrtcDestroyProgram(nint* program);
    [LibraryImport(Lib)] public static partial NvrtcResult nvrtcCompileProgram(nint program, int optionCount, byte** options);

    [LibraryImport(Lib)] public static partial NvrtcResult nvrtcGetProgramLogSize(nint program, nuint* size);
    [LibraryImport(Lib)] public static partial NvrtcResult nvrtcGetProgramLog(nint program, byte* log);
    [LibraryImport(Lib)] public static partial NvrtcResult nvrtcGetPTXSize(nint program, nuint* size);
    [LibraryImport(Lib)] public static partial NvrtcResult nvrtcGetPTX(nint program, byte* ptx);

    /// <summary>Only for a real architecture (sm_XX); NVRTC 11.1 and newer.</summary>
    [LibraryImport(Lib)] public static partial NvrtcResult nvrtcGetCUBINSize(nint program, nuint* size);
    [LibraryImport(Lib)] public static partial NvrtcResult nvrtcGetCUBIN(nint program, byte* cubin);

    /// <summary>The NVRTC version as (major, minor), e.g. (11, 8).</summary>
    public static (int Major, int Minor) Version()
    {
        int major, minor;
        Check(nvrtcVersion(&major, &minor));
        return (major, minor);
    }

    /// <summary>The program log (errors and warnings); empty when NVRTC had nothing to say.</summary>
    public static string ProgramLog(nint program)
    {
        nuint size;
        Check(nvrtcGetProgramLogSize(program, &size));
        if (size <= 1) return "";
        var buffer = new byte[(int)size];
        fixed (byte* p = buffer) Check(nvrtcGetProgramLog(program, p));
        return System.Text.Encoding.UTF8.GetString(buffer, 0, (int)size - 1);
    }

    /// <summary>The PTX of a compiled program (without the trailing NUL).</summary>
    public static string Ptx(nint program)
    {
        nuint size;
        Check(nvrtcGetPTXSize(program, &size));
        var buffer = new byte[(int)size];
        fixed (byte* p = buffer) Check(nvrtcGetPTX(program, p));
        int length = Array.IndexOf(buffer, (byte)0);
        return System.Text.Encoding.UTF8.GetString(buffer, 0, length < 0 ? buffer.Length : length);
    }

    /// <summary>Copies strings into one native block of NUL-terminated UTF-8 strings and an array of pointers to them;
    /// free it with <see cref="NativeMemory.Free"/> on the returned pointer.</summary>
    public static byte** Utf8Array(IReadOnlyList<string> strings)
    {
        int pointers = strings.Count * sizeof(nint);
        int total = pointers;
        foreach (var s in strings) total += System.Text.Encoding.UTF8.GetByteCount(s) + 1;
        var block = (byte*)NativeMemory.Alloc((nuint)Math.Max(total, 1));
        var array = (byte**)block;
        byte* next = block + pointers;
        for (int i = 0; i < strings.Count; i++)
        {
            array[i] = next;
            int written = System.Text.Encoding.UTF8.GetBytes(strings[i], new Span<byte>(next, total - (int)(next - block)));
            next[written] = 0;
            next += written + 1;
        }
        return array;
    }
}
