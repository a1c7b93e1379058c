using System.Runtime.InteropServices;

namespace Repa.Kernels.Cuda.Native;

/// <summary>
/// cuBLASLt basics (cublasLt.h), bound to the logical library "repa_cublaslt" (libcublasLt.so.N): descriptors, layouts,
/// the heuristic and cublasLtMatmul, enough for GEMMs with fused bias/GELU/bias-gradient epilogues (the emulator
/// exports the same subset, kernels/emu/emu_cublaslt.cpp). Status codes are <see cref="CublasStatus"/> (use
/// <see cref="Cublas.Check"/>). Attribute and epilogue values are cublasLt.h's.
/// </summary>
internal static unsafe partial class CublasLt
{
    private const string Lib = CudaLibraries.CublasLt;

    static CublasLt() => CudaLibraries.EnsureResolver();

    // cublasLtMatmulDescAttributes_t.
    public const int MatmulDescTransA = 3;
    public const int MatmulDescTransB = 4;
    public const int MatmulDescEpilogue = 7;
    public const int MatmulDescBiasPointer = 8;
    public const int MatmulDescEpilogueAuxPointer = 11;
    public const int MatmulDescEpilogueAuxLd = 12;

    // cublasLtMatrixLayoutAttribute_t.
    public const int MatrixLayoutBatchCount = 5;
    public const int MatrixLayoutStridedBatchOffset = 6;

    // cublasLtMatmulPreferenceAttributes_t.
    public const int MatmulPreferenceMaxWorkspaceBytes = 1;

    // cublasLtEpilogue_t.
    public const int EpilogueDefault = 1;
    public const int EpilogueBias = 4;
    public const int EpilogueGelu = 32;
    public const int EpilogueGeluBias = 36;
    public const int EpilogueGeluAux = 32 | 128;
    public const int EpilogueGeluAuxBias = 32 | 128 | 4;
    public const int EpilogueBiasGradientB = 512;

    /// <summary>cublasLtMatmulAlgo_t: 8 opaque 64-bit words.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct MatmulAlgo
    {
        public fixed ulong Data[8];
    }

    /// <summary>cublasLtMatmulHeuristicResult_t.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct HeuristicResult
    {
        public MatmulAlgo Algo;
        public nuint WorkspaceSize;
        public CublasStatus State;
        public float WavesCount;
        public fixed int Reserved[4];
    }

    [LibraryImport(Lib)] public static partial CublasStatus cublasLtCreate(nint* handle);
    [LibraryImport(Lib)] public static partial CublasStatus cublasLtDestroy(nint handle);

    [LibraryImport(Lib)] public static partial CublasStatus cublasLtMatmulDescCreate(nint* desc, int computeType, int scaleType);
    [LibraryImport(Lib)] public static partial CublasStatus cublasLtMatmulDescDestroy(nint desc);
    [LibraryImport(Lib)]
    public static partial CublasStatus cublasLtMatmulDescSetAttribute(nint desc, int attribute, void* value, nuint size);

    [LibraryImport(Lib)]
    public static partial CublasStatus cublasLtMatrixLayoutCreate(nint* layout, int type, ulong rows, ulong cols, long ld);
    [LibraryImport(Lib)] public static partial CublasStatus cublasLtMatrixLayoutDestroy(nint layout);
    [LibraryImport(Lib)]
    public static partial CublasStatus cublasLtMatrixLayoutSetAttribute(nint layout, int attribute, void* value, nuint size);

    [LibraryImport(Lib)] public static partial CublasStatus cublasLtMatmulPreferenceCreate(nint* preference);
    [LibraryImport(Lib)] public static partial CublasStatus cublasLtMatmulPreferenceDestroy(nint preference);
    [LibraryImport(Lib)]
    public static partial CublasStatus cublasLtMatmulPreferenceSetAttribute(nint preference, int attribute, void* value, nuint size);

    [LibraryImport(Lib)]
    public static partial CublasStatus cublasLtMatmulAlgoGetHeuristic(nint handle, nint operation, nint layoutA, nint layoutB,
        nint layoutC, nint layoutD, nint preference, int requested, HeuristicResult* results, int* returned);

    [LibraryImport(Lib)]
    public static partial CublasStatus cublasLtMatmul(nint handle, nint operation, void* alpha, ulong a, nint layoutA,
        ulong b, nint layoutB, void* beta, ulong c, nint layoutC, ulong d, nint layoutD, MatmulAlgo* algorithm,
        ulong workspace, nuint workspaceBytes, nint stream);
}
