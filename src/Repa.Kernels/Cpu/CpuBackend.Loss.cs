using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Repa.Kernels.Cpu;

/// <summary>
/// Per-sample MSE, the fused cosine alignment loss, row L2 normalisation, the diagonal cross-entropy of NT-Xent and
/// DiT's variational-bound term.
/// Per-row or per-block partial results go to a scratch array and are summed per sample in a fixed order, so the
/// result does not depend on the thread count.
/// </summary>
public sealed unsafe partial class CpuBackend
{
    private const int NormBlock = 512; // row elements per stack scratch block of the normalising kernels

    // ---- MSE ----

    public void MseForward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer loss, int samples, long inner)
    {
        switch (loss.DType)
        {
            case DType.F32: MseForward(Host(prediction).Ptr<float>(), Host(target).Ptr<float>(), Host(loss).Ptr<float>(), samples, inner); break;
            case DType.F64: MseForward(Host(prediction).Ptr<double>(), Host(target).Ptr<double>(), Host(loss).Ptr<double>(), samples, inner); break;
            default: throw Unsupported(loss.DType);
        }
    }

    private void MseForward<T>(T* p, T* t, T* loss, int samples, long inner) where T : unmanaged, IFloatingPointIeee754<T>
    {
        // Blocks of one chunk each so that a batch of one large sample still spreads over the threads.
        long blocks = (inner + Chunk - 1) / Chunk, jobs = samples * blocks;
        double* partial = (double*)NativeMemory.Alloc((nuint)Math.Max(jobs, 1), sizeof(double));
        try
        {
            CpuParallel.For(jobs, Math.Max(1, Grain / Chunk), Threads, (start, end) =>
            {
                Span<T> diff = stackalloc T[Chunk];
                for (long job = start; job < end; job++)
                {
                    long s = job / blocks, i0 = job % blocks * Chunk;
                    int len = (int)Math.Min(Chunk, inner - i0);
                    long off = s * inner + i0;
                    var d = diff[..len];
                    TensorPrimitives.Subtract(new ReadOnlySpan<T>(p + off, len), new ReadOnlySpan<T>(t + off, len), d);
                    partial[job] = double.CreateTruncating(TensorPrimitives.SumOfSquares<T>(d));
                }
            });
            for (int s = 0; s < samples; s++)
            {
                double sum = 0;
                for (long b = 0; b < blocks; b++) sum += partial[s * blocks + b];
                loss[s] = T.CreateTruncating(sum / inner);
            }
        }
        finally
        {
            NativeMemory.Free(partial);
        }
    }

    public void MseBackward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer dLoss, DeviceBuffer? dPrediction,
        DeviceBuffer? dTarget, int samples, long inner)
    {
        if (dPrediction == null && dTarget == null) return;
        switch (dLoss.DType)
        {
            case DType.F32:
                MseBackward(Host(prediction).Ptr<float>(), Host(target).Ptr<float>(), Host(dLoss).Ptr<float>(),
                    dPrediction == null ? null : Host(dPrediction).Ptr<float>(), dTarget == null ? null : Host(dTarget).Ptr<float>(), samples, inner);
                break;
            case DType.F64:
                MseBackward(Host(prediction).Ptr<double>(), Host(target).Ptr<double>(), Host(dLoss).Ptr<double>(),
                    dPrediction == null ? null : Host(dPrediction).Ptr<double>(), dTarget == null ? null : Host(dTarget).Ptr<double>(), samples, inner);
                break;
            default: throw Unsupported(dLoss.DType);
        }
    }

    private void MseBackward<T>(T* p, T* t, T* dLoss, T* dp, T* dt, int samples, long inner) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long blocks = (inner + Chunk - 1) / Chunk;
        CpuParallel.For(samples * blocks, Math.Max(1, Grain / Chunk), Threads, (start, end) =>
        {
            Span<T> diff = stackalloc T[Chunk];
            for (long job = start; job < end; job++)
            {
                long s = job / blocks, i0 = job % blocks * Chunk;
                int len = (int)Math.Min(Chunk, inner - i0);
                long off = s * inner + i0;
                T c = T.CreateTruncating(2.0 / inner) * dLoss[s];
                var d = diff[..len];
                TensorPrimitives.Subtract(new ReadOnlySpan<T>(p + off, len), new ReadOnlySpan<T>(t + off, len), d);
                if (dp != null) { var g = new Span<T>(dp + off, len); TensorPrimitives.MultiplyAdd(d, c, g, g); }
                if (dt != null) { var g = new Span<T>(dt + off, len); TensorPrimitives.MultiplyAdd(d, -c, g, g); }
            }
        });
    }

    // ---- cosine alignment (REPA projection loss) ----

    public void CosineAlignmentForward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer loss, int samples, int tokens, int dim, double eps)
    {
        switch (loss.DType)
        {
            case DType.F32: CosineAlignmentForward(Host(z).Ptr<float>(), Host(h).Ptr<float>(), Host(loss).Ptr<float>(), samples, tokens, dim, (float)eps); break;
            case DType.F64: CosineAlignmentForward(Host(z).Ptr<double>(), Host(h).Ptr<double>(), Host(loss).Ptr<double>(), samples, tokens, dim, eps); break;
            default: throw Unsupported(loss.DType);
        }
    }

    private void CosineAlignmentForward<T>(T* z, T* h, T* loss, int samples, int tokens, int dim, T eps) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long rows = (long)samples * tokens;
        double* cos = (double*)NativeMemory.Alloc((nuint)Math.Max(rows, 1), sizeof(double));
        try
        {
            CpuParallel.For(rows, Math.Max(1, Grain / Math.Max(dim, 1)), Threads, (start, end) =>
            {
                for (long r = start; r < end; r++)
                {
                    var zr = new ReadOnlySpan<T>(z + r * dim, dim);
                    var hr = new ReadOnlySpan<T>(h + r * dim, dim);
                    T nz = T.Max(T.Sqrt(TensorPrimitives.Dot(zr, zr)), eps);
                    T nh = T.Max(T.Sqrt(TensorPrimitives.Dot(hr, hr)), eps);
                    cos[r] = double.CreateTruncating(TensorPrimitives.Dot(zr, hr) / (nz * nh));
                }
            });
            for (int s = 0; s < samples; s++)
            {
                double sum = 0;
                for (int t = 0; t < tokens; t++) sum += cos[(long)s * tokens + t];
                loss[s] = T.CreateTruncating(-sum / tokens);
            }
        }
        finally
        {
            NativeMemory.Free(cos);
        }
    }

    public void CosineAlignmentBackward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer dLoss, DeviceBuffer? dz, DeviceBuffer? dh,
        int samples, int tokens, int dim, double eps)
    {
        if (dz == null && dh == null) return;
        switch (dLoss.DType)
        {
            case DType.F32:
                CosineAlignmentBackward(Host(z).Ptr<float>(), Host(h).Ptr<float>(), Host(dLoss).Ptr<float>(),
                    dz == null ? null : Host(dz).Ptr<float>(), dh == null ? null : Host(dh).Ptr<float>(), samples, tokens, dim, (float)eps);
                break;
            case DType.F64:
                CosineAlignmentBackward(Host(z).Ptr<double>(), Host(h).Ptr<double>(), Host(dLoss).Ptr<double>(),
                    dz == null ? null : Host(dz).Ptr<double>(), dh == null ? null : Host(dh).Ptr<double>(), samples, tokens, dim, eps);
                break;
            default: throw Unsupported(dLoss.DType);
        }
    }

    private void CosineAlignmentBackward<T>(T* z, T* h, T* dLoss, T* dz, T* dh, int samples, int tokens, int dim, T eps)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        long rows = (long)samples * tokens;
        T invTokens = T.One / T.CreateTruncating(tokens);
        CpuParallel.For(rows, Math.Max(1, Grain / Math.Max(dim, 1)), Threads, (start, end) =>
        {
            Span<T> zh = stackalloc T[NormBlock], hh = stackalloc T[NormBlock], u = stackalloc T[NormBlock];
            for (long r = start; r < end; r++)
            {
                T* zr = z + r * dim, hr = h + r * dim;
                T nz = T.Sqrt(TensorPrimitives.Dot(new ReadOnlySpan<T>(zr, dim), new ReadOnlySpan<T>(zr, dim)));
                T nh = T.Sqrt(TensorPrimitives.Dot(new ReadOnlySpan<T>(hr, dim), new ReadOnlySpan<T>(hr, dim)));
                T nzc = T.Max(nz, eps), nhc = T.Max(nh, eps);
                T c = TensorPrimitives.Dot(new ReadOnlySpan<T>(zr, dim), new ReadOnlySpan<T>(hr, dim)) / (nzc * nhc);
                T g = -dLoss[r / tokens] * invTokens;
                // d c / dz = (h_hat - c z_hat) / |z|, or h_hat / eps where the norm is clamped (z_hat = z / eps is
                // then linear in z). Formed from the normalised rows, as autograd through F.normalize would, so that
                // the parallel parts cancel exactly (e.g. for Z = 1 the gradient is exactly 0).
                T cz = nz > eps ? c : T.Zero, ch = nh > eps ? c : T.Zero;
                for (int j0 = 0; j0 < dim; j0 += NormBlock)
                {
                    int len = Math.Min(NormBlock, dim - j0);
                    Span<T> zb = zh[..len], hb = hh[..len], ub = u[..len];
                    TensorPrimitives.Divide(new ReadOnlySpan<T>(zr + j0, len), nzc, zb);
                    TensorPrimitives.Divide(new ReadOnlySpan<T>(hr + j0, len), nhc, hb);
                    if (dz != null)
                    {
                        TensorPrimitives.MultiplyAdd(zb, -cz, hb, ub);
                        var gz = new Span<T>(dz + r * dim + j0, len);
                        TensorPrimitives.MultiplyAdd(ub, g / nzc, gz, gz);
                    }
                    if (dh != null)
                    {
                        TensorPrimitives.MultiplyAdd(hb, -ch, zb, ub);
                        var gh = new Span<T>(dh + r * dim + j0, len);
                        TensorPrimitives.MultiplyAdd(ub, g / nhc, gh, gh);
                    }
                }
            }
        });
    }

    // ---- row L2 normalisation (torch.nn.functional.normalize, dim = -1) ----

    public void RowL2NormalizeForward(DeviceBuffer x, DeviceBuffer y, long rows, int dim, double eps)
    {
        switch (y.DType)
        {
            case DType.F32: RowL2NormalizeForward(Host(x).Ptr<float>(), Host(y).Ptr<float>(), rows, dim, (float)eps); break;
            case DType.F64: RowL2NormalizeForward(Host(x).Ptr<double>(), Host(y).Ptr<double>(), rows, dim, eps); break;
            default: throw Unsupported(y.DType);
        }
    }

    private void RowL2NormalizeForward<T>(T* x, T* y, long rows, int dim, T eps) where T : unmanaged, IFloatingPointIeee754<T>
    {
        CpuParallel.For(rows, Math.Max(1, Grain / Math.Max(dim, 1)), Threads, (start, end) =>
        {
            for (long r = start; r < end; r++)
            {
                var xr = new ReadOnlySpan<T>(x + r * dim, dim);
                T n = T.Max(T.Sqrt(TensorPrimitives.Dot(xr, xr)), eps);
                TensorPrimitives.Divide(xr, n, new Span<T>(y + r * dim, dim));
            }
        });
    }

    public void RowL2NormalizeBackward(DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long rows, int dim, double eps)
    {
        switch (dx.DType)
        {
            case DType.F32: RowL2NormalizeBackward(Host(x).Ptr<float>(), Host(dy).Ptr<float>(), Host(dx).Ptr<float>(), rows, dim, (float)eps); break;
            case DType.F64: RowL2NormalizeBackward(Host(x).Ptr<double>(), Host(dy).Ptr<double>(), Host(dx).Ptr<double>(), rows, dim, eps); break;
            default: throw Unsupported(dx.DType);
        }
    }

    private void RowL2NormalizeBackward<T>(T* x, T* dy, T* dx, long rows, int dim, T eps) where T : unmanaged, IFloatingPointIeee754<T>
    {
        CpuParallel.For(rows, Math.Max(1, Grain / Math.Max(dim, 1)), Threads, (start, end) =>
        {
            Span<T> y = stackalloc T[NormBlock];
            for (long r = start; r < end; r++)
            {
                T* xr = x + r * dim, gr = dy + r * dim, dxr = dx + r * dim;
                T n = T.Sqrt(TensorPrimitives.Dot(new ReadOnlySpan<T>(xr, dim), new ReadOnlySpan<T>(xr, dim))), nc = T.Max(n, eps);
                // dx = (dy - y <y, dy>) / |x| with y = x / |x|; just dy / eps where the norm is clamped. y is
                // recomputed by the same division as the forward so the radial part cancels exactly.
                T yg = T.Zero;
                if (n > eps)
                    for (int j0 = 0; j0 < dim; j0 += NormBlock)
                    {
                        int len = Math.Min(NormBlock, dim - j0);
                        TensorPrimitives.Divide(new ReadOnlySpan<T>(xr + j0, len), nc, y[..len]);
                        yg += TensorPrimitives.Dot<T>(y[..len], new ReadOnlySpan<T>(gr + j0, len));
                    }
                for (int j0 = 0; j0 < dim; j0 += NormBlock)
                {
                    int len = Math.Min(NormBlock, dim - j0);
                    var yb = y[..len];
                    TensorPrimitives.Divide(new ReadOnlySpan<T>(xr + j0, len), nc, yb);
                    TensorPrimitives.MultiplyAdd(yb, -yg, new ReadOnlySpan<T>(gr + j0, len), yb); // dy - y <y, dy>
                    var d = new Span<T>(dxr + j0, len);
                    TensorPrimitives.MultiplyAdd(yb, T.One / nc, d, d);
                }
            }
        });
    }

    // ---- cross-entropy on the diagonal (NT-Xent) ----

    public void DiagonalCrossEntropyForward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer loss, int samples, int n, double scale)
    {
        switch (loss.DType)
        {
            case DType.F32: DiagonalCrossEntropyForward(Host(logits).Ptr<float>(), Host(lse).Ptr<float>(), Host(loss).Ptr<float>(), samples, n, (float)scale); break;
            case DType.F64: DiagonalCrossEntropyForward(Host(logits).Ptr<double>(), Host(lse).Ptr<double>(), Host(loss).Ptr<double>(), samples, n, scale); break;
            default: throw Unsupported(loss.DType);
        }
    }

    private void DiagonalCrossEntropyForward<T>(T* s, T* lse, T* loss, int samples, int n, T scale) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long rows = (long)samples * n;
        CpuParallel.For(rows, Math.Max(1, Grain / Math.Max(n, 1)), Threads, (start, end) =>
        {
            Span<T> buf = stackalloc T[Chunk];
            for (long r = start; r < end; r++)
            {
                T* row = s + r * n;
                // Scaled max first so exp never overflows; a negative scale would flip it, hence Max of the scaled chunk.
                T m = T.NegativeInfinity;
                for (int j0 = 0; j0 < n; j0 += Chunk)
                {
                    int len = Math.Min(Chunk, n - j0);
                    TensorPrimitives.Multiply(new ReadOnlySpan<T>(row + j0, len), scale, buf[..len]);
                    m = T.Max(m, TensorPrimitives.Max<T>(buf[..len]));
                }
                T sum = T.Zero;
                for (int j0 = 0; j0 < n; j0 += Chunk)
                {
                    int len = Math.Min(Chunk, n - j0);
                    var b = buf[..len];
                    TensorPrimitives.Multiply(new ReadOnlySpan<T>(row + j0, len), scale, b);
                    TensorPrimitives.Subtract(b, m, b);
                    TensorPrimitives.Exp<T>(b, b);
                    sum += TensorPrimitives.Sum<T>(b);
                }
                lse[r] = m + T.Log(sum);
            }
        });
        for (int sm = 0; sm < samples; sm++)
        {
            double acc = 0;
            for (int i = 0; i < n; i++)
            {
                long r = (long)sm * n + i;
                acc += double.CreateTruncating(lse[r] - scale * s[r * n + i]);
            }
            loss[sm] = T.CreateTruncating(acc / n);
        }
    }

    public void DiagonalCrossEntropyBackward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer dLoss, DeviceBuffer dLogits,
        int samples, int n, double scale)
    {
        switch (dLogits.DType)
        {
            case DType.F32:
                DiagonalCrossEntropyBackward(Host(logits).Ptr<float>(), Host(lse).Ptr<float>(), Host(dLoss).Ptr<float>(), Host(dLogits).Ptr<float>(), samples, n, (float)scale);
                break;
            case DType.F64:
                DiagonalCrossEntropyBackward(Host(logits).Ptr<double>(), Host(lse).Ptr<double>(), Host(dLoss).Ptr<double>(), Host(dLogits).Ptr<double>(), samples, n, scale);
                break;
            default: throw Unsupported(dLogits.DType);
        }
    }

    private void DiagonalCrossEntropyBackward<T>(T* s, T* lse, T* dLoss, T* ds, int samples, int n, T scale) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long rows = (long)samples * n;
        T invN = T.One / T.CreateTruncating(n);
        CpuParallel.For(rows, Math.Max(1, Grain / Math.Max(n, 1)), Threads, (start, end) =>
        {
            Span<T> buf = stackalloc T[Chunk];
            for (long r = start; r < end; r++)
            {
                T coeff = dLoss[r / n] * scale * invN;
                T* row = s + r * n, grad = ds + r * n;
                for (int j0 = 0; j0 < n; j0 += Chunk)
                {
                    int len = Math.Min(Chunk, n - j0);
                    var b = buf[..len];
                    TensorPrimitives.Multiply(new ReadOnlySpan<T>(row + j0, len), scale, b);
                    TensorPrimitives.Subtract(b, lse[r], b);
                    TensorPrimitives.Exp<T>(b, b);
                    var g = new Span<T>(grad + j0, len);
                    TensorPrimitives.MultiplyAdd(b, coeff, g, g);
                }
                grad[r % n] -= coeff;
            }
        });
    }

    // ---- DiT's variational-bound term of the learned variance ----

    public void DiffusionVlbForward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer loss, int samples, long inner)
    {
        switch (loss.DType)
        {
            case DType.F32:
                DiffusionVlb(Host(varValues).Ptr<float>(), Host(mean).Ptr<float>(), Host(trueMean).Ptr<float>(), Host(x0).Ptr<float>(),
                    Host(stepParams).Ptr<float>(), Host(loss).Ptr<float>(), null, null, samples, inner);
                break;
            case DType.F64:
                DiffusionVlb(Host(varValues).Ptr<double>(), Host(mean).Ptr<double>(), Host(trueMean).Ptr<double>(), Host(x0).Ptr<double>(),
                    Host(stepParams).Ptr<double>(), Host(loss).Ptr<double>(), null, null, samples, inner);
                break;
            default: throw Unsupported(loss.DType);
        }
    }

    public void DiffusionVlbBackward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer dLoss, DeviceBuffer dVarValues, int samples, long inner)
    {
        switch (dVarValues.DType)
        {
            case DType.F32:
                DiffusionVlb(Host(varValues).Ptr<float>(), Host(mean).Ptr<float>(), Host(trueMean).Ptr<float>(), Host(x0).Ptr<float>(),
                    Host(stepParams).Ptr<float>(), null, Host(dLoss).Ptr<float>(), Host(dVarValues).Ptr<float>(), samples, inner);
                break;
            case DType.F64:
                DiffusionVlb(Host(varValues).Ptr<double>(), Host(mean).Ptr<double>(), Host(trueMean).Ptr<double>(), Host(x0).Ptr<double>(),
                    Host(stepParams).Ptr<double>(), null, Host(dLoss).Ptr<double>(), Host(dVarValues).Ptr<double>(), samples, inner);
                break;
            default: throw Unsupported(dVarValues.DType);
        }
    }

    /// <summary>
    /// Forward when <paramref name="loss"/> is set (per-block partial sums in fp64, combined per sample in a fixed order),
    /// backward (dv += ...) when <paramref name="dv"/> is set. Element-wise scalar code: exp/tanh/log per element, and the
    /// per-sample work is C*H*W elements, tiny beside the model.
    /// </summary>
    private void DiffusionVlb<T>(T* v, T* mean, T* trueMean, T* x0, T* stepParams, T* loss, T* dLoss, T* dv, int samples, long inner)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        long blocks = (inner + Chunk - 1) / Chunk, jobs = samples * blocks;
        double* partial = loss != null ? (double*)NativeMemory.Alloc((nuint)Math.Max(jobs, 1), sizeof(double)) : null;
        try
        {
            CpuParallel.For(jobs, Math.Max(1, Grain / Chunk / 8), Threads, (start, end) =>
            {
                for (long job = start; job < end; job++)
                {
                    long s = job / blocks, i0 = s * inner + job % blocks * Chunk, i1 = Math.Min(i0 + Chunk, (s + 1) * inner);
                    T* p = stepParams + 4 * s;
                    T minLog = p[0], maxLog = p[1], trueLogVar = p[2];
                    bool decoder = p[3] != T.Zero;
                    // d term / d v = d term / d log_var * (max_log - min_log) / 2, then the mean over elements and 1/ln 2.
                    T gradScale = dv != null
                        ? dLoss[s] * (maxLog - minLog) / T.CreateTruncating(2 * inner * Math.Log(2.0)) : T.Zero;
                    double sum = 0;
                    for (long i = i0; i < i1; i++)
                    {
                        T frac = (v[i] + T.One) / T.CreateTruncating(2);
                        T logVar = frac * maxLog + (T.One - frac) * minLog;
                        T term, dTerm;
                        if (decoder) term = VlbDecoderNll(x0[i], mean[i], logVar, out dTerm);
                        else term = VlbNormalKl(trueMean[i], trueLogVar, mean[i], logVar, out dTerm);
                        sum += double.CreateTruncating(term);
                        if (dv != null) dv[i] += gradScale * dTerm;
                    }
                    if (partial != null) partial[job] = sum;
                }
            });
            if (loss == null) return;
            for (int s = 0; s < samples; s++)
            {
                double sum = 0;
                for (long b = 0; b < blocks; b++) sum += partial[s * blocks + b];
                loss[s] = T.CreateTruncating(sum / inner / Math.Log(2.0));
            }
        }
        finally
        {
            if (partial != null) NativeMemory.Free(partial);
        }
    }

    /// <summary>
    /// diffusion_utils.normal_kl in nats, term by term in the reference's order; <paramref name="dLogVar2"/> is its
    /// derivative in logVar2 (the model's log variance).
    /// </summary>
    private static T VlbNormalKl<T>(T mean1, T logVar1, T mean2, T logVar2, out T dLogVar2) where T : IFloatingPointIeee754<T>
    {
        T half = T.CreateTruncating(0.5);
        T ratio = T.Exp(logVar1 - logVar2), d = mean1 - mean2, scaled = d * d * T.Exp(-logVar2);
        dLogVar2 = half * (T.One - ratio - scaled);
        return half * (-T.One + logVar2 - logVar1 + ratio + scaled);
    }

    /// <summary>
    /// -diffusion_utils.discretized_gaussian_log_likelihood(x, means = mean, log_scales = logVar / 2) in nats, and its
    /// derivative in logVar. Where a probability is clamped at 1e-12 the gradient is 0, as torch's clamp gives.
    /// </summary>
    private static T VlbDecoderNll<T>(T x, T mean, T logVar, out T dLogVar) where T : IFloatingPointIeee754<T>
    {
        T half = T.CreateTruncating(0.5), bin = T.CreateTruncating(1.0 / 255.0), floor = T.CreateTruncating(1e-12);
        T centered = x - mean;
        T invStd = T.Exp(-(half * logVar));
        T plusIn = invStd * (centered + bin), minIn = invStd * (centered - bin);
        T cdfPlus = ApproxNormalCdf(plusIn, out T pdfPlus), cdfMin = ApproxNormalCdf(minIn, out T pdfMin);
        // d in / d logVar = -in / 2 (in = e^(-logVar/2) (x - mean +- 1/255)).
        T dPlus = pdfPlus * -half * plusIn, dMin = pdfMin * -half * minIn;
        T logProb, dLogProb;
        if (x < T.CreateTruncating(-0.999))
        {
            logProb = T.Log(T.Max(cdfPlus, floor));
            dLogProb = cdfPlus >= floor ? dPlus / cdfPlus : T.Zero;
        }
        else if (x > T.CreateTruncating(0.999))
        {
            T upper = T.One - cdfMin;
            logProb = T.Log(T.Max(upper, floor));
            dLogProb = upper >= floor ? -dMin / upper : T.Zero;
        }
        else
        {
            T delta = cdfPlus - cdfMin;
            logProb = T.Log(T.Max(delta, floor));
            dLogProb = delta >= floor ? (dPlus - dMin) / delta : T.Zero;
        }
        dLogVar = -dLogProb;
        return -logProb;
    }

    /// <summary>diffusion_utils.approx_standard_normal_cdf: 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), and its derivative.</summary>
    private static T ApproxNormalCdf<T>(T x, out T derivative) where T : IFloatingPointIeee754<T>
    {
        T k = T.CreateTruncating(Math.Sqrt(2.0 / Math.PI)), c = T.CreateTruncating(0.044715), half = T.CreateTruncating(0.5);
        T tanh = T.Tanh(k * (x + c * (x * x * x)));
        derivative = half * (T.One - tanh * tanh) * k * (T.One + T.CreateTruncating(3) * c * x * x);
        return half * (T.One + tanh);
    }
}
