using System.Reflection;
using System.Runtime.InteropServices;

namespace Repa.Bench;

/// <summary>
/// OpenBLAS (cblas) bindings, loaded at run time from libopenblas.so.0 (Debian: libopenblas0-pthread).
/// The "openblas" library name is mapped to the loaded handle by a DllImport resolver.
/// </summary>
internal static unsafe partial class OpenBlas
{
    public const int RowMajor = 101, NoTrans = 111, Trans = 112;
    public const string InstallHint = "OpenBLAS not found (libopenblas.so.0): install it with `apt-get install -y libopenblas0-pthread`; skipping OpenBLAS columns.";

    private static readonly string[] Candidates = ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib", "libopenblas.dll", "openblas"];
    private static nint s_handle;
    private static bool s_tried;

    /// <summary>True when the library could be loaded (tries once).</summary>
    public static bool TryLoad()
    {
        if (s_tried) return s_handle != 0;
        s_tried = true;
        foreach (var name in Candidates)
            if (NativeLibrary.TryLoad(name, out s_handle)) break;
        if (s_handle == 0) return false;
        NativeLibrary.SetDllImportResolver(typeof(OpenBlas).Assembly, Resolve);
        return true;
    }

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? path) =>
        libraryName == "openblas" ? s_handle : 0;

    [LibraryImport("openblas", EntryPoint = "cblas_sgemm")]
    public static partial void Sgemm(int order, int transA, int transB, int m, int n, int k, float alpha, float* a, int lda,
        float* b, int ldb, float beta, float* c, int ldc);

    [LibraryImport("openblas", EntryPoint = "openblas_set_num_threads")]
    public static partial void SetNumThreads(int threads);

    [LibraryImport("openblas", EntryPoint = "openblas_get_config")]
    private static partial nint GetConfigPtr();

    [LibraryImport("openblas", EntryPoint = "openblas_get_corename")]
    private static partial nint GetCoreNamePtr();

    public static string Describe() =>
        $"{Marshal.PtrToStringUTF8(GetConfigPtr())} (core: {Marshal.PtrToStringUTF8(GetCoreNamePtr())})";

    /// <summary>Row-major C = A*B (with optional transposes), the same contract as CpuGemm for one batch item.</summary>
    public static void Gemm(bool ta, bool tb, int m, int n, int k, float* a, int lda, float* b, int ldb, float* c, int ldc) =>
        Sgemm(RowMajor, ta ? Trans : NoTrans, tb ? Trans : NoTrans, m, n, k, 1f, a, lda, b, ldb, 0f, c, ldc);
}
