using ILGPU;

namespace Repa.Kernels.Ilgpu;

/// <summary>
/// Flash-style attention. Forward: one group per (batch, head, block of queries), one thread per query row with an
/// online softmax (running max, running sum, rescaled accumulator) over key/value tiles staged through shared memory,
/// so the T x T scores never exist; it keeps the log-sum-exp per row. Backward recomputes P = exp(scale q.k - lse) in
/// two passes without atomics: one thread per query row accumulates dQ over all keys, one thread per key row
/// accumulates dK and dV over all queries (Di = dO . O is computed once per row first).
/// </summary>
public sealed partial class IlgpuBackend
{
    /// <summary>Largest head dimension of the kernels (the per-thread row registers).</summary>
    public const int MaxHeadDim = IlgpuKernels.AttentionMaxHeadDim;

    public void AttentionForward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer logSumExp,
        int batch, int tokens, int heads, int headDim, double scale)
    {
        OpChecks.Attention("attention forward", qkv, output, logSumExp, null, null, batch, tokens, heads, headDim);
        if ((long)batch * tokens * heads * headDim == 0) return;
        var p = AttentionShape(batch, tokens, heads, headDim, scale);
        Run(new KernelConfig(GroupsFor(p), GroupSize), IlgpuKernels.AttentionForward, F(qkv), F(output), F(logSumExp), p);
    }

    public void AttentionBackward(DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer dOutput, DeviceBuffer logSumExp,
        DeviceBuffer dQkv, int batch, int tokens, int heads, int headDim, double scale)
    {
        OpChecks.Attention("attention backward", qkv, output, logSumExp, dOutput, dQkv, batch, tokens, heads, headDim);
        if ((long)batch * tokens * heads * headDim == 0) return;
        var p = AttentionShape(batch, tokens, heads, headDim, scale);
        long rows = (long)batch * heads * tokens;
        using var di = Scratch<float>(rows);
        Run(Stride(rows), IlgpuKernels.AttentionRowDots, F(output), F(dOutput), di.View.AsContiguous(), p);
        var config = new KernelConfig(GroupsFor(p), GroupSize);
        var inputs = new AttentionInputs(F(qkv), F(dOutput), F(logSumExp), di.View.AsContiguous());
        Run(config, IlgpuKernels.AttentionBackwardQuery, inputs, F(dQkv), p);
        Run(config, IlgpuKernels.AttentionBackwardKey, inputs, F(dQkv), p);
        accelerator.Synchronize(); // the scratch Di goes away with this call
    }

    private AttentionArgs AttentionShape(int batch, int tokens, int heads, int headDim, double scale)
    {
        if (headDim > MaxHeadDim)
            throw new NotSupportedException($"ilgpu attention: head_dim {headDim} is larger than the kernels' {MaxHeadDim}.");
        // A tile of rows staged per step: as many as fit the shared arrays, at most 64.
        int tile = Math.Min(64, IlgpuKernels.AttentionSharedTile / headDim);
        int blocks = (tokens + GroupSize - 1) / GroupSize;
        return new AttentionArgs(batch, tokens, heads, headDim, (float)scale, tile, blocks);
    }

    private int GroupsFor(AttentionArgs p) => (int)Math.Min((long)p.Batch * p.Heads * p.Blocks, MaxGroups * 64L);
}

internal readonly record struct AttentionArgs(int Batch, int Tokens, int Heads, int HeadDim, float Scale, int Tile, int Blocks);

/// <summary>A work item of the attention kernels: one (batch, head) pair and this thread's row of a block of rows.</summary>
internal readonly record struct AttentionItem(long Pair, long N, long H, int Row, bool Active)
{
    public static AttentionItem Of(AttentionArgs p, long item)
    {
        long pair = item / p.Blocks;
        int row = (int)(item % p.Blocks) * Group.DimX + Group.IdxX;
        return new AttentionItem(pair, pair / p.Heads, pair % p.Heads, row, row < p.Tokens);
    }
}

internal readonly record struct AttentionInputs(ArrayView<float> Qkv, ArrayView<float> DOutput, ArrayView<float> Lse, ArrayView<float> Di);

internal static partial class IlgpuKernels
{
    public const int AttentionMaxHeadDim = 128;

    /// <summary>Floats per shared operand tile (rows x head_dim): 32 rows of 128 or 64 of 64 (16 KiB).</summary>
    public const int AttentionSharedTile = 4096;

    /// <summary>Where row t of head h of item n starts in qkv ([N, T, 3D]); part 0 = q, 1 = k, 2 = v.</summary>
    private static long QkvRow(AttentionArgs p, long n, long h, long t, int part)
    {
        long d = (long)p.Heads * p.HeadDim;
        return (n * p.Tokens + t) * 3 * d + part * d + h * p.HeadDim;
    }

    private static long OutRow(AttentionArgs p, long n, long h, long t) => (n * p.Tokens + t) * p.Heads * p.HeadDim + h * p.HeadDim;

    /// <summary>Stages rows [j0, j0 + count) of one part of one head into shared memory, all threads cooperating.</summary>
    private static void StageRows(ArrayView<float> qkv, ArrayView<float> shared, AttentionArgs p, long n, long h, int j0, int count, int part)
    {
        int elements = count * p.HeadDim;
        for (int e = Group.IdxX; e < elements; e += Group.DimX)
        {
            int r = e / p.HeadDim, c = e % p.HeadDim;
            shared[e] = qkv[QkvRow(p, n, h, j0 + r, part) + c];
        }
    }

    public static void AttentionForward(ArrayView<float> qkv, ArrayView<float> output, ArrayView<float> lse, AttentionArgs p)
    {
        var keys = SharedMemory.Allocate<float>(AttentionSharedTile);
        var values = SharedMemory.Allocate<float>(AttentionSharedTile);
        var q = LocalMemory.Allocate<float>(AttentionMaxHeadDim);
        var acc = LocalMemory.Allocate<float>(AttentionMaxHeadDim);
        long items = (long)p.Batch * p.Heads * p.Blocks;
        for (long item = Grid.IdxX; item < items; item += Grid.DimX)
        {
            var (pair, n, h, i, active) = AttentionItem.Of(p, item);
            if (active)
            {
                long qr = QkvRow(p, n, h, i, 0);
                for (int c = 0; c < p.HeadDim; c++)
                {
                    q[c] = qkv[qr + c];
                    acc[c] = 0f;
                }
            }
            float max = float.NegativeInfinity, sum = 0f;
            for (int j0 = 0; j0 < p.Tokens; j0 += p.Tile)
            {
                int count = Math.Min(p.Tile, p.Tokens - j0);
                StageRows(qkv, keys, p, n, h, j0, count, 1);
                StageRows(qkv, values, p, n, h, j0, count, 2);
                Group.Barrier();
                if (active)
                {
                    for (int j = 0; j < count; j++)
                    {
                        float dot = 0f;
                        for (int c = 0; c < p.HeadDim; c++) dot += q[c] * keys[j * p.HeadDim + c];
                        float s = p.Scale * dot;
                        if (s > max)
                        {
                            // A new running max: rescale what was summed so far (exp(-inf) = 0 the first time).
                            float correction = MathF.Exp(max - s);
                            sum = sum * correction + 1f;
                            for (int c = 0; c < p.HeadDim; c++) acc[c] = acc[c] * correction + values[j * p.HeadDim + c];
                            max = s;
                        }
                        else
                        {
                            float e = MathF.Exp(s - max);
                            sum += e;
                            for (int c = 0; c < p.HeadDim; c++) acc[c] += e * values[j * p.HeadDim + c];
                        }
                    }
                }
                Group.Barrier();
            }
            if (active)
            {
                long o = OutRow(p, n, h, i);
                float inv = 1f / sum;
                for (int c = 0; c < p.HeadDim; c++) output[o + c] = acc[c] * inv;
                lse[pair * p.Tokens + i] = max + MathF.Log(sum);
            }
        }
    }

    /// <summary>Di[n, h, t] = dO_t . O_t for one head.</summary>
    public static void AttentionRowDots(ArrayView<float> output, ArrayView<float> dOutput, ArrayView<float> di, AttentionArgs p)
    {
        long rows = (long)p.Batch * p.Heads * p.Tokens;
        for (long r = First; r < rows; r += Step)
        {
            long pair = r / p.Tokens, t = r % p.Tokens;
            long o = OutRow(p, pair / p.Heads, pair % p.Heads, t);
            float s = 0f;
            for (int c = 0; c < p.HeadDim; c++) s += dOutput[o + c] * output[o + c];
            di[r] = s;
        }
    }

    /// <summary>dQ_i += scale sum_j P_ij (dO_i . v_j - Di) k_j: one thread per query row, keys and values staged.</summary>
    public static void AttentionBackwardQuery(AttentionInputs v, ArrayView<float> dQkv, AttentionArgs p)
    {
        var keys = SharedMemory.Allocate<float>(AttentionSharedTile);
        var values = SharedMemory.Allocate<float>(AttentionSharedTile);
        var q = LocalMemory.Allocate<float>(AttentionMaxHeadDim);
        var dO = LocalMemory.Allocate<float>(AttentionMaxHeadDim);
        var dq = LocalMemory.Allocate<float>(AttentionMaxHeadDim);
        long items = (long)p.Batch * p.Heads * p.Blocks;
        for (long item = Grid.IdxX; item < items; item += Grid.DimX)
        {
            var (pair, n, h, i, active) = AttentionItem.Of(p, item);
            float lse = 0f, di = 0f;
            if (active)
            {
                long qr = QkvRow(p, n, h, i, 0), o = OutRow(p, n, h, i);
                for (int c = 0; c < p.HeadDim; c++)
                {
                    q[c] = v.Qkv[qr + c];
                    dO[c] = v.DOutput[o + c];
                    dq[c] = 0f;
                }
                lse = v.Lse[pair * p.Tokens + i];
                di = v.Di[pair * p.Tokens + i];
            }
            for (int j0 = 0; j0 < p.Tokens; j0 += p.Tile)
            {
                int count = Math.Min(p.Tile, p.Tokens - j0);
                StageRows(v.Qkv, keys, p, n, h, j0, count, 1);
                StageRows(v.Qkv, values, p, n, h, j0, count, 2);
                Group.Barrier();
                if (active)
                {
                    for (int j = 0; j < count; j++)
                    {
                        float s = 0f, dp = 0f;
                        for (int c = 0; c < p.HeadDim; c++)
                        {
                            s += q[c] * keys[j * p.HeadDim + c];
                            dp += dO[c] * values[j * p.HeadDim + c];
                        }
                        float ds = MathF.Exp(p.Scale * s - lse) * (dp - di);
                        for (int c = 0; c < p.HeadDim; c++) dq[c] += ds * keys[j * p.HeadDim + c];
                    }
                }
                Group.Barrier();
            }
            if (active)
            {
                long qr = QkvRow(p, n, h, i, 0);
                for (int c = 0; c < p.HeadDim; c++) dQkv[qr + c] += p.Scale * dq[c];
            }
        }
    }

    /// <summary>dV_j += sum_i P_ij dO_i and dK_j += scale sum_i dS_ij q_i: one thread per key row, queries staged.</summary>
    public static void AttentionBackwardKey(AttentionInputs v, ArrayView<float> dQkv, AttentionArgs p)
    {
        var queries = SharedMemory.Allocate<float>(AttentionSharedTile);
        var grads = SharedMemory.Allocate<float>(AttentionSharedTile);
        var rowStats = SharedMemory.Allocate<float>(2 * 64);
        var k = LocalMemory.Allocate<float>(AttentionMaxHeadDim);
        var val = LocalMemory.Allocate<float>(AttentionMaxHeadDim);
        var dk = LocalMemory.Allocate<float>(AttentionMaxHeadDim);
        var dv = LocalMemory.Allocate<float>(AttentionMaxHeadDim);
        long items = (long)p.Batch * p.Heads * p.Blocks;
        for (long item = Grid.IdxX; item < items; item += Grid.DimX)
        {
            var (pair, n, h, j, active) = AttentionItem.Of(p, item);
            if (active)
            {
                long kr = QkvRow(p, n, h, j, 1), vr = QkvRow(p, n, h, j, 2);
                for (int c = 0; c < p.HeadDim; c++)
                {
                    k[c] = v.Qkv[kr + c];
                    val[c] = v.Qkv[vr + c];
                    dk[c] = 0f;
                    dv[c] = 0f;
                }
            }
            for (int i0 = 0; i0 < p.Tokens; i0 += p.Tile)
            {
                int count = Math.Min(p.Tile, p.Tokens - i0);
                StageRows(v.Qkv, queries, p, n, h, i0, count, 0);
                int elements = count * p.HeadDim;
                for (int e = Group.IdxX; e < elements; e += Group.DimX)
                {
                    int r = e / p.HeadDim, c = e % p.HeadDim;
                    grads[e] = v.DOutput[OutRow(p, n, h, i0 + r) + c];
                }
                for (int r = Group.IdxX; r < count; r += Group.DimX)
                {
                    rowStats[r] = v.Lse[pair * p.Tokens + i0 + r];
                    rowStats[64 + r] = v.Di[pair * p.Tokens + i0 + r];
                }
                Group.Barrier();
                if (active)
                {
                    for (int i = 0; i < count; i++)
                    {
                        float s = 0f, dp = 0f;
                        for (int c = 0; c < p.HeadDim; c++)
                        {
                            s += queries[i * p.HeadDim + c] * k[c];
                            dp += grads[i * p.HeadDim + c] * val[c];
                        }
                        float prob = MathF.Exp(p.Scale * s - rowStats[i]);
                        float ds = prob * (dp - rowStats[64 + i]);
                        for (int c = 0; c < p.HeadDim; c++)
                        {
                            dv[c] += prob * grads[i * p.HeadDim + c];
                            dk[c] += ds * queries[i * p.HeadDim + c];
                        }
                    }
                }
                Group.Barrier();
            }
            if (active)
            {
                long kr = QkvRow(p, n, h, j, 1), vr = QkvRow(p, n, h, j, 2);
                for (int c = 0; c < p.HeadDim; c++)
                {
                    dQkv[kr + c] += p.Scale * dk[c];
                    dQkv[vr + c] += dv[c];
                }
            }
        }
    }
}
