using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Repa.Kernels.Cpu;

/// <summary>
/// Register-only FMA throughput: 16 independent Vector512 FMA chains per thread (12 Vector256 chains without AVX-512), so the loop
/// is bound by FMA issue rate, not latency. Reports fp32 GFLOP/s (2 flops per lane per FMA).
/// </summary>
public static class FmaPeak
{
    /// <summary>Runs the loop on <paramref name="threads"/> threads at once for about <paramref name="seconds"/>.</summary>
    public static double Measure(int threads, double seconds = 0.15)
    {
        // About 4.5-5 ns per iteration (16 zmm FMAs at one per cycle on a ~3.5 GHz Zen 4 core); the rate is measured, not assumed.
        long iters = (long)(seconds / 5e-9);
        using var start = new ManualResetEventSlim(false);
        var workers = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            workers[t] = new Thread(() => { start.Wait(); Loop(iters); }) { IsBackground = true };
            workers[t].Start();
        }
        Thread.Sleep(5);
        var sw = Stopwatch.StartNew();
        start.Set();
        foreach (var w in workers) w.Join();
        double s = sw.Elapsed.TotalSeconds;
        // Loop512: 16 chains x 16 lanes; Loop256: 12 chains (16 ymm registers without AVX-512) x 8 lanes.
        double flopsPerIter = Vector512.IsHardwareAccelerated ? 16 * 16 * 2 : 12 * 8 * 2;
        return threads * (double)iters * flopsPerIter / s / 1e9;
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Loop(long iters) => Vector512.IsHardwareAccelerated ? Loop512(iters) : Loop256(iters);

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Loop512(long iters)
    {
        var m = Vector512.Create(0.999999f); var a = Vector512.Create(1e-7f);
        Vector512<float> x0 = Vector512.Create(1f), x1 = x0 + a, x2 = x1 + a, x3 = x2 + a, x4 = x3 + a, x5 = x4 + a, x6 = x5 + a, x7 = x6 + a;
        Vector512<float> x8 = x7 + a, x9 = x8 + a, x10 = x9 + a, x11 = x10 + a, x12 = x11 + a, x13 = x12 + a, x14 = x13 + a, x15 = x14 + a;
        for (long i = 0; i < iters; i++)
        {
            x0 = Vector512.FusedMultiplyAdd(x0, m, a); x1 = Vector512.FusedMultiplyAdd(x1, m, a);
            x2 = Vector512.FusedMultiplyAdd(x2, m, a); x3 = Vector512.FusedMultiplyAdd(x3, m, a);
            x4 = Vector512.FusedMultiplyAdd(x4, m, a); x5 = Vector512.FusedMultiplyAdd(x5, m, a);
            x6 = Vector512.FusedMultiplyAdd(x6, m, a); x7 = Vector512.FusedMultiplyAdd(x7, m, a);
            x8 = Vector512.FusedMultiplyAdd(x8, m, a); x9 = Vector512.FusedMultiplyAdd(x9, m, a);
            x10 = Vector512.FusedMultiplyAdd(x10, m, a); x11 = Vector512.FusedMultiplyAdd(x11, m, a);
            x12 = Vector512.FusedMultiplyAdd(x12, m, a); x13 = Vector512.FusedMultiplyAdd(x13, m, a);
            x14 = Vector512.FusedMultiplyAdd(x14, m, a); x15 = Vector512.FusedMultiplyAdd(x15, m, a);
        }
        return (x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11 + x12 + x13 + x14 + x15)[0];
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Loop256(long iters)
    {
        var m = Vector256.Create(0.999999f); var a = Vector256.Create(1e-7f);
        Vector256<float> x0 = Vector256.Create(1f), x1 = x0 + a, x2 = x1 + a, x3 = x2 + a, x4 = x3 + a, x5 = x4 + a, x6 = x5 + a, x7 = x6 + a;
        Vector256<float> x8 = x7 + a, x9 = x8 + a, x10 = x9 + a, x11 = x10 + a;
        for (long i = 0; i < iters; i++)
        {
            x0 = Vector256.MultiplyAddEstimate(x0, m, a); x1 = Vector256.MultiplyAddEstimate(x1, m, a);
            x2 = Vector256.MultiplyAddEstimate(x2, m, a); x3 = Vector256.MultiplyAddEstimate(x3, m, a);
            x4 = Vector256.MultiplyAddEstimate(x4, m, a); x5 = Vector256.MultiplyAddEstimate(x5, m, a);
            x6 = Vector256.MultiplyAddEstimate(x6, m, a); x7 = Vector256.MultiplyAddEstimate(x7, m, a);
            x8 = Vector256.MultiplyAddEstimate(x8, m, a); x9 = Vector256.MultiplyAddEstimate(x9, m, a);
            x10 = Vector256.MultiplyAddEstimate(x10, m, a); x11 = Vector256.MultiplyAddEstimate(x11, m, a);
        }
        return (x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11)[0];
    }
}
