using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Repa.Kernels.Cpu;

/// <summary>LayerNorm fused with its affine and the adaLN modulation, and the adaLN gated residual.</summary>
public sealed unsafe partial class CpuBackend
{
    public void LayerNormForward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? shift, DeviceBuffer? scale,
        DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd, int rows, int dim, int rowsPerGroup, double eps)
    {
        NormCheckSizes("layer_norm", rows, dim, rowsPerGroup, grouped: shift != null || scale != null);
        switch (x.DType)
        {
            case DType.F32:
                LayerNormForward(Host(x).Ptr<float>(), NormPtr<float>(weight), NormPtr<float>(bias), NormPtr<float>(shift), NormPtr<float>(scale),
                    Host(y).Ptr<float>(), Host(mean).Ptr<float>(), Host(rstd).Ptr<float>(), rows, dim, rowsPerGroup, (float)eps);
                break;
            case DType.F64:
                LayerNormForward(Host(x).Ptr<double>(), NormPtr<double>(weight), NormPtr<double>(bias), NormPtr<double>(shift), NormPtr<double>(scale),
                    Host(y).Ptr<double>(), Host(mean).Ptr<double>(), Host(rstd).Ptr<double>(), rows, dim, rowsPerGroup, eps);
                break;
            default: throw Unsupported(x.DType);
        }
    }

    public void LayerNormBackward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? scale,
        DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer dy,
        DeviceBuffer? dx, DeviceBuffer? dweight, DeviceBuffer? dbias, DeviceBuffer? dshift, DeviceBuffer? dscale,
        int rows, int dim, int rowsPerGroup)
    {
        NormCheckSizes("layer_norm backward", rows, dim, rowsPerGroup, grouped: scale != null || dshift != null || dscale != null);
        switch (x.DType)
        {
            case DType.F32:
                LayerNormBackward(Host(x).Ptr<float>(), NormPtr<float>(weight), NormPtr<float>(bias), NormPtr<float>(scale),
                    Host(mean).Ptr<float>(), Host(rstd).Ptr<float>(), Host(dy).Ptr<float>(),
                    NormPtr<float>(dx), NormPtr<float>(dweight), NormPtr<float>(dbias), NormPtr<float>(dshift), NormPtr<float>(dscale),
                    rows, dim, rowsPerGroup);
                break;
            case DType.F64:
                LayerNormBackward(Host(x).Ptr<double>(), NormPtr<double>(weight), NormPtr<double>(bias), NormPtr<double>(scale),
                    Host(mean).Ptr<double>(), Host(rstd).Ptr<double>(), Host(dy).Ptr<double>(),
                    NormPtr<double>(dx), NormPtr<double>(dweight), NormPtr<double>(dbias), NormPtr<double>(dshift), NormPtr<double>(dscale),
                    rows, dim, rowsPerGroup);
                break;
            default: throw Unsupported(x.DType);
        }
    }

    public void GatedResidualForward(DeviceBuffer x, DeviceBuffer y, DeviceBuffer gate, DeviceBuffer output, int rows, int dim, int rowsPerGroup)
    {
        NormCheckSizes("gated_residual", rows, dim, rowsPerGroup, grouped: true);
        switch (x.DType)
        {
            case DType.F32: GatedResidualForward(Host(x).Ptr<float>(), Host(y).Ptr<float>(), Host(gate).Ptr<float>(), Host(output).Ptr<float>(), rows, dim, rowsPerGroup); break;
            case DType.F64: GatedResidualForward(Host(x).Ptr<double>(), Host(y).Ptr<double>(), Host(gate).Ptr<double>(), Host(output).Ptr<double>(), rows, dim, rowsPerGroup); break;
            default: throw Unsupported(x.DType);
        }
    }

    public void GatedResidualBackward(DeviceBuffer y, DeviceBuffer gate, DeviceBuffer dout, DeviceBuffer? dx, DeviceBuffer? dy, DeviceBuffer? dgate,
        int rows, int dim, int rowsPerGroup)
    {
        NormCheckSizes("gated_residual backward", rows, dim, rowsPerGroup, grouped: true);
        switch (y.DType)
        {
            case DType.F32:
                GatedResidualBackward(Host(y).Ptr<float>(), Host(gate).Ptr<float>(), Host(dout).Ptr<float>(),
                    NormPtr<float>(dx), NormPtr<float>(dy), NormPtr<float>(dgate), rows, dim, rowsPerGroup);
                break;
            case DType.F64:
                GatedResidualBackward(Host(y).Ptr<double>(), Host(gate).Ptr<double>(), Host(dout).Ptr<double>(),
                    NormPtr<double>(dx), NormPtr<double>(dy), NormPtr<double>(dgate), rows, dim, rowsPerGroup);
                break;
            default: throw Unsupported(y.DType);
        }
    }

    private static T* NormPtr<T>(DeviceBuffer? buffer) where T : unmanaged => buffer == null ? null : Host(buffer).Ptr<T>();

    private static void NormCheckSizes(string op, int rows, int dim, int rowsPerGroup, bool grouped) =>
        OpChecks.NormSizes("cpu", op, rows, dim, rowsPerGroup, grouped);

    // ---- LayerNorm ----

    private void LayerNormForward<T>(T* x, T* w, T* b, T* shift, T* scale, T* y, T* mean, T* rstd, int rows, int dim, int rowsPerGroup, T eps)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (rows == 0) return;
        bool modulated = shift != null || scale != null;
        // Modulation folds into the affine: per group, A = w (1 + scale), B = b (1 + scale) + shift, so each row is
        // y = xhat * A + B: one pass instead of three.
        T* coeff = null;
        try
        {
            if (modulated)
            {
                int groups = rows / rowsPerGroup;
                coeff = (T*)NativeMemory.Alloc((nuint)((long)groups * 2 * dim * sizeof(T)));
                CpuParallel.For(groups, Math.Max(1, Grain / dim), Threads, (start, end) =>
                {
                    for (long g = start; g < end; g++)
                    {
                        var a = new Span<T>(coeff + g * 2 * dim, dim);
                        var c = new Span<T>(coeff + g * 2 * dim + dim, dim);
                        if (scale != null) TensorPrimitives.Add(new ReadOnlySpan<T>(scale + g * dim, dim), T.One, a);
                        else a.Fill(T.One);
                        if (b != null) TensorPrimitives.Multiply(new ReadOnlySpan<T>(b, dim), a, c);
                        else c.Clear();
                        if (shift != null) TensorPrimitives.Add(c, new ReadOnlySpan<T>(shift + g * dim, dim), c);
                        if (w != null) TensorPrimitives.Multiply(a, new ReadOnlySpan<T>(w, dim), a);
                    }
                });
            }
            T invDim = T.One / T.CreateChecked(dim);
            CpuParallel.For(rows, Math.Max(1, Grain / dim), Threads, (start, end) =>
            {
                for (long r = start; r < end; r++)
                {
                    var xs = new ReadOnlySpan<T>(x + r * dim, dim);
                    var ys = new Span<T>(y + r * dim, dim);
                    // Two-pass statistics: the centred values are needed anyway, and they keep the variance free of
                    // the cancellation of E[x^2] - E[x]^2 when |mean| >> std.
                    T mu = TensorPrimitives.Sum(xs) * invDim;
                    TensorPrimitives.Subtract(xs, mu, ys);
                    T rs = T.One / T.Sqrt(TensorPrimitives.SumOfSquares<T>(ys) * invDim + eps);
                    mean[r] = mu;
                    rstd[r] = rs;
                    TensorPrimitives.Multiply(ys, rs, ys);
                    T* a = w, c = b;
                    if (modulated)
                    {
                        a = coeff + r / rowsPerGroup * 2 * dim;
                        c = a + dim;
                    }
                    if (a != null && c != null) TensorPrimitives.MultiplyAdd(ys, new ReadOnlySpan<T>(a, dim), new ReadOnlySpan<T>(c, dim), ys);
                    else if (a != null) TensorPrimitives.Multiply(ys, new ReadOnlySpan<T>(a, dim), ys);
                    else if (c != null) TensorPrimitives.Add(ys, new ReadOnlySpan<T>(c, dim), ys);
                }
            });
        }
        finally
        {
            if (coeff != null) NativeMemory.Free(coeff);
        }
    }

    private void LayerNormBackward<T>(T* x, T* w, T* b, T* scale, T* mean, T* rstd, T* dy,
        T* dx, T* dw, T* db, T* dshift, T* dscale, int rows, int dim, int rowsPerGroup)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (rows == 0 || (dx == null && dw == null && db == null && dshift == null && dscale == null)) return;
        if (scale == null && dshift == null && dscale == null) rowsPerGroup = 1; // ungrouped: any row split is fine
        var chunks = new NormChunks(rows, rowsPerGroup, NormChunkCount(rows, dim));
        // Per chunk: xhat, a work row, dweight and dbias partials, two group slots each for dshift and dscale.
        long stride = 8L * dim;
        T* scratch = (T*)NativeMemory.AllocZeroed((nuint)(chunks.Count * stride * sizeof(T)));
        try
        {
            T invDim = T.One / T.CreateChecked(dim);
            CpuParallel.For(chunks.Count, 1, Threads, (cs, ce) =>
            {
                for (int c = (int)cs; c < ce; c++)
                {
                    T* xh = scratch + c * stride, t = xh + dim, pdw = t + dim, pdb = pdw + dim, slotShift = pdb + dim, slotScale = slotShift + 2 * dim;
                    var xhs = new Span<T>(xh, dim);
                    var ts = new Span<T>(t, dim);
                    for (long r = chunks.Start(c), end = chunks.Start(c + 1); r < end; r++)
                    {
                        long g = r / rowsPerGroup;
                        var dys = new ReadOnlySpan<T>(dy + r * dim, dim);
                        T rs = rstd[r];
                        TensorPrimitives.Subtract(new ReadOnlySpan<T>(x + r * dim, dim), mean[r], xhs);
                        TensorPrimitives.Multiply(xhs, rs, xhs);
                        if (dshift != null)
                        {
                            var acc = new Span<T>(chunks.Target(c, g, dshift, slotShift, dim), dim);
                            TensorPrimitives.Add(acc, dys, acc);
                        }
                        if (dscale != null)
                        {
                            // dscale sums dy * z over the group, z = xhat * w + b being the value that was modulated.
                            if (w != null && b != null) TensorPrimitives.MultiplyAdd(xhs, new ReadOnlySpan<T>(w, dim), new ReadOnlySpan<T>(b, dim), ts);
                            else if (w != null) TensorPrimitives.Multiply(xhs, new ReadOnlySpan<T>(w, dim), ts);
                            else if (b != null) TensorPrimitives.Add(xhs, new ReadOnlySpan<T>(b, dim), ts);
                            else xhs.CopyTo(ts);
                            var acc = new Span<T>(chunks.Target(c, g, dscale, slotScale, dim), dim);
                            TensorPrimitives.MultiplyAdd(dys, ts, acc, acc);
                        }
                        // dz = dy (1 + scale[g]): the gradient reaching the affine output.
                        if (scale != null) TensorPrimitives.MultiplyAdd(dys, new ReadOnlySpan<T>(scale + g * dim, dim), dys, ts);
                        else dys.CopyTo(ts);
                        if (dw != null) TensorPrimitives.MultiplyAdd(ts, xhs, new ReadOnlySpan<T>(pdw, dim), new Span<T>(pdw, dim));
                        if (db != null) TensorPrimitives.Add(new ReadOnlySpan<T>(pdb, dim), ts, new Span<T>(pdb, dim));
                        if (dx == null) continue;
                        // dxhat = dz w; dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)).
                        if (w != null) TensorPrimitives.Multiply(ts, new ReadOnlySpan<T>(w, dim), ts);
                        T m1 = TensorPrimitives.Sum<T>(ts) * invDim;
                        T m2 = TensorPrimitives.Dot<T>(ts, xhs) * invDim;
                        TensorPrimitives.Subtract(ts, m1, ts);
                        TensorPrimitives.MultiplyAdd(xhs, -m2, ts, ts);
                        var dxs = new Span<T>(dx + r * dim, dim);
                        TensorPrimitives.MultiplyAdd(ts, rs, dxs, dxs);
                    }
                }
            });
            // Reduce the per-chunk partials in chunk order (deterministic for a given thread count).
            for (int c = 0; c < chunks.Count; c++)
            {
                T* pdw = scratch + c * stride + 2 * dim, pdb = pdw + dim;
                if (dw != null) TensorPrimitives.Add(new ReadOnlySpan<T>(dw, dim), new ReadOnlySpan<T>(pdw, dim), new Span<T>(dw, dim));
                if (db != null) TensorPrimitives.Add(new ReadOnlySpan<T>(db, dim), new ReadOnlySpan<T>(pdb, dim), new Span<T>(db, dim));
            }
            if (dshift != null) chunks.FlushShared(dshift, scratch + 4 * dim, stride, dim);
            if (dscale != null) chunks.FlushShared(dscale, scratch + 6 * dim, stride, dim);
        }
        finally
        {
            NativeMemory.Free(scratch);
        }
    }

    // ---- gated residual ----

    private void GatedResidualForward<T>(T* x, T* y, T* gate, T* output, int rows, int dim, int rowsPerGroup)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        CpuParallel.For(rows, Math.Max(1, Grain / dim), Threads, (start, end) =>
        {
            for (long r = start; r < end; r++)
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<T>(y + r * dim, dim), new ReadOnlySpan<T>(gate + r / rowsPerGroup * dim, dim),
                    new ReadOnlySpan<T>(x + r * dim, dim), new Span<T>(output + r * dim, dim));
        });
    }

    private void GatedResidualBackward<T>(T* y, T* gate, T* dout, T* dx, T* dy, T* dgate, int rows, int dim, int rowsPerGroup)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (rows == 0 || (dx == null && dy == null && dgate == null)) return;
        var chunks = new NormChunks(rows, rowsPerGroup, NormChunkCount(rows, dim));
        long stride = 2L * dim; // two dgate slots per chunk
        T* slots = dgate == null ? null : (T*)NativeMemory.AllocZeroed((nuint)(chunks.Count * stride * sizeof(T)));
        try
        {
            CpuParallel.For(chunks.Count, 1, Threads, (cs, ce) =>
            {
                for (int c = (int)cs; c < ce; c++)
                {
                    for (long r = chunks.Start(c), end = chunks.Start(c + 1); r < end; r++)
                    {
                        long g = r / rowsPerGroup;
                        var ds = new ReadOnlySpan<T>(dout + r * dim, dim);
                        // dx may alias dy (x and y the same tensor): each update reads only dout, so the order is free.
                        if (dx != null) TensorPrimitives.Add(new ReadOnlySpan<T>(dx + r * dim, dim), ds, new Span<T>(dx + r * dim, dim));
                        if (dy != null)
                            TensorPrimitives.MultiplyAdd(ds, new ReadOnlySpan<T>(gate + g * dim, dim), new ReadOnlySpan<T>(dy + r * dim, dim), new Span<T>(dy + r * dim, dim));
                        if (dgate != null)
                        {
                            var acc = new Span<T>(chunks.Target(c, g, dgate, slots + c * stride, dim), dim);
                            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<T>(y + r * dim, dim), ds, acc, acc);
                        }
                    }
                }
            });
            if (dgate != null) chunks.FlushShared(dgate, slots, stride, dim);
        }
        finally
        {
            if (slots != null) NativeMemory.Free(slots);
        }
    }

    // ---- race-free reductions over rows ----

    /// <summary>Chunks for a row reduction: enough work per chunk to pay for a thread, never more chunks than rows.</summary>
    private int NormChunkCount(int rows, int dim) => (int)Math.Clamp((long)rows * dim / Grain, 1, Math.Max(1, Math.Min(Threads, rows)));

    /// <summary>
    /// Contiguous row ranges, one per task, for sums over each group of rowsPerGroup consecutive rows. A group whose rows
    /// all lie in one chunk is accumulated by that chunk straight into the destination (no one else touches it); a
    /// group split between chunks is summed into chunk-private slots (slot 0: the chunk's first group, slot 1: its
    /// last) that <see cref="FlushShared{T}"/> adds afterwards. Race-free and deterministic with O(chunks * dim) scratch
    /// instead of a [chunks, groups, dim] partial table, whether there are more groups than threads or fewer.
    /// </summary>
    private readonly struct NormChunks
    {
        private readonly long rows;
        private readonly int rowsPerGroup;

        public NormChunks(long rows, int rowsPerGroup, int count)
        {
            this.rows = rows;
            this.rowsPerGroup = rowsPerGroup;
            Count = count;
        }

        public int Count { get; }

        public long Start(int chunk) => rows * chunk / Count;

        private bool Owns(int chunk, long group) => group * rowsPerGroup >= Start(chunk) && (group + 1) * rowsPerGroup <= Start(chunk + 1);

        /// <summary>Where chunk <paramref name="chunk"/> accumulates group <paramref name="group"/>: its row of dst, or a private slot.</summary>
        public T* Target<T>(int chunk, long group, T* dst, T* slots, int dim) where T : unmanaged =>
            Owns(chunk, group) ? dst + group * dim : slots + (group == Start(chunk) / rowsPerGroup ? 0 : dim);

        /// <summary>dst[group] += the slots of every chunk that shared it; chunk c's slots start at slots + c * stride.</summary>
        public void FlushShared<T>(T* dst, T* slots, long stride, int dim) where T : unmanaged, IFloatingPointIeee754<T>
        {
            for (int c = 0; c < Count; c++)
            {
                long first = Start(c) / rowsPerGroup, last = (Start(c + 1) - 1) / rowsPerGroup;
                T* s = slots + c * stride;
                if (!Owns(c, first)) TensorPrimitives.Add(new ReadOnlySpan<T>(dst + first * dim, dim), new ReadOnlySpan<T>(s, dim), new Span<T>(dst + first * dim, dim));
                if (last != first && !Owns(c, last)) TensorPrimitives.Add(new ReadOnlySpan<T>(dst + last * dim, dim), new ReadOnlySpan<T>(s + dim, dim), new Span<T>(dst + last * dim, dim));
            }
        }
    }
}
