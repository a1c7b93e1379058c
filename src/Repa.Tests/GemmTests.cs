using System.Numerics;
using NUnit.Framework;
using Repa.Kernels.Cpu;

namespace Repa.Tests;

/// <summary>CpuGemm against a naive triple loop accumulated in double.</summary>
[TestFixture]
[Category("Equivalence")]
public unsafe class GemmTests
{
    private const double FloatTol = 1e-5, DoubleTol = 1e-12;

    private static readonly (bool TA, bool TB)[] Transposes = [(false, false), (false, true), (true, false), (true, true)];

    /// <summary>
    /// Runs one configuration and checks every element: |C - ref| &lt;= tol * (|alpha| sum_p |a||b| + |beta||C0|).
    /// ldPad widens every leading dimension; broadcastA uses strideA = 0.
    /// </summary>
    private static void Check<T>(bool ta, bool tb, int m, int n, int k, double alpha, double beta, int batch = 1,
        bool broadcastA = false, int ldPad = 0, int threads = 1, bool nanC = false, int seed = 1)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        double tol = typeof(T) == typeof(float) ? FloatTol : DoubleTol;
        var rng = new Random(seed * 7919 + m * 31 + n * 17 + k);
        int aRows = ta ? k : m, aCols = ta ? m : k, bRows = tb ? n : k, bCols = tb ? k : n;
        int lda = aCols + ldPad, ldb = bCols + ldPad, ldc = n + ldPad;
        long strideA = broadcastA ? 0 : (long)aRows * lda + 5, strideB = (long)bRows * ldb + 3, strideC = (long)m * ldc + 2;
        var a = new T[Math.Max(1, (broadcastA ? 1 : batch) * strideA + (broadcastA ? (long)aRows * lda : 0))];
        var b = new T[Math.Max(1, batch * strideB)];
        var c = new T[Math.Max(1, batch * strideC)];
        for (int i = 0; i < a.Length; i++) a[i] = T.CreateTruncating(rng.NextDouble() * 2 - 1);
        for (int i = 0; i < b.Length; i++) b[i] = T.CreateTruncating(rng.NextDouble() * 2 - 1);
        for (int i = 0; i < c.Length; i++) c[i] = nanC ? T.NaN : T.CreateTruncating(rng.NextDouble() * 2 - 1);
        var c0 = (T[])c.Clone();

        fixed (T* pa = a, pb = b, pc = c)
            CpuGemm.Gemm(ta, tb, m, n, k, T.CreateTruncating(alpha), pa, lda, strideA, pb, ldb, strideB,
                T.CreateTruncating(beta), pc, ldc, strideC, batch, threads);

        double worst = 0; string where = "";
        for (int bi = 0; bi < batch; bi++)
        {
            long oa = bi * strideA, ob = bi * strideB, oc = bi * strideC;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double s = 0, sa = 0;
                    for (int p = 0; p < k; p++)
                    {
                        double av = double.CreateTruncating(ta ? a[oa + (long)p * lda + i] : a[oa + (long)i * lda + p]);
                        double bv = double.CreateTruncating(tb ? b[ob + (long)j * ldb + p] : b[ob + (long)p * ldb + j]);
                        s += av * bv; sa += Math.Abs(av * bv);
                    }
                    double old = double.CreateTruncating(c0[oc + (long)i * ldc + j]);
                    double expect = alpha * s + (beta == 0 ? 0 : beta * old);
                    double scale = Math.Abs(alpha) * sa + (beta == 0 ? 0 : Math.Abs(beta * old)) + 1e-30;
                    double got = double.CreateTruncating(c[oc + (long)i * ldc + j]);
                    double err = double.IsFinite(got) ? Math.Abs(got - expect) / scale : double.PositiveInfinity;
                    if (!(err <= worst)) { worst = err; where = $"batch {bi} ({i},{j}) got {got} expected {expect}"; }
                }
            // Padding between rows (ld > n) and between batch items must be untouched.
            for (int i = 0; i < m; i++)
                for (int j = n; j < ldc; j++)
                    Assert.That(c[oc + (long)i * ldc + j], Is.EqualTo(c0[oc + (long)i * ldc + j]).Or.NaN, "padding of C was written");
        }
        Assert.That(worst, Is.LessThanOrEqualTo(tol),
            $"{typeof(T).Name} ta={ta} tb={tb} m={m} n={n} k={k} alpha={alpha} beta={beta} batch={batch} threads={threads}: worst rel err {worst:E3} at {where}");
    }

    [TestCase(1, 1, 1)]
    [TestCase(7, 5, 3)]
    [TestCase(33, 65, 17)]
    [TestCase(1, 300, 257)]
    [TestCase(129, 1, 64)]
    [TestCase(100, 200, 300)]
    [TestCase(15, 33, 9)]
    [TestCase(28, 64, 8)]
    public void AwkwardShapes_AllTransposes(int m, int n, int k)
    {
        foreach (var (ta, tb) in Transposes)
            foreach (int threads in new[] { 1, 2 })
            {
                Check<float>(ta, tb, m, n, k, 1, 0, threads: threads);
                Check<double>(ta, tb, m, n, k, 1, 0, threads: threads);
            }
    }

    [TestCase(1.0, 0.0)]
    [TestCase(1.0, 1.0)]
    [TestCase(-0.5, 1.0)]
    [TestCase(2.0, -0.75)]
    [TestCase(0.3, 0.5)]
    [TestCase(0.0, 0.5)]
    public void AlphaBeta(double alpha, double beta)
    {
        foreach (var (ta, tb) in Transposes)
        {
            Check<float>(ta, tb, 45, 70, 37, alpha, beta);
            Check<double>(ta, tb, 45, 70, 37, alpha, beta);
            Check<float>(ta, tb, 100, 200, 300, alpha, beta, threads: 2);
            Check<double>(ta, tb, 100, 200, 300, alpha, beta, threads: 2);
        }
    }

    [Test]
    public void BetaZero_IgnoresNaNInC()
    {
        foreach (var (ta, tb) in Transposes)
            foreach (int threads in new[] { 1, 2 })
            {
                Check<float>(ta, tb, 33, 65, 17, 1.5, 0, nanC: true, threads: threads);
                Check<double>(ta, tb, 33, 65, 17, 1.5, 0, nanC: true, threads: threads);
                Check<float>(ta, tb, 100, 200, 300, 1, 0, nanC: true, threads: threads);
                Check<double>(ta, tb, 100, 200, 300, 1, 0, nanC: true, threads: threads);
            }
    }

    [Test]
    public void KZero_ScalesC()
    {
        Check<float>(false, false, 9, 10, 0, 1, 0, nanC: true);
        Check<float>(false, true, 9, 10, 0, 1, 0.5);
        Check<double>(true, false, 9, 10, 0, 1, -2);
    }

    [Test]
    public void Batched_BroadcastA()
    {
        foreach (var (ta, tb) in Transposes)
            foreach (int threads in new[] { 1, 2 })
            {
                Check<float>(ta, tb, 33, 40, 50, 1, 0, batch: 3, broadcastA: true, threads: threads);
                Check<float>(ta, tb, 60, 70, 80, 0.5, 1, batch: 4, threads: threads);
                Check<double>(ta, tb, 33, 40, 50, 1, 0.25, batch: 3, broadcastA: true, threads: threads);
                Check<float>(ta, tb, 3, 2, 1, 1, 0, batch: 5, broadcastA: true, threads: threads);
            }
    }

    [Test]
    public void LeadingDimensionsLargerThanWidth()
    {
        foreach (var (ta, tb) in Transposes)
            foreach (int threads in new[] { 1, 2 })
            {
                Check<float>(ta, tb, 33, 65, 17, 1, 0.5, ldPad: 7, threads: threads);
                Check<double>(ta, tb, 33, 65, 17, 1, 0.5, ldPad: 3, threads: threads);
                Check<float>(ta, tb, 100, 200, 300, 1, 0, ldPad: 5, threads: threads);
            }
    }

    /// <summary>Shapes that cross the KC/NC blocking and split the N dimension between threads.</summary>
    [Test]
    public void Blocking_And_ThreadSplits()
    {
        foreach (var (ta, tb) in Transposes)
        {
            Check<float>(ta, tb, 64, 1100, 700, 1, 0.5, threads: 2);
            Check<double>(ta, tb, 40, 600, 530, 1, 0.5, threads: 2);
            Check<float>(ta, tb, 3, 2000, 100, 1, 0, threads: 2);
            Check<float>(ta, tb, 131, 97, 260, -1, 1, threads: 3);
            Check<float>(ta, tb, 300, 70, 600, 0.5, 0.5, threads: 1);
            Check<double>(ta, tb, 300, 40, 300, 1, 0, threads: 1, nanC: true);
        }
    }

    [Test]
    public void SteadyStateCalls_DoNotAllocate()
    {
        const int m = 200, n = 160, k = 150;
        var a = new float[m * k]; var b = new float[k * n]; var c = new float[m * n];
        var ad = new double[m * k]; var bd = new double[k * n]; var cd = new double[m * n];
        fixed (float* pa = a, pb = b, pc = c)
        fixed (double* pad = ad, pbd = bd, pcd = cd)
        {
            static void Call(float* pa, float* pb, float* pc, double* pad, double* pbd, double* pcd)
            {
                for (int t = 1; t <= 2; t++)
                    foreach (var (ta, tb) in Transposes)
                    {
                        CpuGemm.Gemm(ta, tb, m, n, k, 1f, pa, ta ? m : k, 0, pb, tb ? k : n, 0, 0f, pc, n, 0, 1, t);
                        CpuGemm.Gemm(ta, tb, m, n, k, 1.0, pad, ta ? m : k, 0, pbd, tb ? k : n, 0, 0.0, pcd, n, 0, 1, t);
                    }
            }
            for (int i = 0; i < 3; i++) Call(pa, pb, pc, pad, pbd, pcd); // warm-up: JIT, worker thread, packing buffers
            long before = GC.GetTotalAllocatedBytes(precise: true);
            for (int i = 0; i < 5; i++) Call(pa, pb, pc, pad, pbd, pcd);
            long after = GC.GetTotalAllocatedBytes(precise: true);
            Assert.That(after - before, Is.LessThan(1024), "steady-state GEMM calls allocated on the managed heap");
        }
    }

    /// <summary>Many back-to-back pooled calls: each must finish completely before Gemm returns.</summary>
    [Test]
    public void BackToBack_TwoThreadCalls_AreComplete()
    {
        const int m = 96, n = 160, k = 72; // above the single-thread threshold
        var rng = new Random(5);
        var a = new float[m * k]; var b = new float[k * n];
        for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        for (int i = 0; i < b.Length; i++) b[i] = (float)(rng.NextDouble() * 2 - 1);
        var expect = new float[m * n]; var c = new float[m * n];
        fixed (float* pa = a, pb = b, pe = expect, pc = c)
        {
            CpuGemm.Gemm(false, false, m, n, k, 1f, pa, k, 0, pb, n, 0, 0f, pe, n, 0, 1, 1);
            for (int it = 0; it < 400; it++)
            {
                new Span<float>(c).Fill(float.NaN);
                CpuGemm.Gemm(false, false, m, n, k, 1f, pa, k, 0, pb, n, 0, 0f, pc, n, 0, 1, 2);
                for (int i = 0; i < c.Length; i++)
                    if (!(Math.Abs(c[i] - expect[i]) <= 1e-4f)) Assert.Fail($"call {it}: element {i} is {c[i]}, expected {expect[i]}");
            }
        }
    }
}
