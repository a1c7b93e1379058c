using Repa.Kernels.Cuda.Native;

namespace Repa.Kernels.Cuda;

/// <summary>A CUDA driver, cuBLAS or NVRTC call failed; the message is one sentence naming the call and the status.</summary>
public class CudaException : Exception
{
    /// <summary>Creates the exception for a failed call.</summary>
    public CudaException(string call, string status, string message) : base(message)
    {
        Call = call;
        Status = status;
    }

    /// <summary>The C function that failed, e.g. "cuMemAlloc_v2".</summary>
    public string Call { get; }

    /// <summary>The status in its C spelling, e.g. "CUDA_ERROR_OUT_OF_MEMORY".</summary>
    public string Status { get; }
}

/// <summary>NVRTC rejected a kernel source; <see cref="Log"/> is NVRTC's full program log (errors and warnings).</summary>
public sealed class NvrtcCompileException : CudaException
{
    /// <summary>Creates the exception for a failed compilation of <paramref name="file"/>.</summary>
    public NvrtcCompileException(string file, string architecture, string log)
        : base("nvrtcCompileProgram", NvrtcResult.Compilation.Name(),
            $"NVRTC could not compile {file} for {architecture}:{Environment.NewLine}{log.TrimEnd()}")
    {
        File = file;
        Architecture = architecture;
        Log = log;
    }

    /// <summary>The kernel source, e.g. "elementwise.cu".</summary>
    public string File { get; }

    /// <summary>The virtual architecture, e.g. "compute_80".</summary>
    public string Architecture { get; }

    /// <summary>NVRTC's program log.</summary>
    public string Log { get; }
}
