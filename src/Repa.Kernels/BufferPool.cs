namespace Repa.Kernels;

/// <summary>
/// A caching allocator in the spirit of PyTorch's: freed buffers are kept in free lists keyed by (dtype, length) and
/// handed out again, so a training step that repeats the same shapes allocates nothing after its first run.
/// Exact-length keys suffice because the shapes of a fixed-batch step repeat exactly.
/// </summary>
public sealed class BufferPool : IDisposable
{
    private readonly IBackend backend;
    private readonly Dictionary<(DType, long), Stack<DeviceBuffer>> free = new();
    private readonly Lock gate = new();

    public BufferPool(IBackend backend) => this.backend = backend;

    /// <summary>Number of buffers handed out that the pool had to allocate from the backend.</summary>
    public long Misses { get; private set; }

    /// <summary>Bytes currently held in free lists (allocated but idle).</summary>
    public long IdleBytes { get; private set; }

    /// <summary>Bytes of every buffer this pool allocated and has not trimmed (in use or idle): its device footprint.</summary>
    public long HeldBytes { get; private set; }

    /// <summary>The largest <see cref="HeldBytes"/> so far: the high-water mark of device memory through the pool.</summary>
    public long PeakHeldBytes { get; private set; }

    public DeviceBuffer Rent(DType dtype, long length)
    {
        lock (gate)
        {
            if (free.TryGetValue((dtype, length), out var stack) && stack.Count > 0)
            {
                var buffer = stack.Pop();
                IdleBytes -= buffer.SizeInBytes;
                return buffer;
            }
            Misses++;
        }
        var allocated = backend.Allocate(dtype, length);
        lock (gate)
        {
            HeldBytes += allocated.SizeInBytes;
            PeakHeldBytes = Math.Max(PeakHeldBytes, HeldBytes);
        }
        return allocated;
    }

    public void Return(DeviceBuffer buffer)
    {
        if (buffer.IsDisposed) return;
        lock (gate)
        {
            var key = (buffer.DType, buffer.Length);
            if (!free.TryGetValue(key, out var stack)) free[key] = stack = new Stack<DeviceBuffer>();
            stack.Push(buffer);
            IdleBytes += buffer.SizeInBytes;
        }
    }

    /// <summary>Gives every idle buffer back to the backend.</summary>
    public void Trim()
    {
        lock (gate)
        {
            foreach (var stack in free.Values)
                while (stack.Count > 0)
                {
                    var buffer = stack.Pop();
                    HeldBytes -= buffer.SizeInBytes;
                    buffer.Dispose();
                }
            free.Clear();
            IdleBytes = 0;
        }
    }

    public void Dispose() => Trim();
}
