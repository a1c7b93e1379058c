namespace Repa.Kernels;

/// <summary>
/// A caching allocator in the spirit of PyTorch's: freed buffers are kept in free lists keyed by (dtype, length) and
/// handed out again, so a training step that repeats the same shapes allocates nothing after its first run.
/// Exact-length keys suffice because the shapes of a fixed-batch step repeat exactly. During a graph capture
/// (<see cref="BeginCapture"/>) the pool notes every buffer it hands out; <see cref="EndCapture"/> reserves them for the
/// graph, whose replays write them again: until the reservation is disposed they are never handed to anyone else.
/// </summary>
public sealed class BufferPool : IDisposable
{
    private readonly IBackend backend;
    private readonly Dictionary<(DType, long), Stack<DeviceBuffer>> free = new();
    private readonly Dictionary<DeviceBuffer, Reservation> reserved = new(ReferenceEqualityComparer.Instance);
    private HashSet<DeviceBuffer>? capturing;
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

    /// <summary>Buffers reserved for captured graphs (idle or still in use by their last owner).</summary>
    public int ReservedCount
    {
        get { lock (gate) return reserved.Count; }
    }

    public DeviceBuffer Rent(DType dtype, long length)
    {
        lock (gate)
        {
            if (free.TryGetValue((dtype, length), out var stack) && stack.Count > 0)
            {
                var buffer = stack.Pop();
                IdleBytes -= buffer.SizeInBytes;
                capturing?.Add(buffer);
                return buffer;
            }
            Misses++;
        }
        var fresh = backend.Allocate(dtype, length);
        lock (gate)
        {
            capturing?.Add(fresh);
            HeldBytes += fresh.SizeInBytes;
            PeakHeldBytes = Math.Max(PeakHeldBytes, HeldBytes);
        }
        return fresh;
    }

    public void Return(DeviceBuffer buffer)
    {
        if (buffer.IsDisposed) return;
        lock (gate)
        {
            if (reserved.TryGetValue(buffer, out var reservation))
            {
                reservation.Idle.Add(buffer); // the graph's: kept out of the free lists
                return;
            }
            Push(buffer);
        }
    }

    /// <summary>Starts noting the buffers handed out, for <see cref="EndCapture"/>. Captures do not nest.</summary>
    public void BeginCapture()
    {
        lock (gate)
        {
            if (capturing != null) throw new InvalidOperationException("buffer pool: a capture is already in progress.");
            capturing = new HashSet<DeviceBuffer>(ReferenceEqualityComparer.Instance);
        }
    }

    /// <summary>
    /// Reserves every buffer handed out since <see cref="BeginCapture"/> (those idle now leave the free lists, the others
    /// when they come back) until the returned reservation is disposed, which gives them back to the pool.
    /// </summary>
    public IDisposable EndCapture()
    {
        lock (gate)
        {
            var buffers = capturing ?? throw new InvalidOperationException("buffer pool: no capture is in progress.");
            capturing = null;
            var reservation = new Reservation(this, buffers);
            foreach (var b in buffers) reserved[b] = reservation;
            foreach (var stack in free.Values)
            {
                if (!stack.Any(buffers.Contains)) continue;
                var kept = stack.Where(b => !buffers.Contains(b)).Reverse().ToArray(); // bottom first: LIFO order kept
                foreach (var b in stack)
                    if (buffers.Contains(b))
                    {
                        reservation.Idle.Add(b);
                        IdleBytes -= b.SizeInBytes;
                    }
                stack.Clear();
                foreach (var b in kept) stack.Push(b);
            }
            return reservation;
        }
    }

    private void Push(DeviceBuffer buffer)
    {
        var key = (buffer.DType, buffer.Length);
        if (!free.TryGetValue(key, out var stack)) free[key] = stack = new Stack<DeviceBuffer>();
        stack.Push(buffer);
        IdleBytes += buffer.SizeInBytes;
    }

    /// <summary>Gives every idle buffer back to the backend (reserved ones stay with their graph).</summary>
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

    /// <summary>Gives every idle buffer back to the backend, reserved ones included.</summary>
    public void Dispose()
    {
        lock (gate)
        {
            foreach (var r in reserved.Values.Distinct())
                foreach (var b in r.Idle) b.Dispose();
            reserved.Clear();
        }
        Trim();
    }

    private sealed class Reservation(BufferPool pool, HashSet<DeviceBuffer> buffers) : IDisposable
    {
        public HashSet<DeviceBuffer> Idle { get; } = new(ReferenceEqualityComparer.Instance);

        public void Dispose()
        {
            lock (pool.gate)
            {
                foreach (var b in buffers)
                    if (pool.reserved.TryGetValue(b, out var r) && ReferenceEquals(r, this)) pool.reserved.Remove(b);
                foreach (var b in Idle)
                    if (!b.IsDisposed) pool.Push(b);
                Idle.Clear();
            }
        }
    }
}
