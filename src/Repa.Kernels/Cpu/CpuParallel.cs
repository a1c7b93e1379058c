namespace Repa.Kernels.Cpu;

/// <summary>Splits a range over the backend's threads in contiguous chunks; small ranges run inline.</summary>
internal static class CpuParallel
{
    /// <summary>Runs body(start, end) over [0, n) in at most <paramref name="threads"/> chunks of at least <paramref name="grain"/>.</summary>
    public static void For(long n, long grain, int threads, Action<long, long> body)
    {
        if (n <= 0) return;
        int chunks = (int)Math.Clamp(n / Math.Max(grain, 1), 1, threads);
        if (chunks == 1)
        {
            body(0, n);
            return;
        }
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = chunks }, c =>
        {
            long start = n * c / chunks, end = n * (c + 1) / chunks;
            body(start, end);
        });
    }
}
