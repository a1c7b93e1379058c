using System.Text;

namespace Repa.Kernels.Cuda.Native;

/// <summary>
/// The driver API's CUresult codes (cuda.h). Member names are the C names in PascalCase without the CUDA_ERROR_ prefix;
/// <see cref="CudaResultNames.Name(CudaResult)"/> turns them back into the C spelling for messages.
/// </summary>
public enum CudaResult
{
    Success = 0,
    InvalidValue = 1,
    OutOfMemory = 2,
    NotInitialized = 3,
    Deinitialized = 4,
    ProfilerDisabled = 5,
    StubLibrary = 34,
    DeviceUnavailable = 46,
    NoDevice = 100,
    InvalidDevice = 101,
    DeviceNotLicensed = 102,
    InvalidImage = 200,
    InvalidContext = 201,
    ContextAlreadyCurrent = 202,
    MapFailed = 205,
    UnmapFailed = 206,
    NoBinaryForGpu = 209,
    EccUncorrectable = 214,
    UnsupportedLimit = 215,
    ContextAlreadyInUse = 216,
    PeerAccessUnsupported = 217,
    InvalidPtx = 218,
    InvalidGraphicsContext = 219,
    NvlinkUncorrectable = 220,
    JitCompilerNotFound = 221,
    UnsupportedPtxVersion = 222,
    JitCompilationDisabled = 223,
    UnsupportedExecAffinity = 224,
    InvalidSource = 300,
    FileNotFound = 301,
    SharedObjectSymbolNotFound = 302,
    SharedObjectInitFailed = 303,
    OperatingSystem = 304,
    InvalidHandle = 400,
    IllegalState = 401,
    NotFound = 500,
    NotReady = 600,
    IllegalAddress = 700,
    LaunchOutOfResources = 701,
    LaunchTimeout = 702,
    LaunchIncompatibleTexturing = 703,
    PrimaryContextActive = 708,
    ContextIsDestroyed = 709,
    Assert = 710,
    HardwareStackError = 714,
    IllegalInstruction = 715,
    MisalignedAddress = 716,
    InvalidAddressSpace = 717,
    InvalidPc = 718,
    LaunchFailed = 719,
    CooperativeLaunchTooLarge = 720,
    NotPermitted = 800,
    NotSupported = 801,
    SystemNotReady = 802,
    SystemDriverMismatch = 803,
    CompatNotSupportedOnDevice = 804,
    StreamCaptureUnsupported = 900,
    StreamCaptureInvalidated = 901,
    StreamCaptureMerge = 902,
    StreamCaptureUnmatched = 903,
    StreamCaptureUnjoined = 904,
    StreamCaptureIsolation = 905,
    StreamCaptureImplicit = 906,
    CapturedEvent = 907,
    StreamCaptureWrongThread = 908,
    Timeout = 909,
    GraphExecUpdateFailure = 910,
    Unknown = 999,
}

/// <summary>cublasStatus_t (cublas_api.h), shared by cuBLAS and cuBLASLt.</summary>
public enum CublasStatus
{
    Success = 0,
    NotInitialized = 1,
    AllocFailed = 3,
    InvalidValue = 7,
    ArchMismatch = 8,
    MappingError = 11,
    ExecutionFailed = 13,
    InternalError = 14,
    NotSupported = 15,
    LicenseError = 16,
}

/// <summary>nvrtcResult (nvrtc.h).</summary>
public enum NvrtcResult
{
    Success = 0,
    OutOfMemory = 1,
    ProgramCreationFailure = 2,
    InvalidInput = 3,
    InvalidProgram = 4,
    InvalidOption = 5,
    Compilation = 6,
    BuiltinOperationFailure = 7,
    NoNameExpressionsAfterCompilation = 8,
    NoLoweredNamesBeforeCompilation = 9,
    NameExpressionNotValid = 10,
    InternalError = 11,
}

/// <summary>The C spellings of the status enums (CUDA_ERROR_OUT_OF_MEMORY, CUBLAS_STATUS_NOT_SUPPORTED, ...).</summary>
public static class CudaResultNames
{
    /// <summary>CUDA_SUCCESS, CUDA_ERROR_INVALID_VALUE, ...; an unknown code reads "CUresult 1234".</summary>
    public static string Name(this CudaResult result) =>
        result == CudaResult.Success ? "CUDA_SUCCESS"
        : Enum.IsDefined(result) ? "CUDA_ERROR_" + Screaming(result.ToString())
        : $"CUresult {(int)result}";

    /// <summary>CUBLAS_STATUS_SUCCESS, CUBLAS_STATUS_INVALID_VALUE, ...</summary>
    public static string Name(this CublasStatus status) =>
        Enum.IsDefined(status) ? "CUBLAS_STATUS_" + Screaming(status.ToString()) : $"cublasStatus_t {(int)status}";

    /// <summary>NVRTC_SUCCESS, NVRTC_ERROR_COMPILATION, ...</summary>
    public static string Name(this NvrtcResult result) =>
        result == NvrtcResult.Success ? "NVRTC_SUCCESS"
        : Enum.IsDefined(result) ? "NVRTC_ERROR_" + Screaming(result.ToString())
        : $"nvrtcResult {(int)result}";

    /// <summary>"OutOfMemory" -> "OUT_OF_MEMORY" (a capital starts a new word).</summary>
    private static string Screaming(string pascal)
    {
        var s = new StringBuilder(pascal.Length + 8);
        for (int i = 0; i < pascal.Length; i++)
        {
            if (i > 0 && char.IsUpper(pascal[i])) s.Append('_');
            s.Append(char.ToUpperInvariant(pascal[i]));
        }
        return s.ToString();
    }
}
