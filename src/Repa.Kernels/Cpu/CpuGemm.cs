using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Repa.Kernels.Cpu;

/// <summary>
/// Managed, multithreaded, cache-blocked GEMM (row-major, BLAS-like semantics).
/// <para>
/// Structure (GotoBLAS/BLIS style, with the SIMD direction along N because C is row-major):
/// for each NC-column block and KC-deep slice, the B slice is packed into NR-wide panels
/// (KC x NC, sized to stay in L2); then for each MR-row panel of the thread's rows the A panel is
/// packed (MR x KC, k-major, alpha folded in, lives in L1) and the micro-kernel sweeps the B panels.
/// The float/double micro-kernel keeps a 14 x 2-vector tile of C in 28 zmm accumulators
/// (Vector512) or a 6 x 2-vector tile in 12 ymm accumulators (Vector256 fallback).
/// Transposes are absorbed by the packing routines; edge tiles go through a small stack tile.
/// </para>
/// <para>
/// Threading: the (batch x M-panel) space is split evenly among threads (each thread packs its own
/// B slices, so no barriers are needed inside a call); when there are too few row panels the N
/// panels are split instead. Workers are persistent background threads; packing buffers are
/// per-thread native allocations made once, so steady-state calls do not allocate.
/// </para>
/// </summary>
public static unsafe class CpuGemm
{
    /// <summary>Problems with fewer multiply-adds than this (m*n*k*batch) run on the caller thread.</summary>
    internal const long SingleThreadFlopThreshold = 64L * 64 * 64;

    // Blocking parameters (elements). KC: depth of a packed slice; NC: width of a packed B block.
    internal static int KcFloat = 512, NcFloat = 1024, KcDouble = 256, NcDouble = 512;

    /// <summary>Rows of A packed together (a multiple of MR is used); bounds the packed A block to ~L2/2.</summary>
    internal static int McRows = 252, McRowsNN = 14;

    /// <summary>Upper bound on a packed A block (bytes) for transposed A.</summary>
    internal static long ABlockBytes = 512 << 10;

    /// <summary>Software prefetch distance (stored rows) when packing transposed A; 0 disables.</summary>
    internal static int PrefetchRowsAhead = 12;

    /// <summary>Upper bound on the packed B block (bytes) used to deepen KC for narrow N; 0 keeps KC fixed.</summary>
    internal static long BBlockBytes = 1 << 20;

    /// <summary>
    /// Batched GEMM: for each i in [0, batch): C_i = alpha * op(A_i) * op(B_i) + beta * C_i, row-major,
    /// with op(A_i) [m, k], op(B_i) [k, n], C_i [m, n] (leading dimension ldc), A_i = a + i * strideA
    /// (strideA 0 broadcasts A), likewise B and C. transA: A is stored [k, m] with leading dimension lda.
    /// beta == 0 ignores the previous contents of C (NaN safe). threads: worker threads to use
    /// (1 = run on the caller thread; small problems always run single-threaded).
    /// </summary>
    public static void Gemm<T>(bool transA, bool transB, int m, int n, int k, T alpha, T* a, int lda, long strideA,
        T* b, int ldb, long strideB, T beta, T* c, int ldc, long strideC, int batch, int threads)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (m < 0 || n < 0 || k < 0 || batch < 0) throw new ArgumentOutOfRangeException(nameof(m), "m, n, k and batch must be non-negative.");
        if (m == 0 || n == 0 || batch == 0) return;
        if (ldc < n) throw new ArgumentOutOfRangeException(nameof(ldc), "ldc must be >= n.");
        if (k > 0)
        {
            if (lda < (transA ? m : k)) throw new ArgumentOutOfRangeException(nameof(lda), "lda is smaller than the stored row width of A.");
            if (ldb < (transB ? k : n)) throw new ArgumentOutOfRangeException(nameof(ldb), "ldb is smaller than the stored row width of B.");
        }
        if (k == 0 || alpha == T.Zero)
        {
            for (int bi = 0; bi < batch; bi++) ScaleC(c + bi * strideC, m, n, ldc, beta);
            return;
        }

        if (typeof(T) == typeof(float) || typeof(T) == typeof(double))
        {
            if (!Vector256.IsHardwareAccelerated)
            {
                for (int bi = 0; bi < batch; bi++)
                    Reference(transA, transB, m, n, k, alpha, a + bi * strideA, lda, b + bi * strideB, ldb, beta, c + bi * strideC, ldc);
                return;
            }
            var args = new Args<T>
            {
                TransA = transA, TransB = transB, M = m, N = n, K = k, Alpha = alpha, Beta = beta,
                A = a, Lda = lda, StrideA = strideA, B = b, Ldb = ldb, StrideB = strideB, C = c, Ldc = ldc, StrideC = strideC,
                Batch = batch,
            };
            int mr = Mr<T>(), nr = Nr<T>();
            long work = (long)m * n * k * batch;
            int t = threads < 1 ? 1 : Math.Min(threads, 256);
            if (work < SingleThreadFlopThreshold) t = 1;
            long rowPanels = (long)batch * ((m + mr - 1) / mr);
            int colPanels = (n + nr - 1) / nr;
            if (t > 1)
            {
                if (rowPanels >= 2L * t || rowPanels >= colPanels) { args.SplitN = false; t = (int)Math.Min(t, rowPanels); }
                else { args.SplitN = true; t = Math.Min(t, colPanels); }
            }
            if (t <= 1) { args.SplitN = false; RunPart<T>(0, 1, &args); }
            else GemmPool.Run(t, &RunPart<T>, &args);
            return;
        }

        for (int bi = 0; bi < batch; bi++)
            Reference(transA, transB, m, n, k, alpha, a + bi * strideA, lda, b + bi * strideB, ldb, beta, c + bi * strideC, ldc);
    }

    private struct Args<T> where T : unmanaged
    {
        public bool TransA, TransB, SplitN;
        public int M, N, K, Lda, Ldb, Ldc, Batch;
        public long StrideA, StrideB, StrideC;
        public T Alpha, Beta;
        public T* A, B, C;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Mr<T>() where T : unmanaged => Vector512.IsHardwareAccelerated ? 14 : 6;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Nr<T>() where T : unmanaged => Vector512.IsHardwareAccelerated ? 2 * Vector512<T>.Count : 2 * Vector256<T>.Count;

    /// <summary>Part <paramref name="part"/> of <paramref name="parts"/> of the job (called on the caller and on pool workers).</summary>
    private static void RunPart<T>(int part, int parts, void* argPtr) where T : unmanaged, IFloatingPointIeee754<T>
    {
        ref Args<T> g = ref Unsafe.AsRef<Args<T>>(argPtr);
        PackBuffers buf = PackBuffers.ForCurrentThread();
        int mr = Mr<T>(), nr = Nr<T>();
        int m = g.M;
        if (!g.SplitN)
        {
            long panelsPerBatch = (m + mr - 1) / mr;
            long total = panelsPerBatch * g.Batch;
            long start = total * part / parts, end = total * (part + 1) / parts;
            while (start < end)
            {
                long bi = start / panelsPerBatch;
                long p0 = start - bi * panelsPerBatch;
                long p1 = Math.Min(panelsPerBatch, p0 + (end - start));
                int i0 = (int)(p0 * mr), i1 = (int)Math.Min(m, p1 * mr);
                Block(ref g, buf, bi, i0, i1, 0, g.N);
                start += p1 - p0;
            }
        }
        else
        {
            long colPanels = (g.N + nr - 1) / nr;
            int j0 = (int)(colPanels * part / parts) * nr, j1 = (int)Math.Min(g.N, colPanels * (part + 1) / parts * nr);
            if (j0 >= j1) return;
            for (long bi = 0; bi < g.Batch; bi++) Block(ref g, buf, bi, 0, m, j0, j1);
        }
    }

    /// <summary>Rows [i0, i1) x columns [j0, j1) of batch item bi, on the current thread.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block<T>(ref Args<T> g, PackBuffers buf, long bi, int i0, int i1, int j0, int j1)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* A = g.A + bi * g.StrideA, B = g.B + bi * g.StrideB, C = g.C + bi * g.StrideC;
        int mr = Mr<T>(), nr = Nr<T>();
        int k = g.K;
        nint lda = g.Lda, ldb = g.Ldb, ldc = g.Ldc;
        int kcMax = typeof(T) == typeof(float) ? KcFloat : KcDouble;
        int ncMax = typeof(T) == typeof(float) ? NcFloat : NcDouble;
        ncMax = Math.Max(nr, ncMax / nr * nr);
        int width = j1 - j0;
        int nBlocks = (width + ncMax - 1) / ncMax;
        int ncStep = ((width + nBlocks - 1) / nBlocks + nr - 1) / nr * nr;
        // Narrow B blocks: deepen the slice while the packed block stays within BBlockBytes (fewer passes over C,
        // fewer A re-packs per flop). E.g. N = 128 packs all of K = 2048 at once.
        if (BBlockBytes > 0) kcMax = Math.Max(kcMax, (int)Math.Min(int.MaxValue, BBlockBytes / ((long)ncStep * sizeof(T))));
        // Balance the slices: e.g. k = 600 with KC = 512 gives two slices of 300 rather than 512 + 88.
        int kBlocks = (k + kcMax - 1) / kcMax;
        int kcStep = (k + kBlocks - 1) / kBlocks;
        T* bp = (T*)buf.GetB((nuint)((long)kcStep * ncStep * sizeof(T)));
        // Rows packed per A block: one panel at a time for A stored [m, k] (the panel stays hot in L1); for
        // A stored [k, m] a block of panels so each stored row is read as one long contiguous run, bounded in bytes.
        int mcRows = g.TransA ? (int)Math.Clamp(ABlockBytes / ((long)kcStep * sizeof(T)), mr, McRows) : McRowsNN;
        int mcStep = Math.Max(1, mcRows / mr) * mr;
        T* ap0 = (T*)buf.GetA((nuint)((long)PanelStride<T>(mr, kcStep) * (mcStep / mr) * sizeof(T) + 128));
        T* tile = stackalloc T[14 * 32];
        int betaMode = g.Beta == T.Zero ? 0 : g.Beta == T.One ? 1 : 2;
        T alpha = g.Alpha, beta = g.Beta;

        for (int jc = j0; jc < j1; jc += ncStep)
        {
            int nc = Math.Min(ncStep, j1 - jc);
            for (int pc = 0; pc < k; pc += kcStep)
            {
                int kc = Math.Min(kcStep, k - pc);
                PackB(B, g.TransB, ldb, pc, kc, jc, nc, bp, nr);
                int mode = pc == 0 ? betaMode : 1;
                for (int ic = i0; ic < i1; ic += mcStep)
                {
                int mc = Math.Min(mcStep, i1 - ic);
                PackABlock(A, g.TransA, lda, ic, mc, pc, kc, alpha, ap0, mr, g.M);
                for (int ir = ic; ir < ic + mc; ir += mr)
                {
                    int mrr = Math.Min(mr, ic + mc - ir);
                    T* ap = ap0 + (ir - ic) / mr * PanelStride<T>(mr, kc);
                    T* crow = C + ir * ldc + jc;
                    for (int jr = 0; jr < nc; jr += nr)
                    {
                        int nrr = Math.Min(nr, nc - jr);
                        T* bpanel = bp + (nint)jr * kc;
                        if (mrr == mr && nrr == nr)
                        {
                            MicroKernel(kc, ap, bpanel, crow + jr, ldc, mode, beta);
                        }
                        else
                        {
                            MicroKernel(kc, ap, bpanel, tile, nr, 0, T.Zero);
                            T* cc = crow + jr;
                            for (int r = 0; r < mrr; r++)
                            {
                                T* cr = cc + r * ldc;
                                T* tr = tile + r * nr;
                                if (mode == 0) for (int j = 0; j < nrr; j++) cr[j] = tr[j];
                                else if (mode == 1) for (int j = 0; j < nrr; j++) cr[j] += tr[j];
                                else for (int j = 0; j < nrr; j++) cr[j] = beta * cr[j] + tr[j];
                            }
                        }
                    }
                }
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MicroKernel<T>(int kc, T* ap, T* bp, T* c, nint ldc, int mode, T beta) where T : unmanaged
    {
        if (Vector512.IsHardwareAccelerated) Kernel512x14x2(kc, ap, bp, c, ldc, mode, beta);
        else Kernel256x6x2(kc, ap, bp, c, ldc, mode, beta);
    }

    /// <summary>Elements between consecutive packed A panels: MR*kc plus one vector of slack for overlapping stores.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static nint PanelStride<T>(int MR, int kc) where T : unmanaged => (nint)MR * kc + Vector512<T>.Count;

    /// <summary>
    /// Packs rows [row0, row0+mc) of op(A) x depth [p0, p0+kc) as consecutive MR-row panels (panel q at dst + q*MR*kc).
    /// For transposed A (stored [k, m]) each stored row is read as one contiguous run across all panels, which
    /// avoids touching kc lines at a large power-of-two stride per panel.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackABlock<T>(T* a, bool transA, nint lda, int row0, int mc, int p0, int kc, T alpha, T* dst, int MR, int m)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint panelStride = PanelStride<T>(MR, kc);
        int full = mc / MR;
        if (transA && full > 0 && Vector512.IsHardwareAccelerated && MR <= 2 * Vector512<T>.Count)
        {
            // Full panels whose vector reads stay inside the logical row; the rest go through PackA.
            int readWidth = Math.Max(MR, Vector512<T>.Count);
            int fast = full;
            while (fast > 0 && row0 + (fast - 1) * MR + readWidth > m) fast--;
            if (fast > 0)
            {
                bool scale = alpha != T.One;
                var va = Vector512.Create(alpha);
                int runBytes = fast * MR * sizeof(T);
                for (int p = 0; p < kc; p++)
                {
                    T* s = a + (p0 + p) * lda + row0;
                    T* d = dst + (nint)p * MR;
                    if (PrefetchRowsAhead > 0 && Sse.IsSupported && p + PrefetchRowsAhead < kc)
                    {
                        // Rows are far apart (lda stride), so the hardware prefetchers do not follow; ask explicitly.
                        byte* ahead = (byte*)(s + PrefetchRowsAhead * lda);
                        for (int off = 0; off < runBytes; off += 64) Sse.Prefetch0(ahead + off);
                    }
                    for (int q = 0; q < fast; q++)
                        CopyRun(s + q * MR, d + q * panelStride, MR, va, scale);
                }
            }
            for (int q = fast; q * MR < mc; q++)
                PackA(a, transA, lda, row0 + q * MR, Math.Min(MR, mc - q * MR), p0, kc, alpha, dst + q * panelStride, MR, m);
            return;
        }
        for (int q = 0; q * MR < mc; q++)
            PackA(a, transA, lda, row0 + q * MR, Math.Min(MR, mc - q * MR), p0, kc, alpha, dst + q * panelStride, MR, m);
    }

    /// <summary>
    /// Packs rows [row0, row0+mr) x depth [p0, p0+kc) of op(A), scaled by alpha, into dst[p * MR + r]
    /// (rows mr..MR zero-filled).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackA<T>(T* a, bool transA, nint lda, int row0, int mr, int p0, int kc, T alpha, T* dst, int MR, int m)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        bool scale = alpha != T.One;
        if (!transA)
        {
            // A stored [m, k]: gather MR rows, transposing into k-major order.
            if (mr == MR && MR == 14 && kc >= 8 && Avx.IsSupported && typeof(T) == typeof(float))
            {
                PackA14Float((float*)a, lda, row0, p0, kc, float.CreateTruncating(alpha), scale, (float*)dst);
                return;
            }
            for (int r = 0; r < mr; r++)
            {
                T* src = a + (row0 + r) * lda + p0;
                T* d = dst + r;
                if (scale) for (int p = 0; p < kc; p++) d[(nint)p * MR] = alpha * src[p];
                else for (int p = 0; p < kc; p++) d[(nint)p * MR] = src[p];
            }
            for (int r = mr; r < MR; r++)
            {
                T* d = dst + r;
                for (int p = 0; p < kc; p++) d[(nint)p * MR] = T.Zero;
            }
        }
        else
        {
            // A stored [k, m]: each depth step is a contiguous run of mr values.
            T* src = a + p0 * lda + row0;
            if (Vector512.IsHardwareAccelerated && mr == MR && row0 + Math.Max(MR, Vector512<T>.Count) <= m && MR <= 2 * Vector512<T>.Count)
            {
                var va = Vector512.Create(alpha);
                for (int p = 0; p < kc; p++) CopyRun(src + p * lda, dst + (nint)p * MR, MR, va, scale);
                return;
            }
            for (int p = 0; p < kc; p++)
            {
                T* s = src + p * lda;
                T* d = dst + (nint)p * MR;
                int r = 0;
                if (scale) for (; r < mr; r++) d[r] = alpha * s[r];
                else for (; r < mr; r++) d[r] = s[r];
                for (; r < MR; r++) d[r] = T.Zero;
            }
        }
    }

    /// <summary>
    /// Copies MR (&lt;= 2 vectors) contiguous values, optionally scaled. With MR &lt; one vector the store spills up to
    /// Count - MR elements past d (callers leave room or overwrite them next); reads max(MR, Count) elements.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyRun<T>(T* s, T* d, int MR, Vector512<T> va, bool scale) where T : unmanaged
    {
        int w = Vector512<T>.Count;
        if (MR <= w)
        {
            var v = Vector512.Load(s);
            if (scale) v *= va;
            v.Store(d);
        }
        else
        {
            Vector512<T> v0 = Vector512.Load(s), v1 = Vector512.Load(s + MR - w);
            if (scale) { v0 *= va; v1 *= va; }
            v0.Store(d);
            v1.Store(d + MR - w);
        }
    }

    /// <summary>
    /// NN float A packing for MR = 14: transposes 8 k-columns at a time with 8x8 shuffles
    /// (rows 0..7 and 6..13 as two overlapping 8-row groups), then a scalar tail.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackA14Float(float* a, nint lda, int row0, int p0, int kc, float alpha, bool scale, float* dst)
    {
        float* s = a + row0 * lda + p0;
        var va = Vector256.Create(alpha);
        int p = 0;
        for (; p + 8 <= kc; p += 8)
        {
            Transpose8(s + p, lda, dst + p * 14, 14, va, scale);
            Transpose8(s + 6 * lda + p, lda, dst + p * 14 + 6, 14, va, scale);
        }
        for (; p < kc; p++)
        {
            float* d = dst + p * 14;
            for (int r = 0; r < 14; r++) d[r] = scale ? alpha * s[r * lda + p] : s[r * lda + p];
        }
    }

    /// <summary>Loads 8 rows x 8 columns at src (row stride ld), writes the transpose: dst[c * dstStride + r].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8(float* src, nint ld, float* dst, nint dstStride, Vector256<float> va, bool scale)
    {
        Vector256<float> r0 = Vector256.Load(src), r1 = Vector256.Load(src + ld), r2 = Vector256.Load(src + 2 * ld), r3 = Vector256.Load(src + 3 * ld);
        Vector256<float> r4 = Vector256.Load(src + 4 * ld), r5 = Vector256.Load(src + 5 * ld), r6 = Vector256.Load(src + 6 * ld), r7 = Vector256.Load(src + 7 * ld);
        if (scale) { r0 *= va; r1 *= va; r2 *= va; r3 *= va; r4 *= va; r5 *= va; r6 *= va; r7 *= va; }
        // Stage 1: interleave pairs of rows.
        var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
        // Stage 2: 64-bit interleave.
        var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
        // Stage 3: 128-bit lanes.
        Avx.Permute2x128(u0, u4, 0x20).Store(dst);
        Avx.Permute2x128(u1, u5, 0x20).Store(dst + dstStride);
        Avx.Permute2x128(u2, u6, 0x20).Store(dst + 2 * dstStride);
        Avx.Permute2x128(u3, u7, 0x20).Store(dst + 3 * dstStride);
        Avx.Permute2x128(u0, u4, 0x31).Store(dst + 4 * dstStride);
        Avx.Permute2x128(u1, u5, 0x31).Store(dst + 5 * dstStride);
        Avx.Permute2x128(u2, u6, 0x31).Store(dst + 6 * dstStride);
        Avx.Permute2x128(u3, u7, 0x31).Store(dst + 7 * dstStride);
    }

    /// <summary>
    /// Packs depth [p0, p0+kc) x columns [col0, col0+nc) of op(B) into NR-wide panels: panel j starts at
    /// dst + j*kc and holds dst[p * NR + c] (columns past nc zero-filled).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackB<T>(T* b, bool transB, nint ldb, int p0, int kc, int col0, int nc, T* dst, int NR)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (int jp = 0; jp < nc; jp += NR)
        {
            int nr = Math.Min(NR, nc - jp);
            T* d0 = dst + (nint)jp * kc;
            if (!transB)
            {
                // B stored [k, n]: contiguous runs.
                T* src = b + p0 * ldb + col0 + jp;
                if (nr == NR && Vector512.IsHardwareAccelerated)
                {
                    nint w = Vector512<T>.Count;
                    for (int p = 0; p < kc; p++)
                    {
                        T* s = src + p * ldb; T* d = d0 + (nint)p * NR;
                        Vector512.Load(s).Store(d);
                        Vector512.Load(s + w).Store(d + w);
                    }
                }
                else if (nr == NR)
                {
                    nint w = Vector256<T>.Count;
                    for (int p = 0; p < kc; p++)
                    {
                        T* s = src + p * ldb; T* d = d0 + (nint)p * NR;
                        Vector256.Load(s).Store(d);
                        Vector256.Load(s + w).Store(d + w);
                    }
                }
                else
                {
                    for (int p = 0; p < kc; p++)
                    {
                        T* s = src + p * ldb; T* d = d0 + (nint)p * NR;
                        int j = 0;
                        for (; j < nr; j++) d[j] = s[j];
                        for (; j < NR; j++) d[j] = T.Zero;
                    }
                }
            }
            else
            {
                // B stored [n, k]: transpose.
                T* src = b + (col0 + jp) * ldb + p0;
                if (nr == NR && typeof(T) == typeof(float) && Avx.IsSupported && NR % 8 == 0)
                {
                    int p = 0;
                    for (; p + 8 <= kc; p += 8)
                        for (int j = 0; j < NR; j += 8)
                            Transpose8((float*)(src + j * ldb + p), ldb, (float*)(d0 + (nint)p * NR + j), NR, default, false);
                    for (; p < kc; p++)
                        for (int j = 0; j < NR; j++) d0[(nint)p * NR + j] = src[j * ldb + p];
                    continue;
                }
                for (int j = 0; j < nr; j++)
                {
                    T* s = src + j * ldb;
                    T* d = d0 + j;
                    for (int p = 0; p < kc; p++) d[(nint)p * NR] = s[p];
                }
                for (int j = nr; j < NR; j++)
                {
                    T* d = d0 + j;
                    for (int p = 0; p < kc; p++) d[(nint)p * NR] = T.Zero;
                }
            }
        }
    }

    private static void ScaleC<T>(T* c, int m, int n, nint ldc, T beta) where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (int i = 0; i < m; i++)
        {
            T* row = c + i * ldc;
            if (beta == T.Zero) for (int j = 0; j < n; j++) row[j] = T.Zero;
            else if (beta != T.One) for (int j = 0; j < n; j++) row[j] *= beta;
        }
    }

    /// <summary>Plain loops (used for element types other than float/double and on hardware without SIMD).</summary>
    private static void Reference<T>(bool transA, bool transB, int m, int n, int k, T alpha, T* a, nint lda, T* b, nint ldb, T beta, T* c, nint ldc)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                T s = T.Zero;
                for (int p = 0; p < k; p++)
                {
                    T av = transA ? a[p * lda + i] : a[i * lda + p];
                    T bv = transB ? b[j * ldb + p] : b[p * ldb + j];
                    s += av * bv;
                }
                T* cp = c + i * ldc + j;
                *cp = beta == T.Zero ? alpha * s : alpha * s + beta * *cp;
            }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<T> Fma512<T>(Vector512<T> a, Vector512<T> b, Vector512<T> c) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return Vector512.FusedMultiplyAdd(a.AsSingle(), b.AsSingle(), c.AsSingle()).As<float, T>();
        return Vector512.FusedMultiplyAdd(a.AsDouble(), b.AsDouble(), c.AsDouble()).As<double, T>();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<T> Fma256<T>(Vector256<T> a, Vector256<T> b, Vector256<T> c) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return Vector256.MultiplyAddEstimate(a.AsSingle(), b.AsSingle(), c.AsSingle()).As<float, T>();
        return Vector256.MultiplyAddEstimate(a.AsDouble(), b.AsDouble(), c.AsDouble()).As<double, T>();
    }

    /// <summary>mode 0: C = acc; 1: C += acc; 2: C = beta * C + acc.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store512<T>(T* p, Vector512<T> v, int mode, Vector512<T> vb) where T : unmanaged
    {
        if (mode == 0) v.Store(p);
        else if (mode == 1) (v + Vector512.Load(p)).Store(p);
        else Fma512(vb, Vector512.Load(p), v).Store(p);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store256<T>(T* p, Vector256<T> v, int mode, Vector256<T> vb) where T : unmanaged
    {
        if (mode == 0) v.Store(p);
        else if (mode == 1) (v + Vector256.Load(p)).Store(p);
        else Fma256(vb, Vector256.Load(p), v).Store(p);
    }

    /// <summary>14x2 vectors (512-bit) micro-kernel: C[14, 2*Vector512&lt;T&gt;.Count] (op)= Ap[kc, 14] * Bp[kc, NR].</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Kernel512x14x2<T>(nint kc, T* ap, T* bp, T* c, nint ldc, int mode, T beta) where T : unmanaged
    {
        nint w = Vector512<T>.Count;
        Vector512<T> c00 = default; Vector512<T> c01 = default;
        Vector512<T> c10 = default; Vector512<T> c11 = default;
        Vector512<T> c20 = default; Vector512<T> c21 = default;
        Vector512<T> c30 = default; Vector512<T> c31 = default;
        Vector512<T> c40 = default; Vector512<T> c41 = default;
        Vector512<T> c50 = default; Vector512<T> c51 = default;
        Vector512<T> c60 = default; Vector512<T> c61 = default;
        Vector512<T> c70 = default; Vector512<T> c71 = default;
        Vector512<T> c80 = default; Vector512<T> c81 = default;
        Vector512<T> c90 = default; Vector512<T> c91 = default;
        Vector512<T> c100 = default; Vector512<T> c101 = default;
        Vector512<T> c110 = default; Vector512<T> c111 = default;
        Vector512<T> c120 = default; Vector512<T> c121 = default;
        Vector512<T> c130 = default; Vector512<T> c131 = default;
        for (nint p = 0; p < kc; p++)
        {
            Vector512<T> b0 = Vector512.Load(bp);
            Vector512<T> b1 = Vector512.Load(bp + w);
            { Vector512<T> a = Vector512.Create(ap[0]); c00 = Fma512(a, b0, c00); c01 = Fma512(a, b1, c01); }
            { Vector512<T> a = Vector512.Create(ap[1]); c10 = Fma512(a, b0, c10); c11 = Fma512(a, b1, c11); }
            { Vector512<T> a = Vector512.Create(ap[2]); c20 = Fma512(a, b0, c20); c21 = Fma512(a, b1, c21); }
            { Vector512<T> a = Vector512.Create(ap[3]); c30 = Fma512(a, b0, c30); c31 = Fma512(a, b1, c31); }
            { Vector512<T> a = Vector512.Create(ap[4]); c40 = Fma512(a, b0, c40); c41 = Fma512(a, b1, c41); }
            { Vector512<T> a = Vector512.Create(ap[5]); c50 = Fma512(a, b0, c50); c51 = Fma512(a, b1, c51); }
            { Vector512<T> a = Vector512.Create(ap[6]); c60 = Fma512(a, b0, c60); c61 = Fma512(a, b1, c61); }
            { Vector512<T> a = Vector512.Create(ap[7]); c70 = Fma512(a, b0, c70); c71 = Fma512(a, b1, c71); }
            { Vector512<T> a = Vector512.Create(ap[8]); c80 = Fma512(a, b0, c80); c81 = Fma512(a, b1, c81); }
            { Vector512<T> a = Vector512.Create(ap[9]); c90 = Fma512(a, b0, c90); c91 = Fma512(a, b1, c91); }
            { Vector512<T> a = Vector512.Create(ap[10]); c100 = Fma512(a, b0, c100); c101 = Fma512(a, b1, c101); }
            { Vector512<T> a = Vector512.Create(ap[11]); c110 = Fma512(a, b0, c110); c111 = Fma512(a, b1, c111); }
            { Vector512<T> a = Vector512.Create(ap[12]); c120 = Fma512(a, b0, c120); c121 = Fma512(a, b1, c121); }
            { Vector512<T> a = Vector512.Create(ap[13]); c130 = Fma512(a, b0, c130); c131 = Fma512(a, b1, c131); }
            ap += 14;
            bp += 2 * w;
        }
        Vector512<T> vb = Vector512.Create(beta);
        T* cr = c;
        Store512(cr, c00, mode, vb); Store512(cr + w, c01, mode, vb); cr += ldc;
        Store512(cr, c10, mode, vb); Store512(cr + w, c11, mode, vb); cr += ldc;
        Store512(cr, c20, mode, vb); Store512(cr + w, c21, mode, vb); cr += ldc;
        Store512(cr, c30, mode, vb); Store512(cr + w, c31, mode, vb); cr += ldc;
        Store512(cr, c40, mode, vb); Store512(cr + w, c41, mode, vb); cr += ldc;
        Store512(cr, c50, mode, vb); Store512(cr + w, c51, mode, vb); cr += ldc;
        Store512(cr, c60, mode, vb); Store512(cr + w, c61, mode, vb); cr += ldc;
        Store512(cr, c70, mode, vb); Store512(cr + w, c71, mode, vb); cr += ldc;
        Store512(cr, c80, mode, vb); Store512(cr + w, c81, mode, vb); cr += ldc;
        Store512(cr, c90, mode, vb); Store512(cr + w, c91, mode, vb); cr += ldc;
        Store512(cr, c100, mode, vb); Store512(cr + w, c101, mode, vb); cr += ldc;
        Store512(cr, c110, mode, vb); Store512(cr + w, c111, mode, vb); cr += ldc;
        Store512(cr, c120, mode, vb); Store512(cr + w, c121, mode, vb); cr += ldc;
        Store512(cr, c130, mode, vb); Store512(cr + w, c131, mode, vb);
    }

    /// <summary>6x2 vectors (256-bit) micro-kernel: C[6, 2*Vector256&lt;T&gt;.Count] (op)= Ap[kc, 6] * Bp[kc, NR].</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Kernel256x6x2<T>(nint kc, T* ap, T* bp, T* c, nint ldc, int mode, T beta) where T : unmanaged
    {
        nint w = Vector256<T>.Count;
        Vector256<T> c00 = default; Vector256<T> c01 = default;
        Vector256<T> c10 = default; Vector256<T> c11 = default;
        Vector256<T> c20 = default; Vector256<T> c21 = default;
        Vector256<T> c30 = default; Vector256<T> c31 = default;
        Vector256<T> c40 = default; Vector256<T> c41 = default;
        Vector256<T> c50 = default; Vector256<T> c51 = default;
        for (nint p = 0; p < kc; p++)
        {
            Vector256<T> b0 = Vector256.Load(bp);
            Vector256<T> b1 = Vector256.Load(bp + w);
            { Vector256<T> a = Vector256.Create(ap[0]); c00 = Fma256(a, b0, c00); c01 = Fma256(a, b1, c01); }
            { Vector256<T> a = Vector256.Create(ap[1]); c10 = Fma256(a, b0, c10); c11 = Fma256(a, b1, c11); }
            { Vector256<T> a = Vector256.Create(ap[2]); c20 = Fma256(a, b0, c20); c21 = Fma256(a, b1, c21); }
            { Vector256<T> a = Vector256.Create(ap[3]); c30 = Fma256(a, b0, c30); c31 = Fma256(a, b1, c31); }
            { Vector256<T> a = Vector256.Create(ap[4]); c40 = Fma256(a, b0, c40); c41 = Fma256(a, b1, c41); }
            { Vector256<T> a = Vector256.Create(ap[5]); c50 = Fma256(a, b0, c50); c51 = Fma256(a, b1, c51); }
            ap += 6;
            bp += 2 * w;
        }
        Vector256<T> vb = Vector256.Create(beta);
        T* cr = c;
        Store256(cr, c00, mode, vb); Store256(cr + w, c01, mode, vb); cr += ldc;
        Store256(cr, c10, mode, vb); Store256(cr + w, c11, mode, vb); cr += ldc;
        Store256(cr, c20, mode, vb); Store256(cr + w, c21, mode, vb); cr += ldc;
        Store256(cr, c30, mode, vb); Store256(cr + w, c31, mode, vb); cr += ldc;
        Store256(cr, c40, mode, vb); Store256(cr + w, c41, mode, vb); cr += ldc;
        Store256(cr, c50, mode, vb); Store256(cr + w, c51, mode, vb);
    }
}

/// <summary>Per-thread packing buffers (64-byte aligned native memory, grown rarely, freed when the thread's holder dies).</summary>
internal sealed unsafe class PackBuffers
{
    [ThreadStatic] private static PackBuffers? t_current;

    private void* _a, _b;
    private nuint _aBytes, _bBytes;

    public static PackBuffers ForCurrentThread() => t_current ??= new PackBuffers();

    public void* GetA(nuint bytes) => Get(ref _a, ref _aBytes, bytes);

    public void* GetB(nuint bytes) => Get(ref _b, ref _bBytes, bytes);

    private static void* Get(ref void* p, ref nuint size, nuint bytes)
    {
        bytes += 256; // slack for overlapping vector stores past the logical end
        if (size < bytes)
        {
            if (p != null) NativeMemory.AlignedFree(p);
            nuint alloc = Math.Max(bytes, size * 2);
            alloc = (alloc + 4095) & ~(nuint)4095;
            p = NativeMemory.AlignedAlloc(alloc, 64);
            size = alloc;
        }
        return p;
    }

    ~PackBuffers()
    {
        if (_a != null) NativeMemory.AlignedFree(_a);
        if (_b != null) NativeMemory.AlignedFree(_b);
    }
}

/// <summary>
/// A tiny pool of persistent background worker threads. <see cref="Run"/> runs work(part, parts, arg) for
/// part = 0 on the caller and parts 1..parts-1 on workers, and returns when all have finished.
/// Calls from several threads at once are serialized by a try-lock: a caller that finds the pool busy
/// runs its job single-threaded instead of waiting.
/// </summary>
internal static unsafe class GemmPool
{
    private sealed class Worker
    {
        public readonly SemaphoreSlim Go = new(0, int.MaxValue);
        public int Part;
    }

    private static readonly object Gate = new();
    private static Worker[] s_workers = [];
    private static delegate*<int, int, void*, void> s_fn;
    private static void* s_arg;
    private static int s_parts;
    private static int s_pending;
    private static Exception? s_error;
    private static readonly ManualResetEventSlim Done = new(false, 2000);

    public static void Run(int parts, delegate*<int, int, void*, void> fn, void* arg)
    {
        if (parts <= 1 || !Monitor.TryEnter(Gate))
        {
            fn(0, 1, arg);
            return;
        }
        try
        {
            EnsureWorkers(parts - 1);
            s_fn = fn; s_arg = arg; s_parts = parts; s_error = null;
            Done.Reset();
            Volatile.Write(ref s_pending, parts - 1);
            for (int i = 0; i < parts - 1; i++) s_workers[i].Go.Release();
            Exception? mine = null;
            try { fn(0, parts, arg); }
            catch (Exception e) { mine = e; }
            // Wait on Done, never on s_pending alone: the last worker touches Done after its decrement, so returning on
            // s_pending == 0 could let that late Set() leak into the next call (which would then return early).
            if (!Done.IsSet)
            {
                // Parts are balanced, so the others are usually microseconds away: spin briefly before blocking.
                long until = Stopwatch.GetTimestamp() + Stopwatch.Frequency / 2000; // 0.5 ms
                while (!Done.IsSet && Stopwatch.GetTimestamp() < until) Thread.SpinWait(16);
                Done.Wait();
            }
            if (mine != null) throw mine;
            if (s_error != null) throw new AggregateException("A GEMM worker failed.", s_error);
        }
        finally
        {
            Monitor.Exit(Gate);
        }
    }

    private static void EnsureWorkers(int count)
    {
        if (s_workers.Length >= count) return;
        var list = new Worker[count];
        Array.Copy(s_workers, list, s_workers.Length);
        for (int i = s_workers.Length; i < count; i++)
        {
            var w = new Worker { Part = i + 1 };
            list[i] = w;
            var t = new Thread(() => Loop(w)) { IsBackground = true, Name = $"Repa GEMM worker {i + 1}" };
            t.Start();
        }
        s_workers = list;
    }

    private static void Loop(Worker w)
    {
        while (true)
        {
            // Back-to-back GEMM calls (layer after layer) come quickly: spin a little before sleeping, since a
            // futex wake-up in a VM can cost tens of microseconds.
            long until = Stopwatch.GetTimestamp() + Stopwatch.Frequency / 5000; // 0.2 ms
            while (w.Go.CurrentCount == 0 && Stopwatch.GetTimestamp() < until) Thread.SpinWait(16);
            w.Go.Wait();
            try { s_fn(w.Part, s_parts, s_arg); }
            catch (Exception e) { s_error = e; }
            if (Interlocked.Decrement(ref s_pending) == 0) Done.Set();
        }
    }
}
