namespace Repa.Kernels;

/// <summary>
/// Work captured once and launched many times: on CUDA a CUDA graph (the body's kernels, copies and GEMMs recorded
/// with their arguments, replayed by one cuGraphLaunch), on the CPU the body itself, run again at every launch. Either
/// way a launch does exactly the device work of one run of the body, so a caller has one code path.
/// </summary>
public interface IDeviceGraph : IDisposable
{
    /// <summary>Runs the captured work (queued on the backend's stream; read results with Download, which waits).</summary>
    void Launch();
}

public partial interface IBackend
{
    /// <summary>
    /// Captures <paramref name="body"/>'s device work into a graph without running it; <see cref="IDeviceGraph.Launch"/>
    /// runs it. The body must do device work only: on CUDA its host code runs once, at capture, so every value that
    /// changes between launches has to be read by the kernels from device memory (upload it before launching), and it
    /// must not upload, download, synchronise or allocate outside the pool (the backend refuses those during a capture).
    /// Buffers the body rents from <see cref="Pool"/> stay reserved for the graph until it is disposed.
    /// </summary>
    IDeviceGraph Capture(Action body);
}

/// <summary>The CPU's graph: the body, run at every launch.</summary>
public sealed class RerunGraph(Action body) : IDeviceGraph
{
    private Action? body = body ?? throw new ArgumentNullException(nameof(body));

    public void Launch() => (body ?? throw new ObjectDisposedException(nameof(RerunGraph)))();

    public void Dispose() => body = null;
}
