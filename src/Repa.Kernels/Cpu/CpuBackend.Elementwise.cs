using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace Repa.Kernels.Cpu;

/// <summary>Activations, broadcast binary ops, axpby, sums, permutes and strided row copies.</summary>
public sealed unsafe partial class CpuBackend
{
    private const int Chunk = 2048; // elements per scratch chunk: fits L1 for both fp32 and fp64
    private const long Grain = 16384; // smallest range worth a thread

    public void ActivationForward(Activation activation, DeviceBuffer x, DeviceBuffer y, long n)
    {
        switch (x.DType)
        {
            case DType.F32: ActivationForward<float>(activation, Host(x).Ptr<float>(), Host(y).Ptr<float>(), n); break;
            case DType.F64: ActivationForward<double>(activation, Host(x).Ptr<double>(), Host(y).Ptr<double>(), n); break;
            default: throw Unsupported(x.DType);
        }
    }

    public void ActivationBackward(Activation activation, DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long n)
    {
        switch (x.DType)
        {
            case DType.F32: ActivationBackward<float>(activation, Host(x).Ptr<float>(), Host(dy).Ptr<float>(), Host(dx).Ptr<float>(), n); break;
            case DType.F64: ActivationBackward<double>(activation, Host(x).Ptr<double>(), Host(dy).Ptr<double>(), Host(dx).Ptr<double>(), n); break;
            default: throw Unsupported(x.DType);
        }
    }

    // GELU (tanh): 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). SiLU: x sigmoid(x).
    // Each chunk computes the transcendental part with TensorPrimitives (vectorised) into a stack buffer.
    private void ActivationForward<T>(Activation activation, T* x, T* y, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float) && Vector512.IsHardwareAccelerated)
        {
            CpuParallel.For(n, Grain, Threads, (start, end) => ActivationForward512(activation, (float*)x + start, (float*)y + start, end - start));
            return;
        }
        CpuParallel.For(n, Grain, Threads, (start, end) =>
        {
            Span<T> u = stackalloc T[Chunk];
            for (long s = start; s < end; s += Chunk)
            {
                int len = (int)Math.Min(Chunk, end - s);
                var xs = new ReadOnlySpan<T>(x + s, len);
                var ys = new Span<T>(y + s, len);
                var us = u[..len];
                if (activation == Activation.Gelu)
                {
                    GeluInner(xs, us);
                    TensorPrimitives.Tanh<T>(us, us);
                    TensorPrimitives.AddMultiply<T>(us, T.One, xs, ys);     // (1 + tanh) * x
                    TensorPrimitives.Multiply(ys, T.CreateChecked(0.5), ys);
                }
                else
                {
                    TensorPrimitives.Sigmoid<T>(xs, us);
                    TensorPrimitives.Multiply<T>(xs, us, ys);
                }
            }
        });
    }

    private static readonly double GeluC = Math.Sqrt(2.0 / Math.PI);
    private const double GeluA = 0.044715;

    private static void GeluInner<T>(ReadOnlySpan<T> x, Span<T> u) where T : unmanaged, IFloatingPointIeee754<T>
    {
        // u = c * x * (1 + a x^2)
        T c = T.CreateChecked(GeluC), a = T.CreateChecked(GeluA);
        TensorPrimitives.Multiply(x, x, u);
        TensorPrimitives.Multiply(u, a, u);
        TensorPrimitives.Add(u, T.One, u);
        TensorPrimitives.Multiply(u, x, u);
        TensorPrimitives.Multiply(u, c, u);
    }

    private void ActivationBackward<T>(Activation activation, T* x, T* dy, T* dx, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float) && Vector512.IsHardwareAccelerated)
        {
            CpuParallel.For(n, Grain, Threads, (start, end) =>
                ActivationBackward512(activation, (float*)x + start, (float*)dy + start, (float*)dx + start, end - start));
            return;
        }
        CpuParallel.For(n, Grain, Threads, (start, end) =>
        {
            Span<T> u = stackalloc T[Chunk];
            T half = T.CreateChecked(0.5), c = T.CreateChecked(GeluC), a3 = T.CreateChecked(3 * GeluA);
            for (long s = start; s < end; s += Chunk)
            {
                int len = (int)Math.Min(Chunk, end - s);
                T* xs = x + s, dys = dy + s, dxs = dx + s;
                if (activation == Activation.Gelu)
                {
                    GeluInner(new ReadOnlySpan<T>(xs, len), u[..len]);
                    TensorPrimitives.Tanh<T>(u[..len], u[..len]);
                    for (int i = 0; i < len; i++)
                    {
                        T xi = xs[i], th = u[i];
                        T d = half * (T.One + th) + half * xi * (T.One - th * th) * c * (T.One + a3 * xi * xi);
                        dxs[i] += d * dys[i];
                    }
                }
                else
                {
                    TensorPrimitives.Sigmoid<T>(new ReadOnlySpan<T>(xs, len), u[..len]);
                    for (int i = 0; i < len; i++)
                    {
                        T sg = u[i];
                        dxs[i] += sg * (T.One + xs[i] * (T.One - sg)) * dys[i];
                    }
                }
            }
        });
    }

    // fp32 with AVX-512: one fused pass per element on FastMath's exp (TensorPrimitives' float tanh/sigmoid go through
    // double and made GELU compute-bound at ~12 GB/s). The scalar tail uses the same formulas.
    private static void ActivationForward512(Activation activation, float* x, float* y, long n)
    {
        long i = 0;
        var half = Vector512.Create(0.5f);
        var c = Vector512.Create((float)GeluC);
        var a = Vector512.Create((float)GeluA);
        for (; i <= n - 16; i += 16)
        {
            var v = Vector512.Load(x + i);
            Vector512<float> r = activation == Activation.Gelu
                ? half * v * (Vector512<float>.One + FastMath.Tanh(c * v * Vector512.FusedMultiplyAdd(a * v, v, Vector512<float>.One)))
                : v * FastMath.Sigmoid(v);
            r.Store(y + i);
        }
        for (; i < n; i++)
        {
            float v = x[i];
            y[i] = activation == Activation.Gelu
                ? 0.5f * v * (1 + MathF.Tanh((float)GeluC * v * (1 + (float)GeluA * v * v)))
                : v / (1 + MathF.Exp(-v));
        }
    }

    private static void ActivationBackward512(Activation activation, float* x, float* dy, float* dx, long n)
    {
        long i = 0;
        var one = Vector512<float>.One;
        var half = Vector512.Create(0.5f);
        var c = Vector512.Create((float)GeluC);
        var a = Vector512.Create((float)GeluA);
        var a3 = Vector512.Create((float)(3 * GeluA));
        for (; i <= n - 16; i += 16)
        {
            var v = Vector512.Load(x + i);
            Vector512<float> d;
            if (activation == Activation.Gelu)
            {
                var t = FastMath.Tanh(c * v * Vector512.FusedMultiplyAdd(a * v, v, one));
                d = half * (one + t) + half * v * (one - t * t) * c * Vector512.FusedMultiplyAdd(a3 * v, v, one);
            }
            else
            {
                var s = FastMath.Sigmoid(v);
                d = s * Vector512.FusedMultiplyAdd(v, one - s, one);
            }
            Vector512.FusedMultiplyAdd(d, Vector512.Load(dy + i), Vector512.Load(dx + i)).Store(dx + i);
        }
        for (; i < n; i++)
        {
            float v = x[i], d;
            if (activation == Activation.Gelu)
            {
                float t = MathF.Tanh((float)GeluC * v * (1 + (float)GeluA * v * v));
                d = 0.5f * (1 + t) + 0.5f * v * (1 - t * t) * (float)GeluC * (1 + 3 * (float)GeluA * v * v);
            }
            else
            {
                float s = 1 / (1 + MathF.Exp(-v));
                d = s * (1 + v * (1 - s));
            }
            dx[i] += d * dy[i];
        }
    }

    public void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<long> stridesA, DeviceBuffer b, ReadOnlySpan<long> stridesB,
        DeviceBuffer y, ReadOnlySpan<int> shape)
    {
        var layout = BroadcastLayout.Create(shape, stridesA, stridesB);
        switch (y.DType)
        {
            case DType.F32: Binary<float>(op, Host(a).Ptr<float>(), Host(b).Ptr<float>(), Host(y).Ptr<float>(), layout); break;
            case DType.F64: Binary<double>(op, Host(a).Ptr<double>(), Host(b).Ptr<double>(), Host(y).Ptr<double>(), layout); break;
            default: throw Unsupported(y.DType);
        }
    }

    private void Binary<T>(BinaryOp op, T* a, T* b, T* y, BroadcastLayout layout) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int inner = layout.Inner;
        long rowGrain = Math.Max(1, Grain / Math.Max(inner, 1));
        CpuParallel.For(layout.Rows, rowGrain, Threads, (start, end) =>
        {
            for (long r = start; r < end; r++)
            {
                layout.RowOffsets(r, out long offA, out long offB);
                var ys = new Span<T>(y + r * inner, inner);
                T* pa = a + offA, pb = b + offB;
                bool va = layout.InnerStrideA != 0, vb = layout.InnerStrideB != 0;
                switch (op, va, vb)
                {
                    case (BinaryOp.Add, true, true): TensorPrimitives.Add(new ReadOnlySpan<T>(pa, inner), new ReadOnlySpan<T>(pb, inner), ys); break;
                    case (BinaryOp.Add, true, false): TensorPrimitives.Add(new ReadOnlySpan<T>(pa, inner), *pb, ys); break;
                    case (BinaryOp.Add, false, true): TensorPrimitives.Add(new ReadOnlySpan<T>(pb, inner), *pa, ys); break;
                    case (BinaryOp.Sub, true, true): TensorPrimitives.Subtract(new ReadOnlySpan<T>(pa, inner), new ReadOnlySpan<T>(pb, inner), ys); break;
                    case (BinaryOp.Sub, true, false): TensorPrimitives.Subtract(new ReadOnlySpan<T>(pa, inner), *pb, ys); break;
                    case (BinaryOp.Sub, false, true): TensorPrimitives.Subtract(*pa, new ReadOnlySpan<T>(pb, inner), ys); break;
                    case (BinaryOp.Mul, true, true): TensorPrimitives.Multiply(new ReadOnlySpan<T>(pa, inner), new ReadOnlySpan<T>(pb, inner), ys); break;
                    case (BinaryOp.Mul, true, false): TensorPrimitives.Multiply(new ReadOnlySpan<T>(pa, inner), *pb, ys); break;
                    case (BinaryOp.Mul, false, true): TensorPrimitives.Multiply(new ReadOnlySpan<T>(pb, inner), *pa, ys); break;
                    default: ys.Fill(ApplyScalar(op, *pa, *pb)); break;
                }
            }
        });
    }

    private static T ApplyScalar<T>(BinaryOp op, T a, T b) where T : IFloatingPointIeee754<T> => op switch
    {
        BinaryOp.Add => a + b,
        BinaryOp.Sub => a - b,
        _ => a * b,
    };

    public void Axpby(DeviceBuffer x, DeviceBuffer y, long n, double alpha, double beta)
    {
        switch (y.DType)
        {
            case DType.F32: Axpby(Host(x).Ptr<float>(), Host(y).Ptr<float>(), n, (float)alpha, (float)beta); break;
            case DType.F64: Axpby(Host(x).Ptr<double>(), Host(y).Ptr<double>(), n, alpha, beta); break;
            default: throw Unsupported(y.DType);
        }
    }

    private void Axpby<T>(T* x, T* y, long n, T alpha, T beta) where T : unmanaged, IFloatingPointIeee754<T>
    {
        CpuParallel.For(n, Grain, Threads, (start, end) =>
        {
            for (long s = start; s < end; s += int.MaxValue / 2)
            {
                int len = (int)Math.Min(int.MaxValue / 2, end - s);
                var xs = new ReadOnlySpan<T>(x + s, len);
                var ys = new Span<T>(y + s, len);
                if (beta == T.Zero) TensorPrimitives.Multiply(xs, alpha, ys);
                else if (beta == T.One) TensorPrimitives.MultiplyAdd(xs, alpha, ys, ys);
                else
                {
                    TensorPrimitives.Multiply(ys, beta, ys);
                    TensorPrimitives.MultiplyAdd(xs, alpha, ys, ys);
                }
            }
        });
    }

    public void Sum(DeviceBuffer x, DeviceBuffer y, int outer, int reduce, int inner, double alpha, double beta)
    {
        switch (y.DType)
        {
            case DType.F32: Sum(Host(x).Ptr<float>(), Host(y).Ptr<float>(), outer, reduce, inner, (float)alpha, (float)beta); break;
            case DType.F64: Sum(Host(x).Ptr<double>(), Host(y).Ptr<double>(), outer, reduce, inner, alpha, beta); break;
            default: throw Unsupported(y.DType);
        }
    }

    private void Sum<T>(T* x, T* y, int outer, int reduce, int inner, T alpha, T beta) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (inner == 1)
        {
            // Contiguous reductions: one vectorised sum per output (pairwise inside TensorPrimitives.Sum).
            CpuParallel.For(outer, Math.Max(1, Grain / Math.Max(reduce, 1)), Threads, (start, end) =>
            {
                for (long o = start; o < end; o++)
                {
                    T s = alpha * TensorPrimitives.Sum(new ReadOnlySpan<T>(x + o * reduce, reduce));
                    y[o] = beta == T.Zero ? s : s + beta * y[o];
                }
            });
            return;
        }
        // Strided reductions: split the inner axis in column blocks and accumulate rows into a stack buffer.
        const int Block = 256;
        int blocks = (inner + Block - 1) / Block;
        CpuParallel.For((long)outer * blocks, Math.Max(1, Grain / ((long)Math.Max(reduce, 1) * Block)), Threads, (start, end) =>
        {
            Span<T> acc = stackalloc T[Block];
            for (long job = start; job < end; job++)
            {
                long o = job / blocks;
                int c0 = (int)(job % blocks) * Block, len = Math.Min(Block, inner - c0);
                var accs = acc[..len];
                accs.Clear();
                T* row = x + o * reduce * inner + c0;
                for (int r = 0; r < reduce; r++) TensorPrimitives.Add(accs, new ReadOnlySpan<T>(row + (long)r * inner, len), accs);
                var ys = new Span<T>(y + o * inner + c0, len);
                if (beta == T.Zero) TensorPrimitives.Multiply(accs, alpha, ys);
                else
                {
                    TensorPrimitives.Multiply(ys, beta, ys);
                    TensorPrimitives.MultiplyAdd(accs, alpha, ys, ys);
                }
            }
        });
    }

    public void Permute(DeviceBuffer x, DeviceBuffer y, ReadOnlySpan<int> shape, ReadOnlySpan<int> perm, double beta)
    {
        var layout = PermuteLayout.Create(shape, perm);
        switch (y.DType)
        {
            case DType.F32: Permute(Host(x).Ptr<float>(), Host(y).Ptr<float>(), layout, (float)beta); break;
            case DType.F64: Permute(Host(x).Ptr<double>(), Host(y).Ptr<double>(), layout, beta); break;
            case DType.I32 when beta == 0: Permute(Host(x).Ptr<float>(), Host(y).Ptr<float>(), layout, 0f); break; // bit copy
            default: throw Unsupported(y.DType);
        }
    }

    private void Permute<T>(T* x, T* y, PermuteLayout layout, T beta) where T : unmanaged, IFloatingPointIeee754<T>
    {
        // Output rows (last output axis) are written contiguously; the source is read with its stride along that axis.
        int inner = layout.Inner;
        long stride = layout.InnerSourceStride;
        CpuParallel.For(layout.Rows, Math.Max(1, Grain / Math.Max(inner, 1)), Threads, (start, end) =>
        {
            for (long r = start; r < end; r++)
            {
                T* src = x + layout.SourceOffset(r);
                T* dst = y + r * inner;
                if (stride == 1)
                {
                    var s = new ReadOnlySpan<T>(src, inner);
                    var d = new Span<T>(dst, inner);
                    if (beta == T.Zero) s.CopyTo(d);
                    else { TensorPrimitives.Multiply(d, beta, d); TensorPrimitives.Add(d, s, d); }
                }
                else if (beta == T.Zero)
                    for (int j = 0; j < inner; j++) dst[j] = src[j * stride];
                else
                    for (int j = 0; j < inner; j++) dst[j] = beta * dst[j] + src[j * stride];
            }
        });
    }

    public void CopyRows(DeviceBuffer source, long sourceOffset, long sourceStride, DeviceBuffer destination,
        long destinationOffset, long destinationStride, int rows, int width, double beta)
    {
        switch (destination.DType)
        {
            case DType.F32: CopyRows(Host(source).Ptr<float>() + sourceOffset, sourceStride, Host(destination).Ptr<float>() + destinationOffset, destinationStride, rows, width, (float)beta); break;
            case DType.F64: CopyRows(Host(source).Ptr<double>() + sourceOffset, sourceStride, Host(destination).Ptr<double>() + destinationOffset, destinationStride, rows, width, beta); break;
            case DType.I32 when beta == 0: CopyRows(Host(source).Ptr<float>() + sourceOffset, sourceStride, Host(destination).Ptr<float>() + destinationOffset, destinationStride, rows, width, 0f); break;
            default: throw Unsupported(destination.DType);
        }
    }

    private void CopyRows<T>(T* src, long srcStride, T* dst, long dstStride, int rows, int width, T beta) where T : unmanaged, IFloatingPointIeee754<T>
    {
        CpuParallel.For(rows, Math.Max(1, Grain / Math.Max(width, 1)), Threads, (start, end) =>
        {
            for (long r = start; r < end; r++)
            {
                var s = new ReadOnlySpan<T>(src + r * srcStride, width);
                var d = new Span<T>(dst + r * dstStride, width);
                if (beta == T.Zero) s.CopyTo(d);
                else if (beta == T.One) TensorPrimitives.Add(d, s, d);
                else { TensorPrimitives.Multiply(d, beta, d); TensorPrimitives.Add(d, s, d); }
            }
        });
    }
}
