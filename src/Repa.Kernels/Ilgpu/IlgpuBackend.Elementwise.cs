using ILGPU;
using Repa.Kernels.Cpu;

namespace Repa.Kernels.Ilgpu;

/// <summary>Activations, broadcast binary ops, axpby, sums, permutes and strided row copies: one thread per output
/// element in grid-stride loops (sums: one thread per output, or one group per output row when the reduction is
/// contiguous).</summary>
public sealed partial class IlgpuBackend
{
    public void ActivationForward(Activation activation, DeviceBuffer x, DeviceBuffer y, long n)
    {
        if (n <= 0) return;
        Run(Stride(n), IlgpuKernels.ActivationForward, F(x), F(y), (int)activation, n);
    }

    public void ActivationBackward(Activation activation, DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long n)
    {
        if (n <= 0) return;
        Run(Stride(n), IlgpuKernels.ActivationBackward, F(x), F(dy), F(dx), (int)activation, n);
    }

    public void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<long> stridesA, DeviceBuffer b, ReadOnlySpan<long> stridesB,
        DeviceBuffer y, ReadOnlySpan<int> shape)
    {
        var (sizes, sa, sb) = BroadcastLayout.MergeAxes(shape, stridesA, stridesB);
        long n = 1;
        foreach (int s in shape) n *= s;
        if (n == 0) return;
        var axes = Axes8.Create("binary", sizes, sa, sb);
        Run(Stride(n), IlgpuKernels.Binary, F(a), F(b), F(y), axes, (int)op, n);
    }

    public void Axpby(DeviceBuffer x, DeviceBuffer y, long n, double alpha, double beta)
    {
        if (n <= 0) return;
        Run(Stride(n), IlgpuKernels.Axpby, F(x), F(y), n, (float)alpha, (float)beta);
    }

    public void Sum(DeviceBuffer x, DeviceBuffer y, int outer, int reduce, int inner, double alpha, double beta)
    {
        long outputs = (long)outer * inner;
        if (outputs == 0) return;
        var shape = new SumShape(outer, reduce, inner, (float)alpha, (float)beta);
        // A contiguous reduction long enough to spread: one group per output with a tree in shared memory.
        if (inner == 1 && reduce >= 4 * GroupSize) Run(PerGroup(outer), IlgpuKernels.SumRows, F(x), F(y), shape);
        else Run(Stride(outputs), IlgpuKernels.SumColumns, F(x), F(y), shape);
    }

    public void Permute(DeviceBuffer x, DeviceBuffer y, ReadOnlySpan<int> shape, ReadOnlySpan<int> perm, double beta)
    {
        var (sizes, strides) = PermuteLayout.MergeAxes(shape, perm);
        long n = 1;
        foreach (int s in shape) n *= s;
        if (y.DType != x.DType) throw new ArgumentException($"permute: {x} and {y} differ in dtype.");
        if ((beta != 0 && y.DType != DType.F32) || y.DType == DType.F64) throw Unsupported(y.DType);
        if (n == 0) return;
        var axes = Axes8.Create("permute", sizes, strides, strides);
        // beta = 0 moves bits (float32 and int32 alike); otherwise y = beta y + x in float32.
        if (beta == 0) Run(Stride(n), IlgpuKernels.PermuteBits, Own(x).Elements<int>(), Own(y).Elements<int>(), axes, n);
        else Run(Stride(n), IlgpuKernels.PermuteAccumulate, F(x), F(y), axes, n, (float)beta);
    }

    public void CopyRows(DeviceBuffer source, long sourceOffset, long sourceStride, DeviceBuffer destination,
        long destinationOffset, long destinationStride, int rows, int width, double beta)
    {
        long n = (long)rows * width;
        if (n <= 0) return;
        if (source.DType != destination.DType) throw new ArgumentException($"copy rows: {source} and {destination} differ in dtype.");
        if ((beta != 0 && destination.DType != DType.F32) || destination.DType == DType.F64) throw Unsupported(destination.DType);
        var rowsShape = new RowCopy(sourceOffset, sourceStride, destinationOffset, destinationStride, width, n, (float)beta);
        if (beta == 0) Run(Stride(n), IlgpuKernels.CopyRowsBits, Own(source).Elements<int>(), Own(destination).Elements<int>(), rowsShape);
        else Run(Stride(n), IlgpuKernels.CopyRowsAccumulate, F(source), F(destination), rowsShape);
    }
}

/// <summary>Up to eight merged axes of a broadcast or permutation, passed to kernels by value: sizes and two strides each.</summary>
internal struct Axes8
{
    public int Rank;
    public long S0, S1, S2, S3, S4, S5, S6, S7;
    public long A0, A1, A2, A3, A4, A5, A6, A7;
    public long B0, B1, B2, B3, B4, B5, B6, B7;

    public const int MaxRank = 8;

    public static Axes8 Create(string op, IReadOnlyList<int> sizes, IReadOnlyList<long> a, IReadOnlyList<long> b)
    {
        if (sizes.Count > MaxRank)
            throw new NotSupportedException($"ilgpu {op}: {sizes.Count} axes that do not merge are more than the kernel's {MaxRank}; reshape the operands first.");
        var axes = new Axes8 { Rank = sizes.Count };
        for (int d = 0; d < sizes.Count; d++) axes.Set(d, sizes[d], a[d], b[d]);
        return axes;
    }

    private void Set(int d, long size, long a, long b)
    {
        switch (d)
        {
            case 0: S0 = size; A0 = a; B0 = b; break;
            case 1: S1 = size; A1 = a; B1 = b; break;
            case 2: S2 = size; A2 = a; B2 = b; break;
            case 3: S3 = size; A3 = a; B3 = b; break;
            case 4: S4 = size; A4 = a; B4 = b; break;
            case 5: S5 = size; A5 = a; B5 = b; break;
            case 6: S6 = size; A6 = a; B6 = b; break;
            default: S7 = size; A7 = a; B7 = b; break;
        }
    }

    public readonly long Size(int d) => d switch { 0 => S0, 1 => S1, 2 => S2, 3 => S3, 4 => S4, 5 => S5, 6 => S6, _ => S7 };
    public readonly long StrideA(int d) => d switch { 0 => A0, 1 => A1, 2 => A2, 3 => A3, 4 => A4, 5 => A5, 6 => A6, _ => A7 };
    public readonly long StrideB(int d) => d switch { 0 => B0, 1 => B1, 2 => B2, 3 => B3, 4 => B4, 5 => B5, 6 => B6, _ => B7 };
}

internal readonly record struct SumShape(int Outer, int Reduce, int Inner, float Alpha, float Beta);

internal readonly record struct RowCopy(long SourceOffset, long SourceStride, long DestinationOffset, long DestinationStride, int Width, long Count, float Beta);

internal static partial class IlgpuKernels
{
    /// <summary>tanh through exp (1 - 2 / (e^2u + 1)): exact at +-inf, and the same code on every accelerator.</summary>
    private static float Tanh(float u) => 1f - 2f / (MathF.Exp(2f * u) + 1f);

    private static float Sigmoid(float x) => 1f / (1f + MathF.Exp(-x));

    private const float GeluC = 0.7978845608028654f; // sqrt(2 / pi)
    private const float GeluA = 0.044715f;

    private static float Activate(int activation, float v) =>
        activation == (int)Activation.Gelu ? 0.5f * v * (1f + Tanh(GeluC * v * (1f + GeluA * v * v))) : v * Sigmoid(v);

    public static void ActivationForward(ArrayView<float> x, ArrayView<float> y, int activation, long n)
    {
        for (long i = First; i < n; i += Step) y[i] = Activate(activation, x[i]);
    }

    public static void ActivationBackward(ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dx, int activation, long n)
    {
        for (long i = First; i < n; i += Step)
        {
            float v = x[i], d;
            if (activation == (int)Activation.Gelu)
            {
                float t = Tanh(GeluC * v * (1f + GeluA * v * v));
                d = 0.5f * (1f + t) + 0.5f * v * (1f - t * t) * GeluC * (1f + 3f * GeluA * v * v);
            }
            else
            {
                float s = Sigmoid(v);
                d = s * (1f + v * (1f - s));
            }
            dx[i] += d * dy[i];
        }
    }

    public static void Binary(ArrayView<float> a, ArrayView<float> b, ArrayView<float> y, Axes8 axes, int op, long n)
    {
        for (long i = First; i < n; i += Step)
        {
            long rest = i, offA = 0, offB = 0;
            for (int d = axes.Rank - 1; d >= 0; d--)
            {
                long size = axes.Size(d), index = rest % size;
                rest /= size;
                offA += index * axes.StrideA(d);
                offB += index * axes.StrideB(d);
            }
            float va = a[offA], vb = b[offB];
            y[i] = op == (int)BinaryOp.Add ? va + vb : op == (int)BinaryOp.Sub ? va - vb : va * vb;
        }
    }

    public static void Axpby(ArrayView<float> x, ArrayView<float> y, long n, float alpha, float beta)
    {
        for (long i = First; i < n; i += Step)
            y[i] = beta == 0f ? alpha * x[i] : beta == 1f ? x[i] * alpha + y[i] : x[i] * alpha + y[i] * beta;
    }

    /// <summary>One thread per output (o, i), the reduction in order r = 0, 1, ... (coalesced over i).</summary>
    public static void SumColumns(ArrayView<float> x, ArrayView<float> y, SumShape s)
    {
        long outputs = (long)s.Outer * s.Inner;
        for (long j = First; j < outputs; j += Step)
        {
            long o = j / s.Inner, i = j % s.Inner;
            long baseIndex = o * s.Reduce * s.Inner + i;
            float acc = 0f;
            for (int r = 0; r < s.Reduce; r++) acc += x[baseIndex + (long)r * s.Inner];
            float v = s.Alpha * acc;
            y[j] = s.Beta == 0f ? v : v + s.Beta * y[j];
        }
    }

    /// <summary>One group per output row (inner = 1): strided float64 partial sums, then a tree in shared memory.</summary>
    public static void SumRows(ArrayView<float> x, ArrayView<float> y, SumShape s)
    {
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        for (int o = Grid.IdxX; o < s.Outer; o += Grid.DimX)
        {
            double acc = 0;
            long row = (long)o * s.Reduce;
            for (int r = Group.IdxX; r < s.Reduce; r += Group.DimX) acc += x[row + r];
            double total = GroupSum(acc, shared);
            if (Group.IdxX == 0)
            {
                float v = s.Alpha * (float)total;
                y[o] = s.Beta == 0f ? v : v + s.Beta * y[o];
            }
        }
    }

    private static long SourceOffset(Axes8 axes, long i)
    {
        long offset = 0;
        for (int d = axes.Rank - 1; d >= 0; d--)
        {
            long size = axes.Size(d);
            offset += i % size * axes.StrideA(d);
            i /= size;
        }
        return offset;
    }

    public static void PermuteBits(ArrayView<int> x, ArrayView<int> y, Axes8 axes, long n)
    {
        for (long i = First; i < n; i += Step) y[i] = x[SourceOffset(axes, i)];
    }

    public static void PermuteAccumulate(ArrayView<float> x, ArrayView<float> y, Axes8 axes, long n, float beta)
    {
        for (long i = First; i < n; i += Step) y[i] = beta * y[i] + x[SourceOffset(axes, i)];
    }

    public static void CopyRowsBits(ArrayView<int> x, ArrayView<int> y, RowCopy c)
    {
        for (long i = First; i < c.Count; i += Step)
        {
            long r = i / c.Width, j = i % c.Width;
            y[c.DestinationOffset + r * c.DestinationStride + j] = x[c.SourceOffset + r * c.SourceStride + j];
        }
    }

    public static void CopyRowsAccumulate(ArrayView<float> x, ArrayView<float> y, RowCopy c)
    {
        for (long i = First; i < c.Count; i += Step)
        {
            long r = i / c.Width, j = i % c.Width;
            long d = c.DestinationOffset + r * c.DestinationStride + j;
            float s = x[c.SourceOffset + r * c.SourceStride + j];
            y[d] = c.Beta == 1f ? y[d] + s : c.Beta * y[d] + s;
        }
    }

    // ---- group reductions (the group size is a power of two, at most MaxGroup) ----

    public const int MaxGroup = 256;

    /// <summary>The sum of every thread's <paramref name="value"/>, in a fixed tree order; every thread gets it.</summary>
    private static double GroupSum(double value, ArrayView<double> shared)
    {
        int t = Group.IdxX;
        shared[t] = value;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s /= 2)
        {
            if (t < s) shared[t] += shared[t + s];
            Group.Barrier();
        }
        double total = shared[0];
        Group.Barrier();
        return total;
    }
}
