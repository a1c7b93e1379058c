using ILGPU;

namespace Repa.Kernels.Ilgpu;

/// <summary>
/// REPA's losses. Per-sample sums (MSE, the VLB term) are one group per sample: float64 partials per thread, then a
/// fixed tree in shared memory. Row-wise losses (cosine alignment, L2 normalisation, the diagonal cross-entropy) are
/// one thread per row, with per-row results summed per sample in token order by a second kernel, as the CPU does.
/// </summary>
public sealed partial class IlgpuBackend
{
    public void MseForward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer loss, int samples, long inner)
    {
        if (samples <= 0) return;
        Run(PerGroup(samples), IlgpuKernels.MseForward, F(prediction), F(target), F(loss), new LossShape(samples, inner, 0));
    }

    public void MseBackward(DeviceBuffer prediction, DeviceBuffer target, DeviceBuffer dLoss, DeviceBuffer? dPrediction,
        DeviceBuffer? dTarget, int samples, long inner)
    {
        if ((dPrediction == null && dTarget == null) || samples <= 0 || inner <= 0) return;
        Run(Stride(samples * inner), IlgpuKernels.MseBackward, new LossPair(F(prediction), F(target)), F(dLoss),
            FOrEmpty(dPrediction), FOrEmpty(dTarget), new LossShape(samples, inner, 0));
    }

    public void CosineAlignmentForward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer loss, int samples, int tokens, int dim, double eps)
    {
        long rows = (long)samples * tokens;
        if (samples <= 0) return;
        using var cos = Scratch<double>(rows);
        var shape = new RowShape(samples, tokens, dim, (float)eps, 0f);
        if (rows > 0) Run(Stride(rows), IlgpuKernels.CosineRows, F(z), F(h), cos.View.AsContiguous(), shape);
        Run(Stride(samples), IlgpuKernels.NegativeMeanPerSample, cos.View.AsContiguous(), F(loss), shape);
        accelerator.Synchronize();
    }

    public void CosineAlignmentBackward(DeviceBuffer z, DeviceBuffer h, DeviceBuffer dLoss, DeviceBuffer? dz, DeviceBuffer? dh,
        int samples, int tokens, int dim, double eps)
    {
        long rows = (long)samples * tokens;
        if ((dz == null && dh == null) || rows <= 0) return;
        Run(Stride(rows), IlgpuKernels.CosineBackward, new LossPair(F(z), F(h)), F(dLoss), FOrEmpty(dz), FOrEmpty(dh),
            new RowShape(samples, tokens, dim, (float)eps, 0f));
    }

    public void RowL2NormalizeForward(DeviceBuffer x, DeviceBuffer y, long rows, int dim, double eps)
    {
        if (rows <= 0) return;
        Run(Stride(rows), IlgpuKernels.L2NormalizeForward, F(x), F(y), rows, dim, (float)eps);
    }

    public void RowL2NormalizeBackward(DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long rows, int dim, double eps)
    {
        if (rows <= 0) return;
        Run(Stride(rows), IlgpuKernels.L2NormalizeBackward, F(x), F(dy), F(dx), rows, dim, (float)eps);
    }

    public void DiagonalCrossEntropyForward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer loss, int samples, int n, double scale)
    {
        if (samples <= 0) return;
        var shape = new RowShape(samples, n, n, 0f, (float)scale);
        if (n > 0) Run(Stride((long)samples * n), IlgpuKernels.CrossEntropyRows, F(logits), F(lse), shape);
        Run(Stride(samples), IlgpuKernels.CrossEntropyLoss, F(logits), F(lse), F(loss), shape);
    }

    public void DiagonalCrossEntropyBackward(DeviceBuffer logits, DeviceBuffer lse, DeviceBuffer dLoss, DeviceBuffer dLogits,
        int samples, int n, double scale)
    {
        long count = (long)samples * n * n;
        if (count <= 0) return;
        Run(Stride(count), IlgpuKernels.CrossEntropyBackward, new LossPair(F(logits), F(lse)), F(dLoss), F(dLogits),
            new RowShape(samples, n, n, 0f, (float)scale));
    }

    public void DiffusionVlbForward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer loss, int samples, long inner)
    {
        if (samples <= 0) return;
        var inputs = new VlbInputs(F(varValues), F(mean), F(trueMean), F(x0), F(stepParams));
        Run(PerGroup(samples), IlgpuKernels.VlbForward, inputs, F(loss), new LossShape(samples, inner, 0));
    }

    public void DiffusionVlbBackward(DeviceBuffer varValues, DeviceBuffer mean, DeviceBuffer trueMean, DeviceBuffer x0, DeviceBuffer stepParams,
        DeviceBuffer dLoss, DeviceBuffer dVarValues, int samples, long inner)
    {
        if (samples <= 0 || inner <= 0) return;
        var inputs = new VlbInputs(F(varValues), F(mean), F(trueMean), F(x0), F(stepParams));
        Run(Stride(samples * inner), IlgpuKernels.VlbBackward, inputs, F(dLoss), F(dVarValues), new LossShape(samples, inner, 0));
    }
}

internal readonly record struct LossShape(int Samples, long Inner, int Unused);

internal readonly record struct RowShape(int Samples, int Tokens, int Dim, float Eps, float Scale);

internal readonly record struct LossPair(ArrayView<float> First, ArrayView<float> Second);

internal readonly record struct VlbInputs(ArrayView<float> Var, ArrayView<float> Mean, ArrayView<float> TrueMean, ArrayView<float> X0,
    ArrayView<float> StepParams);

internal static partial class IlgpuKernels
{
    public static void MseForward(ArrayView<float> p, ArrayView<float> t, ArrayView<float> loss, LossShape s)
    {
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        for (int sample = Grid.IdxX; sample < s.Samples; sample += Grid.DimX)
        {
            double acc = 0;
            long start = sample * s.Inner;
            for (long i = Group.IdxX; i < s.Inner; i += Group.DimX)
            {
                float d = p[start + i] - t[start + i];
                acc += d * d;
            }
            double total = GroupSum(acc, shared);
            if (Group.IdxX == 0) loss[sample] = (float)(total / s.Inner);
        }
    }

    public static void MseBackward(LossPair pt, ArrayView<float> dLoss, ArrayView<float> dp, ArrayView<float> dt, LossShape s)
    {
        long n = s.Samples * s.Inner;
        float two = (float)(2.0 / s.Inner);
        for (long i = First; i < n; i += Step)
        {
            float c = two * dLoss[(int)(i / s.Inner)];
            float d = pt.First[i] - pt.Second[i];
            if (dp.Length > 0) dp[i] += d * c;
            if (dt.Length > 0) dt[i] += d * -c;
        }
    }

    private static float RowNorm(ArrayView<float> x, long row, int dim)
    {
        float s = 0f;
        for (int j = 0; j < dim; j++) s += x[row + j] * x[row + j];
        return MathF.Sqrt(s);
    }

    public static void CosineRows(ArrayView<float> z, ArrayView<float> h, ArrayView<double> cos, RowShape s)
    {
        long rows = (long)s.Samples * s.Tokens;
        for (long r = First; r < rows; r += Step)
        {
            long row = r * s.Dim;
            float nz = MathF.Max(RowNorm(z, row, s.Dim), s.Eps), nh = MathF.Max(RowNorm(h, row, s.Dim), s.Eps), dot = 0f;
            for (int j = 0; j < s.Dim; j++) dot += z[row + j] * h[row + j];
            cos[r] = dot / (nz * nh);
        }
    }

    /// <summary>loss[s] = -(1/tokens) sum_t values[s, t], summed in token order in float64.</summary>
    public static void NegativeMeanPerSample(ArrayView<double> values, ArrayView<float> loss, RowShape s)
    {
        for (long sample = First; sample < s.Samples; sample += Step)
        {
            double sum = 0;
            for (int t = 0; t < s.Tokens; t++) sum += values[sample * s.Tokens + t];
            loss[sample] = (float)(-sum / s.Tokens);
        }
    }

    public static void CosineBackward(LossPair zh, ArrayView<float> dLoss, ArrayView<float> dz, ArrayView<float> dh, RowShape s)
    {
        long rows = (long)s.Samples * s.Tokens;
        for (long r = First; r < rows; r += Step)
        {
            long row = r * s.Dim;
            float nz = RowNorm(zh.First, row, s.Dim), nh = RowNorm(zh.Second, row, s.Dim);
            float nzc = MathF.Max(nz, s.Eps), nhc = MathF.Max(nh, s.Eps), dot = 0f;
            for (int j = 0; j < s.Dim; j++) dot += zh.First[row + j] * zh.Second[row + j];
            float c = dot / (nzc * nhc);
            float g = -dLoss[(int)(r / s.Tokens)] * (1f / s.Tokens);
            // Formed from the normalised rows (as autograd through F.normalize), where a clamped norm drops the c term.
            float cz = nz > s.Eps ? c : 0f, ch = nh > s.Eps ? c : 0f;
            for (int j = 0; j < s.Dim; j++)
            {
                float zhat = zh.First[row + j] / nzc, hhat = zh.Second[row + j] / nhc;
                if (dz.Length > 0) dz[row + j] += (zhat * -cz + hhat) * (g / nzc);
                if (dh.Length > 0) dh[row + j] += (hhat * -ch + zhat) * (g / nhc);
            }
        }
    }

    public static void L2NormalizeForward(ArrayView<float> x, ArrayView<float> y, long rows, int dim, float eps)
    {
        for (long r = First; r < rows; r += Step)
        {
            long row = r * dim;
            float n = MathF.Max(RowNorm(x, row, dim), eps);
            for (int j = 0; j < dim; j++) y[row + j] = x[row + j] / n;
        }
    }

    public static void L2NormalizeBackward(ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dx, long rows, int dim, float eps)
    {
        for (long r = First; r < rows; r += Step)
        {
            long row = r * dim;
            float n = RowNorm(x, row, dim), nc = MathF.Max(n, eps), yg = 0f;
            if (n > eps)
                for (int j = 0; j < dim; j++) yg += x[row + j] / nc * dy[row + j];
            for (int j = 0; j < dim; j++)
            {
                float y = x[row + j] / nc;
                dx[row + j] += (y * -yg + dy[row + j]) * (1f / nc);
            }
        }
    }

    /// <summary>lse[r] = logsumexp_j(scale S[r, j]) with the scaled max first (a negative scale flips it).</summary>
    public static void CrossEntropyRows(ArrayView<float> logits, ArrayView<float> lse, RowShape s)
    {
        long rows = (long)s.Samples * s.Tokens;
        for (long r = First; r < rows; r += Step)
        {
            long row = r * s.Dim;
            float m = float.NegativeInfinity, sum = 0f;
            for (int j = 0; j < s.Dim; j++) m = MathF.Max(m, logits[row + j] * s.Scale);
            for (int j = 0; j < s.Dim; j++) sum += MathF.Exp(logits[row + j] * s.Scale - m);
            lse[r] = m + MathF.Log(sum);
        }
    }

    public static void CrossEntropyLoss(ArrayView<float> logits, ArrayView<float> lse, ArrayView<float> loss, RowShape s)
    {
        for (long sample = First; sample < s.Samples; sample += Step)
        {
            double acc = 0;
            for (int i = 0; i < s.Tokens; i++)
            {
                long r = sample * s.Tokens + i;
                acc += lse[r] - s.Scale * logits[r * s.Tokens + i];
            }
            loss[sample] = (float)(acc / s.Tokens);
        }
    }

    public static void CrossEntropyBackward(LossPair logitsLse, ArrayView<float> dLoss, ArrayView<float> dLogits, RowShape s)
    {
        long n = s.Tokens, count = s.Samples * n * n;
        float invN = 1f / n;
        for (long e = First; e < count; e += Step)
        {
            long r = e / n, j = e % n;
            float coeff = dLoss[(int)(r / n)] * s.Scale * invN;
            float g = MathF.Exp(logitsLse.First[e] * s.Scale - logitsLse.Second[r]) * coeff + dLogits[e];
            dLogits[e] = j == r % n ? g - coeff : g;
        }
    }

    // ---- DiT's variational-bound term ----

    public static void VlbForward(VlbInputs v, ArrayView<float> loss, LossShape s)
    {
        var shared = SharedMemory.Allocate<double>(MaxGroup);
        for (int sample = Grid.IdxX; sample < s.Samples; sample += Grid.DimX)
        {
            double acc = 0;
            for (long i = Group.IdxX; i < s.Inner; i += Group.DimX) acc += VlbTerm(v, sample, sample * s.Inner + i, out _);
            double total = GroupSum(acc, shared);
            if (Group.IdxX == 0) loss[sample] = (float)(total / s.Inner / 0.6931471805599453);
        }
    }

    public static void VlbBackward(VlbInputs v, ArrayView<float> dLoss, ArrayView<float> dVar, LossShape s)
    {
        long n = s.Samples * s.Inner;
        for (long i = First; i < n; i += Step)
        {
            int sample = (int)(i / s.Inner);
            float minLog = v.StepParams[4 * sample], maxLog = v.StepParams[4 * sample + 1];
            float gradScale = dLoss[sample] * (maxLog - minLog) / (float)(2.0 * s.Inner * 0.6931471805599453);
            VlbTerm(v, sample, i, out float dTerm);
            dVar[i] += gradScale * dTerm;
        }
    }

    /// <summary>One element's KL (or decoder NLL at t = 0) in nats and its derivative in the raw variance value's log_var.</summary>
    private static float VlbTerm(VlbInputs v, int sample, long i, out float dLogVar)
    {
        float minLog = v.StepParams[4 * sample], maxLog = v.StepParams[4 * sample + 1], trueLogVar = v.StepParams[4 * sample + 2];
        bool decoder = v.StepParams[4 * sample + 3] != 0f;
        float frac = (v.Var[i] + 1f) / 2f;
        float logVar = frac * maxLog + (1f - frac) * minLog;
        if (!decoder)
        {
            float ratio = MathF.Exp(trueLogVar - logVar), d = v.TrueMean[i] - v.Mean[i], scaled = d * d * MathF.Exp(-logVar);
            dLogVar = 0.5f * (1f - ratio - scaled);
            return 0.5f * (-1f + logVar - trueLogVar + ratio + scaled);
        }
        float x = v.X0[i], floor = 1e-12f, bin = 1f / 255f;
        float centered = x - v.Mean[i];
        float invStd = MathF.Exp(-(0.5f * logVar));
        float plusIn = invStd * (centered + bin), minIn = invStd * (centered - bin);
        float cdfPlus = ApproxNormalCdf(plusIn, out float pdfPlus), cdfMin = ApproxNormalCdf(minIn, out float pdfMin);
        float dPlus = pdfPlus * -0.5f * plusIn, dMin = pdfMin * -0.5f * minIn;
        float logProb, dLogProb;
        if (x < -0.999f)
        {
            logProb = MathF.Log(MathF.Max(cdfPlus, floor));
            dLogProb = cdfPlus >= floor ? dPlus / cdfPlus : 0f;
        }
        else if (x > 0.999f)
        {
            float upper = 1f - cdfMin;
            logProb = MathF.Log(MathF.Max(upper, floor));
            dLogProb = upper >= floor ? -dMin / upper : 0f;
        }
        else
        {
            float delta = cdfPlus - cdfMin;
            logProb = MathF.Log(MathF.Max(delta, floor));
            dLogProb = delta >= floor ? (dPlus - dMin) / delta : 0f;
        }
        dLogVar = -dLogProb;
        return -logProb;
    }

    private static float ApproxNormalCdf(float x, out float derivative)
    {
        float t = Tanh(GeluC * (x + GeluA * (x * x * x)));
        derivative = 0.5f * (1f - t * t) * GeluC * (1f + 3f * GeluA * x * x);
        return 0.5f * (1f + t);
    }
}
