namespace Repa.Kernels;

/// <summary>
/// The device layer. One interface for every backend (CPU, CUDA, ILGPU); each op family adds its members in its own
/// partial file (IBackend.Gemm.cs, IBackend.Elementwise.cs, ...). Buffers are contiguous, row-major; lengths and
/// offsets are in elements. Backward members ACCUMULATE into gradient buffers (dx += ...), so the autograd tape never
/// needs a temporary per input.
/// </summary>
public partial interface IBackend : IDisposable
{
    /// <summary>Short name: "cpu", "cuda", "ilgpu".</summary>
    string Name { get; }

    /// <summary>Human-readable description of the device (processor, SIMD width, threads).</summary>
    string Description { get; }

    /// <summary>The caching allocator every tensor of this backend is rented from.</summary>
    BufferPool Pool { get; }

    /// <summary>Number of raw device allocations made so far (the pool's misses end up here).</summary>
    long AllocationCount { get; }

    /// <summary>Whether this backend can hold and compute in <paramref name="dtype"/>.</summary>
    bool Supports(DType dtype);

    /// <summary>Allocates a buffer of <paramref name="length"/> elements; contents are unspecified.</summary>
    DeviceBuffer Allocate(DType dtype, long length);

    void Upload<T>(ReadOnlySpan<T> source, DeviceBuffer destination, long offset = 0) where T : unmanaged;
    void Download<T>(DeviceBuffer source, Span<T> destination, long offset = 0) where T : unmanaged;

    /// <summary>dst[dstOffset..+count] = src[srcOffset..+count]; both buffers share a dtype.</summary>
    void Copy(DeviceBuffer source, long sourceOffset, DeviceBuffer destination, long destinationOffset, long count);

    void Fill(DeviceBuffer destination, long offset, long count, double value);

    /// <summary>Element-wise dtype conversion of the first <paramref name="count"/> elements.</summary>
    void Convert(DeviceBuffer source, DeviceBuffer destination, long count);

    /// <summary>Waits until all queued work has finished (no-op on the CPU).</summary>
    void Synchronize();
}
