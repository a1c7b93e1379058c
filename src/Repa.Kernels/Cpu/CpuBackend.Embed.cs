using System.Numerics;
using System.Numerics.Tensors;

namespace Repa.Kernels.Cpu;

/// <summary>Embedding lookup with a race-free scatter-add backward, and the sinusoidal timestep embedding.</summary>
public sealed unsafe partial class CpuBackend
{
    private const int EmbedColumnBlock = 256; // columns per backward job: every job walks all ids over its own columns

    public void EmbeddingForward(DeviceBuffer table, DeviceBuffer ids, DeviceBuffer y, long count, int vocab, int dim)
    {
        OpChecks.EmbeddingIds(ids);
        int* id = Host(ids).Ptr<int>();
        // Validate up front (cheap) so a bad id fails with a clear message instead of reading out of bounds.
        OpChecks.EmbeddingIdsInRange(new ReadOnlySpan<int>(id, checked((int)count)), vocab);
        switch (y.DType)
        {
            case DType.F32: EmbeddingForward(Host(table).Ptr<float>(), id, Host(y).Ptr<float>(), count, dim); break;
            case DType.F64: EmbeddingForward(Host(table).Ptr<double>(), id, Host(y).Ptr<double>(), count, dim); break;
            default: throw Unsupported(y.DType);
        }
    }

    private void EmbeddingForward<T>(T* table, int* ids, T* y, long count, int dim) where T : unmanaged, IFloatingPointIeee754<T>
    {
        CpuParallel.For(count, Math.Max(1, Grain / Math.Max(dim, 1)), Threads, (start, end) =>
        {
            for (long i = start; i < end; i++)
                new ReadOnlySpan<T>(table + (long)ids[i] * dim, dim).CopyTo(new Span<T>(y + i * dim, dim));
        });
    }

    public void EmbeddingBackward(DeviceBuffer ids, DeviceBuffer dy, DeviceBuffer dTable, long count, int vocab, int dim)
    {
        OpChecks.EmbeddingIds(ids);
        switch (dTable.DType)
        {
            case DType.F32: EmbeddingBackward(Host(ids).Ptr<int>(), Host(dy).Ptr<float>(), Host(dTable).Ptr<float>(), count, dim); break;
            case DType.F64: EmbeddingBackward(Host(ids).Ptr<int>(), Host(dy).Ptr<double>(), Host(dTable).Ptr<double>(), count, dim); break;
            default: throw Unsupported(dTable.DType);
        }
    }

    private void EmbeddingBackward<T>(int* ids, T* dy, T* dTable, long count, int dim) where T : unmanaged, IFloatingPointIeee754<T>
    {
        // Partitioned by column block: two jobs never touch the same table element, and each element receives its
        // contributions in id order, so the sum is deterministic.
        int blocks = (dim + EmbedColumnBlock - 1) / EmbedColumnBlock;
        CpuParallel.For(blocks, Math.Max(1, Grain / Math.Max(count * Math.Min(dim, EmbedColumnBlock), 1)), Threads, (start, end) =>
        {
            for (long b = start; b < end; b++)
            {
                int c0 = (int)b * EmbedColumnBlock, len = Math.Min(EmbedColumnBlock, dim - c0);
                for (long i = 0; i < count; i++)
                {
                    var g = new Span<T>(dTable + (long)ids[i] * dim + c0, len);
                    TensorPrimitives.Add(g, new ReadOnlySpan<T>(dy + i * dim + c0, len), g);
                }
            }
        });
    }

    public void TimestepEmbeddingForward(DeviceBuffer t, DeviceBuffer y, long count, int dim, double maxPeriod)
    {
        switch (y.DType)
        {
            case DType.F32: TimestepEmbeddingForward(Host(t).Ptr<float>(), Host(y).Ptr<float>(), count, dim, TimestepFrequencies<float>(dim, maxPeriod)); break;
            case DType.F64: TimestepEmbeddingForward(Host(t).Ptr<double>(), Host(y).Ptr<double>(), count, dim, TimestepFrequencies<double>(dim, maxPeriod)); break;
            default: throw Unsupported(y.DType);
        }
    }

    /// <summary>f_k = exp(-ln(maxPeriod) k / half), computed in fp64 and rounded once to T.</summary>
    private static T[] TimestepFrequencies<T>(int dim, double maxPeriod) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int half = dim / 2;
        var f = new T[half];
        for (int k = 0; k < half; k++) f[k] = T.CreateTruncating(Math.Exp(-Math.Log(maxPeriod) * k / half));
        return f;
    }

    private void TimestepEmbeddingForward<T>(T* t, T* y, long count, int dim, T[] freqs) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int half = dim / 2;
        CpuParallel.For(count, Math.Max(1, Grain / Math.Max(dim, 1)), Threads, (start, end) =>
        {
            for (long r = start; r < end; r++)
            {
                T* row = y + r * dim;
                var args = new Span<T>(row + half, half); // the sin half holds the arguments until it is overwritten
                TensorPrimitives.Multiply(new ReadOnlySpan<T>(freqs), t[r], args);
                TensorPrimitives.Cos<T>(args, new Span<T>(row, half));
                TensorPrimitives.Sin<T>(args, args);
                if ((dim & 1) != 0) row[dim - 1] = T.Zero;
            }
        });
    }

    public void TimestepEmbeddingBackward(DeviceBuffer t, DeviceBuffer dy, DeviceBuffer dt, long count, int dim, double maxPeriod)
    {
        switch (dt.DType)
        {
            case DType.F32: TimestepEmbeddingBackward(Host(t).Ptr<float>(), Host(dy).Ptr<float>(), Host(dt).Ptr<float>(), count, dim, TimestepFrequencies<float>(dim, maxPeriod)); break;
            case DType.F64: TimestepEmbeddingBackward(Host(t).Ptr<double>(), Host(dy).Ptr<double>(), Host(dt).Ptr<double>(), count, dim, TimestepFrequencies<double>(dim, maxPeriod)); break;
            default: throw Unsupported(dt.DType);
        }
    }

    private void TimestepEmbeddingBackward<T>(T* t, T* dy, T* dt, long count, int dim, T[] freqs) where T : unmanaged, IFloatingPointIeee754<T>
    {
        const int Block = 512;
        int half = dim / 2;
        CpuParallel.For(count, Math.Max(1, Grain / Math.Max(dim, 1)), Threads, (start, end) =>
        {
            Span<T> arg = stackalloc T[Block], sin = stackalloc T[Block], cos = stackalloc T[Block];
            for (long r = start; r < end; r++)
            {
                T* g = dy + r * dim;
                T acc = T.Zero;
                for (int k0 = 0; k0 < half; k0 += Block)
                {
                    int len = Math.Min(Block, half - k0);
                    var f = new ReadOnlySpan<T>(freqs, k0, len);
                    TensorPrimitives.Multiply(f, t[r], arg[..len]);
                    TensorPrimitives.Sin<T>(arg[..len], sin[..len]);
                    TensorPrimitives.Cos<T>(arg[..len], cos[..len]);
                    // d cos(t f)/dt = -f sin(t f), d sin(t f)/dt = f cos(t f)
                    TensorPrimitives.Multiply<T>(cos[..len], new ReadOnlySpan<T>(g + half + k0, len), cos[..len]);
                    TensorPrimitives.Multiply<T>(sin[..len], new ReadOnlySpan<T>(g + k0, len), sin[..len]);
                    TensorPrimitives.Subtract<T>(cos[..len], sin[..len], cos[..len]);
                    acc += TensorPrimitives.Dot(f, cos[..len]);
                }
                dt[r] += acc;
            }
        });
    }
}
