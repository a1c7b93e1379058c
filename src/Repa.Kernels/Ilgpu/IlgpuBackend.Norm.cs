using ILGPU;

namespace Repa.Kernels.Ilgpu;

/// <summary>
/// LayerNorm fused with its affine and the adaLN modulation (one thread per row: two-pass statistics, then one write
/// of the modulated output), its backward split into a row pass (dx) and a column pass (the parameter and modulation
/// gradients, one thread per column or group column summing its rows in order: deterministic, no atomics), and the
/// adaLN gated residual.
/// </summary>
public sealed partial class IlgpuBackend
{
    public void LayerNormForward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? shift, DeviceBuffer? scale,
        DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd, int rows, int dim, int rowsPerGroup, double eps)
    {
        OpChecks.NormSizes("ilgpu", "layer_norm", rows, dim, rowsPerGroup, grouped: shift != null || scale != null);
        if (rows == 0) return;
        var shape = new NormShape(rows, dim, Math.Max(rowsPerGroup, 1), (float)eps, Flags(weight, bias, shift, scale));
        Run(Stride(rows), IlgpuKernels.LayerNormForward, F(x), FOrEmpty(weight), FOrEmpty(bias), FOrEmpty(shift), FOrEmpty(scale),
            F(y), F(mean), new NormStats(F(rstd), shape));
    }

    public void LayerNormBackward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? scale,
        DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer dy,
        DeviceBuffer? dx, DeviceBuffer? dweight, DeviceBuffer? dbias, DeviceBuffer? dshift, DeviceBuffer? dscale,
        int rows, int dim, int rowsPerGroup)
    {
        OpChecks.NormSizes("ilgpu", "layer_norm backward", rows, dim, rowsPerGroup, grouped: scale != null || dshift != null || dscale != null);
        if (rows == 0) return;
        var shape = new NormShape(rows, dim, Math.Max(rowsPerGroup, 1), 0f, Flags(weight, bias, null, scale));
        var inputs = new NormInputs(F(x), FOrEmpty(weight), FOrEmpty(bias), FOrEmpty(scale), F(mean), F(rstd), F(dy));
        if (dx != null) Run(Stride(rows), IlgpuKernels.LayerNormBackwardRows, inputs, F(dx), shape);
        if (dweight != null || dbias != null)
            Run(Stride(dim), IlgpuKernels.LayerNormBackwardParameters, inputs, FOrEmpty(dweight), FOrEmpty(dbias), shape);
        if (dshift != null || dscale != null)
        {
            long columns = (long)(rows / shape.RowsPerGroup) * dim;
            Run(Stride(columns), IlgpuKernels.LayerNormBackwardModulation, inputs, FOrEmpty(dshift), FOrEmpty(dscale), shape);
        }
    }

    public void GatedResidualForward(DeviceBuffer x, DeviceBuffer y, DeviceBuffer gate, DeviceBuffer output, int rows, int dim, int rowsPerGroup)
    {
        OpChecks.NormSizes("ilgpu", "gated_residual", rows, dim, rowsPerGroup, grouped: true);
        long n = (long)rows * dim;
        if (n == 0) return;
        Run(Stride(n), IlgpuKernels.GatedResidualForward, F(x), F(y), F(gate), F(output), new NormShape(rows, dim, rowsPerGroup, 0f, 0));
    }

    public void GatedResidualBackward(DeviceBuffer y, DeviceBuffer gate, DeviceBuffer dout, DeviceBuffer? dx, DeviceBuffer? dy, DeviceBuffer? dgate,
        int rows, int dim, int rowsPerGroup)
    {
        OpChecks.NormSizes("ilgpu", "gated_residual backward", rows, dim, rowsPerGroup, grouped: true);
        long n = (long)rows * dim;
        if (n == 0) return;
        var shape = new NormShape(rows, dim, rowsPerGroup, 0f, 0);
        if (dx != null || dy != null)
            Run(Stride(n), IlgpuKernels.GatedResidualBackwardInputs, F(gate), F(dout), FOrEmpty(dx), FOrEmpty(dy), shape);
        if (dgate != null)
            Run(Stride((long)(rows / rowsPerGroup) * dim), IlgpuKernels.GatedResidualBackwardGate, F(y), F(dout), F(dgate), shape);
    }

    private static int Flags(DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? shift, DeviceBuffer? scale) =>
        (weight != null ? NormShape.HasWeight : 0) | (bias != null ? NormShape.HasBias : 0) |
        (shift != null ? NormShape.HasShift : 0) | (scale != null ? NormShape.HasScale : 0);
}

internal readonly record struct NormShape(int Rows, int Dim, int RowsPerGroup, float Eps, int Flags)
{
    public const int HasWeight = 1, HasBias = 2, HasShift = 4, HasScale = 8;

    public bool Weight => (Flags & HasWeight) != 0;
    public bool Bias => (Flags & HasBias) != 0;
    public bool Shift => (Flags & HasShift) != 0;
    public bool Scale => (Flags & HasScale) != 0;
}

internal readonly record struct NormStats(ArrayView<float> Rstd, NormShape Shape);

internal readonly record struct NormInputs(ArrayView<float> X, ArrayView<float> Weight, ArrayView<float> Bias, ArrayView<float> Scale,
    ArrayView<float> Mean, ArrayView<float> Rstd, ArrayView<float> Dy);

internal static partial class IlgpuKernels
{
    public static void LayerNormForward(ArrayView<float> x, ArrayView<float> w, ArrayView<float> b, ArrayView<float> shift,
        ArrayView<float> scale, ArrayView<float> y, ArrayView<float> mean, NormStats stats)
    {
        var p = stats.Shape;
        float invDim = 1f / p.Dim;
        for (long r = First; r < p.Rows; r += Step)
        {
            long row = r * p.Dim, g = r / p.RowsPerGroup * p.Dim;
            float sum = 0f;
            for (int j = 0; j < p.Dim; j++) sum += x[row + j];
            float mu = sum * invDim;
            // Two-pass variance: no cancellation when |mean| >> std.
            float sq = 0f;
            for (int j = 0; j < p.Dim; j++)
            {
                float d = x[row + j] - mu;
                sq += d * d;
            }
            float rs = 1f / MathF.Sqrt(sq * invDim + p.Eps);
            mean[r] = mu;
            stats.Rstd[r] = rs;
            for (int j = 0; j < p.Dim; j++)
            {
                // The modulation folds into the affine: A = w (1 + scale), B = b (1 + scale) + shift; y = xhat A + B.
                float s1 = p.Scale ? 1f + scale[g + j] : 1f;
                float coefA = (p.Weight ? w[j] : 1f) * s1;
                float coefB = (p.Bias ? b[j] * s1 : 0f) + (p.Shift ? shift[g + j] : 0f);
                y[row + j] = (x[row + j] - mu) * rs * coefA + coefB;
            }
        }
    }

    /// <summary>dx += rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) with dxhat = dy (1 + scale[g]) w.</summary>
    public static void LayerNormBackwardRows(NormInputs v, ArrayView<float> dx, NormShape p)
    {
        float invDim = 1f / p.Dim;
        for (long r = First; r < p.Rows; r += Step)
        {
            long row = r * p.Dim, g = r / p.RowsPerGroup * p.Dim;
            float mu = v.Mean[r], rs = v.Rstd[r], m1 = 0f, m2 = 0f;
            for (int j = 0; j < p.Dim; j++)
            {
                float xhat = (v.X[row + j] - mu) * rs;
                float dxhat = DxHat(v, p, row, g, j);
                m1 += dxhat;
                m2 += dxhat * xhat;
            }
            m1 *= invDim;
            m2 *= invDim;
            for (int j = 0; j < p.Dim; j++)
            {
                float xhat = (v.X[row + j] - mu) * rs;
                dx[row + j] += (DxHat(v, p, row, g, j) - m1 - xhat * m2) * rs;
            }
        }
    }

    private static float DxHat(NormInputs v, NormShape p, long row, long g, int j)
    {
        float dz = p.Scale ? v.Dy[row + j] * (1f + v.Scale[g + j]) : v.Dy[row + j];
        return p.Weight ? dz * v.Weight[j] : dz;
    }

    /// <summary>dweight[j] += sum_r dz xhat, dbias[j] += sum_r dz (dz = dy (1 + scale[g])), rows in order.</summary>
    public static void LayerNormBackwardParameters(NormInputs v, ArrayView<float> dw, ArrayView<float> db, NormShape p)
    {
        for (long j = First; j < p.Dim; j += Step)
        {
            float sw = 0f, sb = 0f;
            for (long r = 0; r < p.Rows; r++)
            {
                long at = r * p.Dim + j;
                float dz = p.Scale ? v.Dy[at] * (1f + v.Scale[r / p.RowsPerGroup * p.Dim + j]) : v.Dy[at];
                sw += dz * ((v.X[at] - v.Mean[r]) * v.Rstd[r]);
                sb += dz;
            }
            if (dw.Length > 0) dw[j] += sw;
            if (db.Length > 0) db[j] += sb;
        }
    }

    /// <summary>dshift[g, j] += sum of dy over the group's rows; dscale[g, j] += sum of dy (xhat w + b).</summary>
    public static void LayerNormBackwardModulation(NormInputs v, ArrayView<float> dshift, ArrayView<float> dscale, NormShape p)
    {
        long columns = (long)(p.Rows / p.RowsPerGroup) * p.Dim;
        for (long c = First; c < columns; c += Step)
        {
            long g = c / p.Dim;
            int j = (int)(c % p.Dim);
            float sShift = 0f, sScale = 0f;
            for (long r = g * p.RowsPerGroup; r < (g + 1) * p.RowsPerGroup; r++)
            {
                long at = r * p.Dim + j;
                float d = v.Dy[at];
                float z = (v.X[at] - v.Mean[r]) * v.Rstd[r];
                if (p.Weight) z *= v.Weight[j];
                if (p.Bias) z += v.Bias[j];
                sShift += d;
                sScale += d * z;
            }
            if (dshift.Length > 0) dshift[c] += sShift;
            if (dscale.Length > 0) dscale[c] += sScale;
        }
    }

    public static void GatedResidualForward(ArrayView<float> x, ArrayView<float> y, ArrayView<float> gate, ArrayView<float> output, NormShape p)
    {
        long n = (long)p.Rows * p.Dim;
        for (long i = First; i < n; i += Step)
        {
            long r = i / p.Dim, j = i % p.Dim;
            output[i] = y[i] * gate[r / p.RowsPerGroup * p.Dim + j] + x[i];
        }
    }

    /// <summary>dx += dout then dy += gate dout, in that order in one thread (dx may alias dy).</summary>
    public static void GatedResidualBackwardInputs(ArrayView<float> gate, ArrayView<float> dout, ArrayView<float> dx, ArrayView<float> dy, NormShape p)
    {
        long n = (long)p.Rows * p.Dim;
        for (long i = First; i < n; i += Step)
        {
            long r = i / p.Dim, j = i % p.Dim;
            float d = dout[i];
            if (dx.Length > 0) dx[i] += d;
            if (dy.Length > 0) dy[i] += d * gate[r / p.RowsPerGroup * p.Dim + j];
        }
    }

    public static void GatedResidualBackwardGate(ArrayView<float> y, ArrayView<float> dout, ArrayView<float> dgate, NormShape p)
    {
        long columns = (long)(p.Rows / p.RowsPerGroup) * p.Dim;
        for (long c = First; c < columns; c += Step)
        {
            long g = c / p.Dim, j = c % p.Dim;
            float s = 0f;
            for (long r = g * p.RowsPerGroup; r < (g + 1) * p.RowsPerGroup; r++) s += y[r * p.Dim + j] * dout[r * p.Dim + j];
            dgate[c] += s;
        }
    }
}
