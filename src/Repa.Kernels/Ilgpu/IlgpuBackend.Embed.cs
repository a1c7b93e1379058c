using ILGPU;

namespace Repa.Kernels.Ilgpu;

/// <summary>
/// Label embedding (ids checked on the host first, as on the CPU) with a backward that is race-free without atomics:
/// one thread per table column walks the ids in order, so repeated ids add up in position order. The sinusoidal
/// timestep embedding: one thread per output element forward, one per timestep backward.
/// </summary>
public sealed partial class IlgpuBackend
{
    public void EmbeddingForward(DeviceBuffer table, DeviceBuffer ids, DeviceBuffer y, long count, int vocab, int dim)
    {
        OpChecks.EmbeddingIds(ids);
        if (count <= 0) return;
        var host = new int[checked((int)count)];
        Download<int>(ids, host);
        OpChecks.EmbeddingIdsInRange(host, vocab);
        Run(Stride(count * dim), IlgpuKernels.EmbeddingForward, F(table), I(ids), F(y), count, dim);
    }

    public void EmbeddingBackward(DeviceBuffer ids, DeviceBuffer dy, DeviceBuffer dTable, long count, int vocab, int dim)
    {
        OpChecks.EmbeddingIds(ids);
        if (count <= 0 || dim <= 0) return;
        Run(Stride(dim), IlgpuKernels.EmbeddingBackward, I(ids), F(dy), F(dTable), count, dim);
    }

    public void TimestepEmbeddingForward(DeviceBuffer t, DeviceBuffer y, long count, int dim, double maxPeriod)
    {
        if (count <= 0 || dim <= 0) return;
        Run(Stride(count * dim), IlgpuKernels.TimestepForward, F(t), F(y), count, dim, Math.Log(maxPeriod));
    }

    public void TimestepEmbeddingBackward(DeviceBuffer t, DeviceBuffer dy, DeviceBuffer dt, long count, int dim, double maxPeriod)
    {
        if (count <= 0 || dim < 2) return;
        Run(Stride(count), IlgpuKernels.TimestepBackward, F(t), F(dy), F(dt), count, dim, Math.Log(maxPeriod));
    }
}

internal static partial class IlgpuKernels
{
    public static void EmbeddingForward(ArrayView<float> table, ArrayView<int> ids, ArrayView<float> y, long count, int dim)
    {
        long n = count * dim;
        for (long e = First; e < n; e += Step) y[e] = table[(long)ids[e / dim] * dim + e % dim];
    }

    public static void EmbeddingBackward(ArrayView<int> ids, ArrayView<float> dy, ArrayView<float> dTable, long count, int dim)
    {
        for (long c = First; c < dim; c += Step)
            for (long i = 0; i < count; i++) dTable[(long)ids[i] * dim + c] += dy[i * dim + c];
    }

    /// <summary>f_k = exp(-ln(maxPeriod) k / half), in float64 and rounded once to float32 (as the CPU does).</summary>
    private static float Frequency(int k, int half, double logMaxPeriod) => (float)Math.Exp(-logMaxPeriod * k / half);

    public static void TimestepForward(ArrayView<float> t, ArrayView<float> y, long count, int dim, double logMaxPeriod)
    {
        int half = dim / 2;
        long n = count * dim;
        for (long e = First; e < n; e += Step)
        {
            long r = e / dim;
            int j = (int)(e % dim);
            if (j >= 2 * half) { y[e] = 0f; continue; } // the odd dim's zero column
            int k = j < half ? j : j - half;
            float arg = Frequency(k, half, logMaxPeriod) * t[r];
            y[e] = j < half ? MathF.Cos(arg) : MathF.Sin(arg);
        }
    }

    public static void TimestepBackward(ArrayView<float> t, ArrayView<float> dy, ArrayView<float> dt, long count, int dim, double logMaxPeriod)
    {
        int half = dim / 2;
        for (long r = First; r < count; r += Step)
        {
            float acc = 0f;
            for (int k = 0; k < half; k++)
            {
                float f = Frequency(k, half, logMaxPeriod), arg = f * t[r];
                // d cos(t f)/dt = -f sin(t f), d sin(t f)/dt = f cos(t f)
                acc += f * (MathF.Cos(arg) * dy[r * dim + half + k] - MathF.Sin(arg) * dy[r * dim + k]);
            }
            dt[r] += acc;
        }
    }
}
