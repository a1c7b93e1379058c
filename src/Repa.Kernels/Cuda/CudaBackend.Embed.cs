namespace Repa.Kernels.Cuda;

/// <summary>
/// Embedding lookup with its deterministic scatter-add backward, and the sinusoidal timestep embedding
/// (kernels/embed.cu). The table, its gradient, the timesteps and their gradient are float32; the activation y (and dy)
/// is float32 or bfloat16. Backward members accumulate, as on the CPU.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    internal const string EmbedKernels = "embed.cu";

    public void EmbeddingForward(DeviceBuffer table, DeviceBuffer ids, DeviceBuffer y, long count, int vocab, int dim)
    {
        if (ids.DType != DType.I32) throw new ArgumentException($"embedding: ids must be int32, not {ids.DType.Name()}.");
        string suffix = ComputeSuffix("embedding", y);
        EmbedCheckSizes("embedding", count, vocab, dim);
        RequireF32("embedding", table, (long)vocab * dim);
        OpChecks.Range(ids, 0, count);
        OpChecks.Range(y, 0, count * dim);
        if (count == 0 || dim == 0) return;
        Enter();
        // The kernel lowers firstBad to the first position of an id outside [0, vocab) (and writes zeros there instead
        // of reading out of bounds); the CPU backend's sentence names that id and position.
        // During a graph capture the host cannot look (the ids change at every replay): the kernel still writes zeros
        // for bad ids and reads nothing out of bounds, and the caller validates its ids on the host before uploading.
        var firstBad = Pool.Rent(DType.F64, 1); // 8 bytes: an unsigned long long for the kernel
        long i;
        try
        {
            if (capturing) Fill(firstBad, 0, 1, BitConverter.UInt64BitsToDouble(ulong.MaxValue));
            else Upload<ulong>([ulong.MaxValue], firstBad);
            var shape = new LaunchShape((uint)Math.Min(count, 65535), 1, (uint)Math.Clamp((dim + 31) / 32 * 32, 32, BlockSize), 1);
            Launch(Function(EmbedKernels, $"embedding_forward_{suffix}"), shape,
                Address(table), Address(ids), Address(y), count, vocab, dim, Address(firstBad));
            if (capturing) return;
            Span<ulong> position = stackalloc ulong[1];
            Download(firstBad, position);
            if (position[0] == ulong.MaxValue) return;
            i = (long)position[0];
        }
        finally
        {
            Pool.Return(firstBad);
        }
        // Unlike the CPU, which checks before it copies, y now holds the valid rows and zeros for the bad ones.
        Span<int> id = stackalloc int[1];
        Download(ids, id, i);
        throw new ArgumentOutOfRangeException(nameof(ids), id[0],
            $"embedding: id {id[0]} at position {i} is out of range for a table of {vocab} rows (valid ids are 0..{vocab - 1}).");
    }

    public void EmbeddingBackward(DeviceBuffer ids, DeviceBuffer dy, DeviceBuffer dTable, long count, int vocab, int dim)
    {
        if (ids.DType != DType.I32) throw new ArgumentException($"embedding: ids must be int32, not {ids.DType.Name()}.");
        string suffix = ComputeSuffix("embedding backward", dy);
        EmbedCheckSizes("embedding backward", count, vocab, dim);
        RequireF32("embedding backward", dTable, (long)vocab * dim);
        OpChecks.Range(ids, 0, count);
        OpChecks.Range(dy, 0, count * dim);
        if (count == 0 || dim == 0) return;
        Enter();
        // grid.y: slices of blockDim.x columns; grid.x strides over the positions (each table row is owned by the block
        // at its id's first position, so no atomics and the CPU's order of additions).
        int block = Math.Clamp((dim + 31) / 32 * 32, 32, BlockSize), slices = (dim + block - 1) / block;
        var shape = new LaunchShape((uint)Math.Clamp(count, 1, Math.Max(1, (long)MultiprocessorCount * 8)), (uint)slices, (uint)block, 1);
        Launch(Function(EmbedKernels, $"embedding_backward_{suffix}"), shape, Address(ids), Address(dy), Address(dTable), count, vocab, dim);
    }

    public void TimestepEmbeddingForward(DeviceBuffer t, DeviceBuffer y, long count, int dim, double maxPeriod)
    {
        string suffix = ComputeSuffix("timestep_embedding", y);
        EmbedCheckSizes("timestep_embedding", count, 0, dim);
        RequireF32("timestep_embedding", t, count);
        OpChecks.Range(y, 0, count * dim);
        if (count == 0 || dim == 0) return;
        Enter();
        // One block per row, threads over the dim / 2 frequencies.
        var shape = new LaunchShape((uint)Math.Min(count, 65535), 1, (uint)Math.Clamp((dim / 2 + 31) / 32 * 32, 32, BlockSize), 1);
        Launch(Function(EmbedKernels, $"timestep_embedding_forward_{suffix}"), shape, Address(t), Address(y), count, dim, maxPeriod);
    }

    public void TimestepEmbeddingBackward(DeviceBuffer t, DeviceBuffer dy, DeviceBuffer dt, long count, int dim, double maxPeriod)
    {
        string suffix = ComputeSuffix("timestep_embedding backward", dy);
        EmbedCheckSizes("timestep_embedding backward", count, 0, dim);
        RequireF32("timestep_embedding backward", t, count);
        RequireF32("timestep_embedding backward", dt, count);
        OpChecks.Range(dy, 0, count * dim);
        if (count == 0 || dim < 2) return;
        Enter();
        Launch(Function(EmbedKernels, $"timestep_embedding_backward_{suffix}"), WarpPerRow(count), Address(t), Address(dy), Address(dt), count, dim, maxPeriod);
    }

    private static void EmbedCheckSizes(string op, long count, int vocab, int dim)
    {
        if (count < 0 || vocab < 0 || dim < 0)
            throw new ArgumentOutOfRangeException(nameof(count), $"cuda {op}: count {count}, vocab {vocab} and dim {dim} must be >= 0.");
    }
}
