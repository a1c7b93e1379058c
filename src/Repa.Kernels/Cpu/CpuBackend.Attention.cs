using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Repa.Kernels.Cpu;

/// <summary>
/// Fused multi-head attention, flash-attention style: the forward keeps only the per-row log-sum-exp [N, H, T], and the
/// backward recomputes the scores from it. Keeping P instead would cost N*H*T*T values per layer: at SiT-XL/2
/// (T = 256, H = 16, batch 256) that is 256*16*256*256*4 B = 1 GiB per layer, 28 GiB over 28 layers, whereas the
/// recompute is one extra Q K^T product per tile (a quarter more attention FLOPs, a small fraction of a training step).
/// <para>
/// Work is a tile of queries of one (batch, head) pair (<see cref="AttentionQueryTile"/>). Its scores (rows x T) live
/// in a per-thread scratch buffer for the duration of the tile only. The tile products run on
/// <see cref="CpuGemm"/> single-threaded: its packing routines gather the head's q/k/v columns out of the strided qkv
/// rows (row stride 3D) into contiguous, SIMD-friendly panels, so no separate gather pass is needed, and its register-
/// blocked micro-kernel does the FLOPs. The forward is parallel over (pair, query tile); the backward over pairs, so
/// that the worker owning a pair owns its dK/dV slices and accumulates into them without races.
/// </para>
/// </summary>
public sealed unsafe partial class CpuBackend
{
    /// <summary>Score values per tile (rows x T): 256 KiB in fp32, so a tile and the packed K/V panels stay in L2.</summary>
    private const int AttentionTileBudget = 1 << 16;

    /// <summary>
    /// Queries per tile: as many as the budget allows (all 256 at T = 256), since taller tiles amortise packing K^T and V
    /// over more rows (at N=8, T=256, H=6, hd=64 on one thread: 64-row tiles 38 ms fwd+bwd, 128 rows 37 ms,
    /// 256 rows 35 ms), between 32 and 256 rows, a multiple of 16. The forward halves it while there are fewer
    /// (pair, tile) items than threads.
    /// </summary>
    internal static int AttentionQueryTile(int tokens, long pairs = 1, int threads = 1)
    {
        int rows = Math.Clamp(AttentionTileBudget / Math.Max(tokens, 1) / 16 * 16, 32, 256);
        while (rows > 32 && pairs * ((tokens + rows - 1) / rows) < threads) rows = Math.Max(32, rows / 2 / 16 * 16);
        return Math.Max(1, Math.Min(rows, tokens));
    }

    /// <summary>FLOPs below which splitting over threads costs more than it saves.</summary>
    private const long AttentionGrainFlops = 1L << 19;

    public void AttentionForward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer logSumExp,
        int batch, int tokens, int heads, int headDim, double scale)
    {
        OpChecks.Attention("attention forward", qkv, output, logSumExp, null, null, batch, tokens, heads, headDim);
        if ((long)batch * tokens * heads * headDim == 0) return;
        switch (qkv.DType)
        {
            case DType.F32:
                AttentionForward(Host(qkv).Ptr<float>(), Host(output).Ptr<float>(), Host(logSumExp).Ptr<float>(),
                    batch, tokens, heads, headDim, (float)scale);
                break;
            case DType.F64:
                AttentionForward(Host(qkv).Ptr<double>(), Host(output).Ptr<double>(), Host(logSumExp).Ptr<double>(),
                    batch, tokens, heads, headDim, scale);
                break;
            default: throw Unsupported(qkv.DType);
        }
    }

    public void AttentionBackward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer dOutput, DeviceBuffer logSumExp,
        DeviceBuffer dQkv, int batch, int tokens, int heads, int headDim, double scale)
    {
        OpChecks.Attention("attention backward", qkv, output, logSumExp, dOutput, dQkv, batch, tokens, heads, headDim);
        if ((long)batch * tokens * heads * headDim == 0) return;
        switch (qkv.DType)
        {
            case DType.F32:
                AttentionBackward(Host(qkv).Ptr<float>(), Host(output).Ptr<float>(), Host(dOutput).Ptr<float>(),
                    Host(logSumExp).Ptr<float>(), Host(dQkv).Ptr<float>(), batch, tokens, heads, headDim, (float)scale);
                break;
            case DType.F64:
                AttentionBackward(Host(qkv).Ptr<double>(), Host(output).Ptr<double>(), Host(dOutput).Ptr<double>(),
                    Host(logSumExp).Ptr<double>(), Host(dQkv).Ptr<double>(), batch, tokens, heads, headDim, scale);
                break;
            default: throw Unsupported(qkv.DType);
        }
    }

    private void AttentionForward<T>(T* qkv, T* output, T* lse, int batch, int tokens, int heads, int headDim, T scale)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int d = heads * headDim, ld = 3 * d;
        long pairs = (long)batch * heads;
        int tile = AttentionQueryTile(tokens, pairs, Threads);
        int tiles = (tokens + tile - 1) / tile;
        long tileFlops = 4L * tile * tokens * headDim;
        // Items are (pair, tile) in pair-major order, so a worker's contiguous range reuses the same K/V from cache.
        CpuParallel.For(pairs * tiles, Math.Max(1, AttentionGrainFlops / Math.Max(tileFlops, 1)), Threads, (start, end) =>
        {
            T* s = AttentionScratch.Get<T>((long)tile * tokens);
            for (long item = start; item < end; item++)
            {
                long pair = item / tiles;
                int n = (int)(pair / heads), h = (int)(pair % heads);
                int i0 = (int)(item % tiles) * tile, rows = Math.Min(tile, tokens - i0);
                T* head = qkv + (long)n * tokens * ld + (long)h * headDim;
                T* q = head + (long)i0 * ld, k = head + d, v = head + 2 * d;

                // S = scale Q K^T (rows x T), then the stable softmax in place, row by row.
                CpuGemm.Gemm(false, true, rows, tokens, headDim, scale, q, ld, 0, k, ld, 0, T.Zero, s, tokens, 0, 1, 1);
                T* l = lse + pair * tokens + i0;
                for (int r = 0; r < rows; r++)
                {
                    T* row = s + (long)r * tokens;
                    T max = TensorPrimitives.Max<T>(new ReadOnlySpan<T>(row, tokens));
                    T sum = ExpShifted(row, tokens, max); // >= 1: the max entry contributes exp(0)
                    TensorPrimitives.Multiply(new ReadOnlySpan<T>(row, tokens), T.One / sum, new Span<T>(row, tokens));
                    l[r] = max + T.Log(sum);
                }

                // O = P V straight into the head's columns of the [N, T, D] output.
                T* o = output + ((long)n * tokens + i0) * d + (long)h * headDim;
                CpuGemm.Gemm(false, false, rows, headDim, tokens, T.One, s, tokens, 0, v, ld, 0, T.Zero, o, d, 0, 1, 1);
            }
        });
    }

    private void AttentionBackward<T>(T* qkv, T* output, T* dOutput, T* lse, T* dQkv,
        int batch, int tokens, int heads, int headDim, T scale)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int d = heads * headDim, ld = 3 * d;
        long pairs = (long)batch * heads;
        int tile = AttentionQueryTile(tokens);
        long pairFlops = 10L * tokens * tokens * headDim; // recompute S + four products
        // One worker per (batch, head) pair: it alone writes that pair's dQ/dK/dV columns of dQkv, so no races.
        CpuParallel.For(pairs, Math.Max(1, AttentionGrainFlops / Math.Max(pairFlops, 1)), Threads, (start, end) =>
        {
            T* p = AttentionScratch.Get<T>(2L * tile * tokens);
            T* ds = p + (long)tile * tokens;
            for (long pair = start; pair < end; pair++)
            {
                int n = (int)(pair / heads), h = (int)(pair % heads);
                long headOffset = (long)n * tokens * ld + (long)h * headDim;
                T* q0 = qkv + headOffset, k = q0 + d, v = q0 + 2 * d;
                T* dq0 = dQkv + headOffset, dk = dq0 + d, dv = dq0 + 2 * d;
                for (int i0 = 0; i0 < tokens; i0 += tile)
                {
                    int rows = Math.Min(tile, tokens - i0);
                    T* q = q0 + (long)i0 * ld, dq = dq0 + (long)i0 * ld;
                    long outOffset = ((long)n * tokens + i0) * d + (long)h * headDim;
                    T* o = output + outOffset, dO = dOutput + outOffset;
                    T* l = lse + pair * tokens + i0;

                    // Recompute P = exp(scale Q K^T - lse): every exponent is <= 0, so this is as stable as the forward.
                    CpuGemm.Gemm(false, true, rows, tokens, headDim, scale, q, ld, 0, k, ld, 0, T.Zero, p, tokens, 0, 1, 1);
                    for (int r = 0; r < rows; r++)
                    {
                        ExpShifted(p + (long)r * tokens, tokens, l[r]);
                    }

                    // dV += P^T dO
                    CpuGemm.Gemm(true, false, tokens, headDim, rows, T.One, p, tokens, 0, dO, d, 0, T.One, dv, ld, 0, 1, 1);

                    // dP = dO V^T, then dS = P * (dP - Di) with Di = dO_i . O_i in place.
                    CpuGemm.Gemm(false, true, rows, tokens, headDim, T.One, dO, d, 0, v, ld, 0, T.Zero, ds, tokens, 0, 1, 1);
                    for (int r = 0; r < rows; r++)
                    {
                        T di = TensorPrimitives.Dot(new ReadOnlySpan<T>(dO + (long)r * d, headDim), new ReadOnlySpan<T>(o + (long)r * d, headDim));
                        var dsRow = new Span<T>(ds + (long)r * tokens, tokens);
                        TensorPrimitives.Subtract(dsRow, di, dsRow);
                        TensorPrimitives.Multiply(dsRow, new ReadOnlySpan<T>(p + (long)r * tokens, tokens), dsRow);
                    }

                    // dQ += scale dS K (this tile's rows); dK += scale dS^T Q (all keys).
                    CpuGemm.Gemm(false, false, rows, headDim, tokens, scale, ds, tokens, 0, k, ld, 0, T.One, dq, ld, 0, 1, 1);
                    CpuGemm.Gemm(true, false, tokens, headDim, rows, scale, ds, tokens, 0, q, ld, 0, T.One, dk, ld, 0, 1, 1);
                }
            }
        });
    }

    /// <summary>x[i] = exp(x[i] - shift) over n values; returns their sum.</summary>
    private static T ExpShifted<T>(T* x, int n, T shift) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float)) return (T)(object)ExpShifted((float*)x, n, (float)(object)shift);
        var row = new Span<T>(x, n);
        TensorPrimitives.Subtract(row, shift, row);
        TensorPrimitives.Exp<T>(row, row);
        return TensorPrimitives.Sum<T>(row);
    }

    /// <summary>
    /// The fp32 softmax exponent in one fused pass. TensorPrimitives.Exp for float evaluates in double for full accuracy,
    /// which made the softmax cost about half as much as the two tile GEMMs; this Cephes-style expf (Cody-Waite range
    /// reduction, degree-6 polynomial, error about 1 ulp) is ~4x faster and accurate enough for probabilities.
    /// </summary>
    private static float ExpShifted(float* x, int n, float shift)
    {
        int i = 0;
        float total = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var acc = Vector512<float>.Zero;
            var vs = Vector512.Create(shift);
            for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
            {
                var e = FastMath.Exp(Vector512.Load(x + i) - vs);
                e.Store(x + i);
                acc += e;
            }
            total = Vector512.Sum(acc);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var acc = Vector256<float>.Zero;
            var vs = Vector256.Create(shift);
            for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                var e = FastMath.Exp(Vector256.Load(x + i) - vs);
                e.Store(x + i);
                acc += e;
            }
            total = Vector256.Sum(acc);
        }
        for (; i < n; i++)
        {
            float e = MathF.Exp(x[i] - shift);
            x[i] = e;
            total += e;
        }
        return total;
    }

    /// <summary>
    /// Per-thread score tiles (64-byte aligned native memory, grown rarely, freed with the thread's holder), so a steady
    /// training step allocates nothing for attention beyond its output and log-sum-exp.
    /// </summary>
    private sealed class AttentionScratch
    {
        [ThreadStatic] private static AttentionScratch? current;

        private void* memory;
        private nuint bytes;

        public static T* Get<T>(long count) where T : unmanaged
        {
            var scratch = current ??= new AttentionScratch();
            nuint need = (nuint)(count * sizeof(T)) + 64;
            if (scratch.bytes < need)
            {
                nuint alloc = (Math.Max(need, scratch.bytes * 2) + 4095) & ~(nuint)4095;
                if (scratch.memory != null) NativeMemory.AlignedFree(scratch.memory);
                scratch.memory = null;
                scratch.bytes = 0;
                scratch.memory = NativeMemory.AlignedAlloc(alloc, 64);
                scratch.bytes = alloc;
            }
            return (T*)scratch.memory;
        }

        ~AttentionScratch()
        {
            if (memory != null) NativeMemory.AlignedFree(memory);
        }
    }
}
