using System.Numerics;
using Repa.Kernels.Cpu;

namespace Repa.Runtime.Eval;

/// <summary>
/// Small float64 dense-matrix helpers for the evaluation maths: row-major arrays, products through the engine's own
/// cache-blocked GEMM (<see cref="CpuGemm"/>). Every output element of that GEMM is summed in the same order whatever
/// the thread count, so these products (and the metrics built on them) are deterministic.
/// </summary>
internal static unsafe class Dense
{
    /// <summary>Threads for the products: every core (the metrics run when nothing else does).</summary>
    public static int Threads => Environment.ProcessorCount;

    /// <summary>
    /// c[m, n] = alpha op(a) op(b) + beta c, op(a) [m, k] (a stored [k, m] when <paramref name="transA"/>),
    /// op(b) [k, n] (b stored [n, k] when <paramref name="transB"/>); leading dimensions are the stored row widths.
    /// </summary>
    public static void Gemm(bool transA, bool transB, int m, int n, int k, double alpha,
        ReadOnlySpan<double> a, int lda, ReadOnlySpan<double> b, int ldb, double beta, Span<double> c, int ldc)
    {
        if (m == 0 || n == 0) return;
        fixed (double* pa = a)
        fixed (double* pb = b)
        fixed (double* pc = c)
            CpuGemm.Gemm(transA, transB, m, n, k, alpha, pa, lda, 0, pb, ldb, 0, beta, pc, ldc, 0, 1, Threads);
    }

    /// <summary>Replaces a square matrix by (A + A^T)/2, removing the rounding asymmetry a product leaves.</summary>
    public static void Symmetrize(Span<double> a, int n)
    {
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
            {
                double v = 0.5 * (a[i * n + j] + a[j * n + i]);
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
    }

    /// <summary>x := c x - s y, y := s x + c y (a plane rotation of two rows), vectorised.</summary>
    public static void Rotate(Span<double> x, Span<double> y, double c, double s)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && x.Length >= Vector<double>.Count)
        {
            var vc = new Vector<double>(c);
            var vs = new Vector<double>(s);
            for (; i <= x.Length - Vector<double>.Count; i += Vector<double>.Count)
            {
                var xv = new Vector<double>(x[i..]);
                var yv = new Vector<double>(y[i..]);
                (vc * xv - vs * yv).CopyTo(x[i..]);
                (vs * xv + vc * yv).CopyTo(y[i..]);
            }
        }
        for (; i < x.Length; i++)
        {
            double xi = x[i], yi = y[i];
            x[i] = c * xi - s * yi;
            y[i] = s * xi + c * yi;
        }
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first NaN or infinity in <paramref name="values"/>.</summary>
    public static void RequireFinite(ReadOnlySpan<double> values, int cols, string what)
    {
        for (int i = 0; i < values.Length; i++)
            if (!double.IsFinite(values[i]))
                throw new ArgumentException($"{what}: row {i / cols}, feature {i % cols} is {values[i]}; features must be finite.");
    }
}
