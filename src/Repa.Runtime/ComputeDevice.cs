using Repa.Kernels.Cpu;

namespace Repa.Runtime;

/// <summary>
/// The compute devices a user can name (`--device`): auto, cpu, cuda, ilgpu. Only the CPU backend is built so far; the
/// CUDA and ILGPU backends are later issues, so naming them ends in one sentence saying so, and auto picks the CPU.
/// </summary>
public static class ComputeDevice
{
    /// <summary>Every accepted device name, the default first.</summary>
    public static readonly string[] Names = ["auto", "cpu", "cuda", "ilgpu"];

    /// <summary>Why auto picks the CPU: shown by the CLI so the choice is never silent.</summary>
    public const string AutoReason = "auto chose the CPU: the CUDA and ILGPU backends are not built yet";

    /// <summary>
    /// Opens the backend named <paramref name="device"/> with <paramref name="threads"/> CPU threads (0 = all cores).
    /// <paramref name="note"/> says what "auto" chose and why (null for an explicit "cpu"). Throws
    /// <see cref="NotSupportedException"/> for cuda and ilgpu and <see cref="ArgumentException"/> for unknown names.
    /// </summary>
    public static CpuBackend Open(string device, int threads, out string? note)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (threads < 0) throw new ArgumentException($"the CPU thread count must be >= 0 (0 = all cores), got {threads}.", nameof(threads));
        note = Check(device);
        return new CpuBackend(threads == 0 ? Environment.ProcessorCount : threads);
    }

    /// <summary>Validates a device name without opening anything; returns the note of <see cref="Open"/>.</summary>
    public static string? Check(string device) => device switch
    {
        "auto" => AutoReason,
        "cpu" => null,
        "cuda" => throw new NotSupportedException("--device cuda: the CUDA backend is not built yet (it arrives with a later issue); use --device cpu or auto."),
        "ilgpu" => throw new NotSupportedException("--device ilgpu: the ILGPU backend is not built yet (it arrives with a later issue); use --device cpu or auto."),
        _ => throw new ArgumentException($"--device must be one of {string.Join(", ", Names)}, got '{device}'."),
    };
}
