using NUnit.Framework;
using Repa.Kernels;
using Repa.Kernels.Cpu;

namespace Repa.Tests.Cuda;

/// <summary>
/// The kernel families of kernels/norm.cu, loss.cu, embed.cu and optim.cu run on the emulated device (through
/// <see cref="KernelHarness"/>) against the CPU backend on the same inputs, forward and backward, on awkward shapes:
/// widths 1, 7, 33, 192 and 4 * 192 + 3, row counts that do not fill the launch, grids smaller than the work (so every
/// grid-stride loop turns), gradients that start non-zero (backward kernels accumulate). The _bf16 variants get
/// bf16-representable inputs, so the CPU computes in fp32 on exactly what the device reads; their bf16 outputs are
/// allowed one rounding (2^-8 of the value) on top of fp32 noise. AdamW, the EMA and the embedding's scatter-add are
/// bitwise the CPU's.
/// </summary>
[TestFixture, Category("EmulatedCuda"), NonParallelizable]
public sealed class KernelFamilyTests
{
    /// <summary>One bf16 rounding (round to nearest even, 8 significant bits): at most 2^-8 of the value.</summary>
    const double Bf16Rounding = 1.0 / 256;

    /// <summary>fp32 results of a different summation order or another libm: relative to the largest expected value.</summary>
    const double Fp32Noise = 2e-5;

    static readonly int[] Widths = [1, 7, 33, 192, 4 * 192 + 3];

    KernelHarness gpu = null!;
    readonly CpuBackend cpu = new(threads: 2);
    readonly List<DeviceBuffer> cpuBuffers = [];

    [SetUp]
    public void OpenDevice() => gpu = KernelHarness.Open();

    [TearDown]
    public void FreeBuffers()
    {
        gpu?.FreeAll();
        foreach (var b in cpuBuffers) b.Dispose();
        cpuBuffers.Clear();
    }

    // ---- norm.cu -------------------------------------------------------------------------------------------------

    /// <summary>A LayerNorm shape: rows of width Dim, groups of RowsPerGroup rows sharing shift/scale.</summary>
    public sealed record NormCase(int Dim, int Rows, int RowsPerGroup, bool Weight, bool Bias, bool Shift, bool Scale)
    {
        public bool Grouped => Shift || Scale;
        public int Groups => Rows / RowsPerGroup;
        public override string ToString() =>
            $"{Rows}x{Dim}{(Weight ? " w" : "")}{(Bias ? " b" : "")}{(Shift ? " shift" : "")}{(Scale ? " scale" : "")}{(Grouped ? $" /{RowsPerGroup}" : "")}";
    }

    static readonly NormCase[] NormShapes =
    [
        new(1, 9, 1, false, false, false, false),
        new(7, 9, 1, true, true, false, false),
        new(33, 10, 5, true, true, true, true),
        new(192, 6, 3, false, false, true, true), // adaLN: LayerNorm without affine, then modulate
        new(4 * 192 + 3, 4, 2, true, false, false, true),
        new(33, 9, 1, false, true, false, false),
        new(7, 8, 8, false, true, true, false),
        new(33, 20, 10, true, true, true, true), // groups of more rows than the tile has thread rows
        new(7, 19, 1, true, true, false, false), // chunks of 11 and 8 rows
    ];

    static IEnumerable<TestCaseData> NormCases() =>
        from c in NormShapes from bf16 in new[] { false, true }
        select new TestCaseData(c, bf16).SetArgDisplayNames(c.ToString(), bf16 ? "bf16" : "f32");

    [TestCaseSource(nameof(NormCases))]
    public void LayerNormForwardMatchesCpu(NormCase c, bool bf16)
    {
        var (x, w, b, shift, scale) = NormInputs(c, bf16);
        const double eps = 1e-5;
        var y = Cpu(new float[c.Rows * c.Dim]);
        var mean = Cpu(new float[c.Rows]);
        var rstd = Cpu(new float[c.Rows]);
        cpu.LayerNormForward(Cpu(x), CpuOrNull(w), CpuOrNull(b), CpuOrNull(shift), CpuOrNull(scale), y, mean, rstd, c.Rows, c.Dim, c.RowsPerGroup, eps);

        ulong gy = gpu.Alloc(c.Rows * c.Dim * Size(bf16)), gmean = gpu.Alloc(c.Rows * 4), grstd = gpu.Alloc(c.Rows * 4);
        gpu.Launch("norm.cu", Kernel("layer_norm_forward", bf16), (2, 1, 1), (64, 1, 1),
            Dev(x, bf16), DevOrNull(w, false), DevOrNull(b, false), DevOrNull(shift, bf16), DevOrNull(scale, bf16),
            gy, gmean, grstd, (long)c.Rows, c.Dim, c.RowsPerGroup, (float)eps);

        AssertClose("y", Read(gy, c.Rows * c.Dim, bf16), Read(y), bf16 ? Bf16Rounding : 0, Fp32Noise);
        AssertClose("mean", Read(gmean, c.Rows, false), Read(mean), 0, Fp32Noise);
        AssertClose("rstd", Read(grstd, c.Rows, false), Read(rstd), Fp32Noise, 0);
    }

    /// <summary>Which gradients a backward call asks for.</summary>
    public enum Wanted { All, InputOnly, ParametersOnly }

    static IEnumerable<TestCaseData> NormBackwardCases() =>
        NormCases().Select(t => new TestCaseData(t.Arguments[0], t.Arguments[1], Wanted.All).SetArgDisplayNames(
            t.Arguments[0]!.ToString()!, (bool)t.Arguments[1]! ? "bf16" : "f32", "all"))
        .Concat(from c in new[] { NormShapes[2], NormShapes[4] } from wanted in new[] { Wanted.InputOnly, Wanted.ParametersOnly }
                select new TestCaseData(c, false, wanted).SetArgDisplayNames(c.ToString(), "f32", wanted.ToString()));

    [TestCaseSource(nameof(NormBackwardCases))]
    public void LayerNormBackwardAccumulatesAsTheCpu(NormCase c, bool bf16, Wanted wanted)
    {
        var (x, w, b, shift, scale) = NormInputs(c, bf16);
        int n = c.Rows * c.Dim, gn = c.Grouped ? c.Groups * c.Dim : 0;
        var cx = Cpu(x);
        var mean = Cpu(new float[c.Rows]);
        var rstd = Cpu(new float[c.Rows]);
        cpu.LayerNormForward(cx, CpuOrNull(w), CpuOrNull(b), CpuOrNull(shift), CpuOrNull(scale), Cpu(new float[n]), mean, rstd,
            c.Rows, c.Dim, c.RowsPerGroup, 1e-5);

        bool input = wanted != Wanted.ParametersOnly, parameters = wanted != Wanted.InputOnly;
        float[] dy = Values(n, 20, bf16, 1.5);
        float[]? dx = input ? Values(n, 21, bf16) : null;
        float[]? dw = parameters && c.Weight ? Values(c.Dim, 22, false) : null;
        float[]? db = parameters && c.Bias ? Values(c.Dim, 23, false) : null;
        float[]? dshift = parameters && c.Shift ? Values(gn, 24, bf16) : null;
        float[]? dscale = parameters && c.Scale ? Values(gn, 25, bf16) : null;

        var (cdx, cdw, cdb, cdshift, cdscale) = (CpuOrNull(dx), CpuOrNull(dw), CpuOrNull(db), CpuOrNull(dshift), CpuOrNull(dscale));
        cpu.LayerNormBackward(cx, CpuOrNull(w), CpuOrNull(b), CpuOrNull(scale), mean, rstd, Cpu(dy), cdx, cdw, cdb, cdshift, cdscale,
            c.Rows, c.Dim, c.RowsPerGroup);

        ulong gx = Dev(x, bf16), gmean = Dev(Read(mean), false), grstd = Dev(Read(rstd), false), gdy = Dev(dy, bf16);
        object? gw = DevOrNull(w, false), gb = DevOrNull(b, false), gscale = DevOrNull(scale, bf16);
        object? gdx = DevOrNull(dx, bf16), gdw = DevOrNull(dw, false), gdb = DevOrNull(db, false);
        object? gdshift = DevOrNull(dshift, bf16), gdscale = DevOrNull(dscale, bf16);
        if (dx != null)
            gpu.Launch("norm.cu", Kernel("layer_norm_backward_input", bf16), (2, 1, 1), (64, 1, 1),
                gx, gw, gscale, gmean, grstd, gdy, gdx, (long)c.Rows, c.Dim, c.RowsPerGroup);
        if (parameters)
        {
            // Chunks: one per group when grouped; otherwise 4 or 11 rows, so that the last chunk is short.
            int chunk = c.Grouped ? c.RowsPerGroup : c.Rows > 12 ? 11 : 4, chunks = (c.Rows + chunk - 1) / chunk, tiles = (c.Dim + 31) / 32;
            object? partialW = dw != null ? gpu.Alloc(chunks * c.Dim * 4) : null;
            object? partialB = db != null ? gpu.Alloc(chunks * c.Dim * 4) : null;
            gpu.Launch("norm.cu", Kernel("layer_norm_backward_params", bf16), (tiles, 2, 1), (32, 8, 1),
                gx, gw, gb, gscale, gmean, grstd, gdy, partialW, partialB, gdshift, gdscale, (long)c.Rows, c.Dim, c.RowsPerGroup, chunk);
            foreach (var (partial, target) in new[] { (partialW, gdw), (partialB, gdb) })
                if (partial != null)
                    gpu.Launch("elementwise.cu", "sum_columns_f32", (tiles, 1, 1), (32, 8, 1), partial, target, 1L, chunks, c.Dim, 1f, 1f);
        }

        double rounding = bf16 ? Bf16Rounding : 0;
        if (dx != null) AssertClose("dx", Read((ulong)gdx!, n, bf16), Read(cdx!), rounding, Fp32Noise);
        if (dw != null) AssertClose("dweight", Read((ulong)gdw!, c.Dim, false), Read(cdw!), 0, Fp32Noise);
        if (db != null) AssertClose("dbias", Read((ulong)gdb!, c.Dim, false), Read(cdb!), 0, Fp32Noise);
        if (dshift != null) AssertClose("dshift", Read((ulong)gdshift!, gn, bf16), Read(cdshift!), rounding, Fp32Noise);
        if (dscale != null) AssertClose("dscale", Read((ulong)gdscale!, gn, bf16), Read(cdscale!), rounding, Fp32Noise);
    }

    (float[] X, float[]? W, float[]? B, float[]? Shift, float[]? Scale) NormInputs(NormCase c, bool bf16)
    {
        int gn = c.Grouped ? c.Groups * c.Dim : 0;
        return (Values(c.Rows * c.Dim, 10, bf16, 2, 0.75), // an offset mean: the statistics are two-pass
            c.Weight ? Values(c.Dim, 11, false, 0.5, 1) : null,
            c.Bias ? Values(c.Dim, 12, false) : null,
            c.Shift ? Values(gn, 13, bf16) : null,
            c.Scale ? Values(gn, 14, bf16, 0.5) : null);
    }

    [TestCase(7, 6, 3, false)]
    [TestCase(7, 6, 3, true)]
    [TestCase(33, 10, 5, false)]
    [TestCase(33, 10, 5, true)]
    [TestCase(4 * 192 + 3, 4, 1, false)]
    [TestCase(4 * 192 + 3, 4, 1, true)]
    [TestCase(1, 9, 9, false)]
    [TestCase(1, 9, 9, true)]
    [TestCase(33, 22, 11, false)]
    [TestCase(33, 22, 11, true)]
    public void GatedResidualMatchesCpu(int dim, int rows, int rowsPerGroup, bool bf16)
    {
        int n = rows * dim, gn = rows / rowsPerGroup * dim, tiles = (dim + 31) / 32;
        float[] x = Values(n, 30, bf16), y = Values(n, 31, bf16), gate = Values(gn, 32, bf16), dout = Values(n, 33, bf16);
        float[] dx = Values(n, 34, bf16), dy = Values(n, 35, bf16), dgate = Values(gn, 36, bf16);
        double rounding = bf16 ? Bf16Rounding : 0;

        var output = Cpu(new float[n]);
        cpu.GatedResidualForward(Cpu(x), Cpu(y), Cpu(gate), output, rows, dim, rowsPerGroup);
        ulong gx = Dev(x, bf16), gy = Dev(y, bf16), ggate = Dev(gate, bf16), gout = gpu.Alloc(n * Size(bf16));
        gpu.Launch("norm.cu", Kernel("gated_residual_forward", bf16), (3, 1, 1), (64, 1, 1), gx, gy, ggate, gout, (long)rows, dim, rowsPerGroup);
        AssertClose("output", Read(gout, n, bf16), Read(output), rounding, Fp32Noise);
        // In place: output aliases x (the residual stream updated where it lies).
        gpu.Launch("norm.cu", Kernel("gated_residual_forward", bf16), (3, 1, 1), (64, 1, 1), gx, gy, ggate, gx, (long)rows, dim, rowsPerGroup);
        AssertClose("output in place", Read(gx, n, bf16), Read(output), rounding, Fp32Noise);

        var (cdx, cdy, cdgate) = (Cpu(dx), Cpu(dy), Cpu(dgate));
        cpu.GatedResidualBackward(Cpu(y), Cpu(gate), Cpu(dout), cdx, cdy, cdgate, rows, dim, rowsPerGroup);
        ulong gdx = Dev(dx, bf16), gdy = Dev(dy, bf16), gdgate = Dev(dgate, bf16), gdout = Dev(dout, bf16);
        gpu.Launch("norm.cu", Kernel("gated_residual_backward", bf16), (tiles, 2, 1), (32, 8, 1), gy, ggate, gdout, gdx, gdy, gdgate,
            (long)rows, dim, rowsPerGroup);
        AssertClose("dx", Read(gdx, n, bf16), Read(cdx), rounding, Fp32Noise);
        AssertClose("dy", Read(gdy, n, bf16), Read(cdy), rounding, Fp32Noise);
        AssertClose("dgate", Read(gdgate, gn, bf16), Read(cdgate), rounding, Fp32Noise);

        // dx aliasing dy (x and y the same tensor), dgate not requested.
        var shared = Cpu(dx);
        if (!bf16) cpu.GatedResidualBackward(Cpu(y), Cpu(gate), Cpu(dout), shared, shared, null, rows, dim, rowsPerGroup);
        else
        {
            // bf16 stores twice here, after dx += dout and after dy += gate dout (the first sum is one fp32 add on both
            // sides, so its rounding is the same), as two separate updates would.
            cpu.GatedResidualBackward(Cpu(y), Cpu(gate), Cpu(dout), shared, null, null, rows, dim, rowsPerGroup);
            shared = Cpu(RoundBf16(Read(shared)));
            cpu.GatedResidualBackward(Cpu(y), Cpu(gate), Cpu(dout), null, shared, null, rows, dim, rowsPerGroup);
        }
        ulong gshared = Dev(dx, bf16);
        gpu.Launch("norm.cu", Kernel("gated_residual_backward", bf16), (tiles, 2, 1), (32, 8, 1), gy, ggate, gdout, gshared, gshared, null,
            (long)rows, dim, rowsPerGroup);
        AssertClose("dx = dy", Read(gshared, n, bf16), Read(shared), rounding, Fp32Noise);
    }

    // ---- loss.cu -------------------------------------------------------------------------------------------------

    [Test]
    public void MseMatchesCpu([ValueSource(nameof(Widths))] int inner, [Values] bool bf16)
    {
        const int samples = 3;
        int n = samples * inner;
        float[] p = Values(n, 40, bf16), t = Values(n, 41, bf16), dLoss = [0.5f, -1.25f, 2f];
        float[] dp = Values(n, 42, bf16), dt = Values(n, 43, bf16);
        var loss = Cpu(new float[samples]);
        cpu.MseForward(Cpu(p), Cpu(t), loss, samples, inner);
        ulong gp = Dev(p, bf16), gt = Dev(t, bf16), gloss = gpu.Alloc(samples * 4);
        gpu.Launch("loss.cu", Kernel("mse_forward", bf16), (2, 1, 1), (64, 1, 1), gp, gt, gloss, samples, (long)inner);
        AssertClose("loss", Read(gloss, samples, false), Read(loss), 1e-6, 0);

        var (cdp, cdt) = (Cpu(dp), Cpu(dt));
        cpu.MseBackward(Cpu(p), Cpu(t), Cpu(dLoss), cdp, cdt, samples, inner);
        ulong gdp = Dev(dp, bf16), gdt = Dev(dt, bf16), gdLoss = Dev(dLoss, false);
        gpu.Launch("loss.cu", Kernel("mse_backward", bf16), (2, 2, 1), (32, 1, 1), gp, gt, gdLoss, gdp, gdt, samples, (long)inner);
        double rounding = bf16 ? Bf16Rounding : 0;
        AssertClose("dprediction", Read(gdp, n, bf16), Read(cdp), rounding, Fp32Noise);
        AssertClose("dtarget", Read(gdt, n, bf16), Read(cdt), rounding, Fp32Noise);

        // A null gradient is skipped.
        var only = Cpu(dp);
        cpu.MseBackward(Cpu(p), Cpu(t), Cpu(dLoss), only, null, samples, inner);
        ulong gonly = Dev(dp, bf16);
        gpu.Launch("loss.cu", Kernel("mse_backward", bf16), (2, 2, 1), (32, 1, 1), gp, gt, gdLoss, gonly, null, samples, (long)inner);
        AssertClose("dprediction alone", Read(gonly, n, bf16), Read(only), rounding, Fp32Noise);
    }

    [Test]
    public void CosineAlignmentMatchesCpu([ValueSource(nameof(Widths))] int dim, [Values] bool bf16)
    {
        const int samples = 2, tokens = 5;
        const double eps = 1e-6;
        int n = samples * tokens * dim;
        float[] z = Values(n, 50, bf16), h = Values(n, 51, bf16, 3), dLoss = [1.5f, -0.75f];
        for (int j = 0; j < dim; j++) z[(tokens + 1) * dim + j] *= 1e-8f; // |z| < eps: the norm is clamped
        if (bf16) z = RoundBf16(z);
        Array.Clear(h, 3 * dim, dim); // a zero row
        float[] dz = Values(n, 52, bf16), dh = Values(n, 53, bf16);

        var loss = Cpu(new float[samples]);
        cpu.CosineAlignmentForward(Cpu(z), Cpu(h), loss, samples, tokens, dim, eps);
        ulong gz = Dev(z, bf16), gh = Dev(h, bf16), gloss = gpu.Alloc(samples * 4);
        gpu.Launch("loss.cu", Kernel("cosine_alignment_forward", bf16), (1, 1, 1), (64, 1, 1), gz, gh, gloss, samples, tokens, dim, (float)eps);
        AssertClose("loss", Read(gloss, samples, false), Read(loss), 0, Fp32Noise);

        var (cdz, cdh) = (Cpu(dz), Cpu(dh));
        cpu.CosineAlignmentBackward(Cpu(z), Cpu(h), Cpu(dLoss), cdz, cdh, samples, tokens, dim, eps);
        ulong gdz = Dev(dz, bf16), gdh = Dev(dh, bf16);
        gpu.Launch("loss.cu", Kernel("cosine_alignment_backward", bf16), (2, 1, 1), (64, 1, 1), gz, gh, Dev(dLoss, false), gdz, gdh,
            samples, tokens, dim, (float)eps);
        double rounding = bf16 ? Bf16Rounding : 0;
        AssertClose("dz", Read(gdz, n, bf16), Read(cdz), rounding, Fp32Noise);
        AssertClose("dh", Read(gdh, n, bf16), Read(cdh), rounding, Fp32Noise);
    }

    [Test]
    public void RowL2NormalizeMatchesCpu([ValueSource(nameof(Widths))] int dim, [Values] bool bf16)
    {
        const int rows = 7;
        const double eps = 1e-6;
        int n = rows * dim;
        float[] x = Values(n, 60, bf16, 2), dy = Values(n, 61, bf16), dx = Values(n, 62, bf16);
        for (int j = 0; j < dim; j++) x[2 * dim + j] *= 1e-8f; // |x| < eps: the norm is clamped
        if (bf16) x = RoundBf16(x);
        Array.Clear(x, 4 * dim, dim);
        var y = Cpu(new float[n]);
        cpu.RowL2NormalizeForward(Cpu(x), y, rows, dim, eps);
        ulong gx = Dev(x, bf16), gy = gpu.Alloc(n * Size(bf16));
        gpu.Launch("loss.cu", Kernel("row_l2_normalize_forward", bf16), (2, 1, 1), (64, 1, 1), gx, gy, (long)rows, dim, (float)eps);
        double rounding = bf16 ? Bf16Rounding : 0;
        AssertClose("y", Read(gy, n, bf16), Read(y), rounding, Fp32Noise);

        var cdx = Cpu(dx);
        cpu.RowL2NormalizeBackward(Cpu(x), Cpu(dy), cdx, rows, dim, eps);
        ulong gdx = Dev(dx, bf16);
        gpu.Launch("loss.cu", Kernel("row_l2_normalize_backward", bf16), (2, 1, 1), (64, 1, 1), gx, Dev(dy, bf16), gdx, (long)rows, dim, (float)eps);
        AssertClose("dx", Read(gdx, n, bf16), Read(cdx), rounding, Fp32Noise);
    }

    [Test]
    public void DiagonalCrossEntropyMatchesCpu([Values(1, 7, 33)] int n, [Values(2.5, -1.5)] double scale, [Values] bool bf16)
    {
        const int samples = 2;
        int count = samples * n * n;
        float[] logits = Values(count, 70, bf16, 2), dLoss = [0.8f, -1.1f], dLogits = Values(count, 71, bf16);
        var (lse, loss) = (Cpu(new float[samples * n]), Cpu(new float[samples]));
        cpu.DiagonalCrossEntropyForward(Cpu(logits), lse, loss, samples, n, scale);
        ulong glogits = Dev(logits, bf16), glse = gpu.Alloc(samples * n * 4), gloss = gpu.Alloc(samples * 4);
        gpu.Launch("loss.cu", Kernel("diagonal_cross_entropy_forward", bf16), (1, 1, 1), (64, 1, 1), glogits, glse, gloss, samples, n, (float)scale);
        AssertClose("lse", Read(glse, samples * n, false), Read(lse), 0, Fp32Noise);
        AssertClose("loss", Read(gloss, samples, false), Read(loss), 0, Fp32Noise);

        var cd = Cpu(dLogits);
        cpu.DiagonalCrossEntropyBackward(Cpu(logits), lse, Cpu(dLoss), cd, samples, n, scale);
        ulong gd = Dev(dLogits, bf16);
        gpu.Launch("loss.cu", Kernel("diagonal_cross_entropy_backward", bf16), (5, 1, 1), (32, 1, 1), glogits, Dev(Read(lse), false),
            Dev(dLoss, false), gd, samples, n, (float)scale);
        AssertClose("dlogits", Read(gd, count, bf16), Read(cd), bf16 ? Bf16Rounding : 0, Fp32Noise);
    }

    [Test]
    public void DiffusionVlbMatchesCpu([Values(7, 33, 4 * 192 + 3)] int inner, [Values] bool bf16)
    {
        const int samples = 4;
        int n = samples * inner;
        var random = new Random(80);
        // x0 on the 8-bit grid of [-1, 1], both ends included (the decoder's open-ended bins).
        float[] x0 = Enumerable.Range(0, n).Select(i => i % 5 == 0 ? (i % 2 == 0 ? -1f : 1f) : random.Next(256) / 127.5f - 1).ToArray();
        float[] mean = x0.Select(v => v + (float)(random.NextDouble() - 0.5) * 0.05f).ToArray();
        float[] trueMean = mean.Select(v => v + (float)(random.NextDouble() - 0.5) * 0.02f).ToArray();
        float[] v = Values(n, 81, bf16);
        if (bf16) (x0, mean, trueMean) = (RoundBf16(x0), RoundBf16(mean), RoundBf16(trueMean));
        // (min_log, max_log, true_log_var, decoder): KL terms at two timesteps, decoder NLL (t = 0) at two.
        float[] stepParams = [-9.6f, -4.7f, -9.4f, 0f, -11.2f, -7.1f, -11.2f, 1f, -3.1f, -2.3f, -3.0f, 0f, -10.4f, -6.9f, -10.4f, 1f];
        float[] dLoss = [1f, -0.5f, 2f, 0.25f], dv = Values(n, 82, bf16);

        var loss = Cpu(new float[samples]);
        cpu.DiffusionVlbForward(Cpu(v), Cpu(mean), Cpu(trueMean), Cpu(x0), Cpu(stepParams), loss, samples, inner);
        ulong gv = Dev(v, bf16), gmean = Dev(mean, bf16), gtrue = Dev(trueMean, bf16), gx0 = Dev(x0, bf16), gparams = Dev(stepParams, false);
        ulong gloss = gpu.Alloc(samples * 4);
        gpu.Launch("loss.cu", Kernel("diffusion_vlb_forward", bf16), (2, 1, 1), (64, 1, 1), gv, gmean, gtrue, gx0, gparams, gloss, samples, (long)inner);
        AssertClose("loss", Read(gloss, samples, false), Read(loss), 1e-5, 0);

        var cdv = Cpu(dv);
        cpu.DiffusionVlbBackward(Cpu(v), Cpu(mean), Cpu(trueMean), Cpu(x0), Cpu(stepParams), Cpu(dLoss), cdv, samples, inner);
        ulong gdv = Dev(dv, bf16);
        gpu.Launch("loss.cu", Kernel("diffusion_vlb_backward", bf16), (2, 3, 1), (32, 1, 1), gv, gmean, gtrue, gx0, gparams, Dev(dLoss, false),
            gdv, samples, (long)inner);
        AssertClose("dvar", Read(gdv, n, bf16), Read(cdv), bf16 ? Bf16Rounding : 0, Fp32Noise);
    }

    // ---- embed.cu ------------------------------------------------------------------------------------------------

    static readonly int[] Ids = [3, 0, 10, 3, 7, 7, 3, 1, 10];
    const int Vocab = 11;

    [Test]
    public void EmbeddingIsBitwiseTheCpus([ValueSource(nameof(Widths))] int dim, [Values] bool bf16)
    {
        int count = Ids.Length, n = count * dim;
        float[] table = Values(Vocab * dim, 90, false), dy = Values(n, 91, bf16), dTable = Values(Vocab * dim, 92, false);
        var y = Cpu(new float[n]);
        var ids = cpu.Allocate(DType.I32, count);
        cpuBuffers.Add(ids);
        cpu.Upload<int>(Ids, ids);
        cpu.EmbeddingForward(Cpu(table), ids, y, count, Vocab, dim);
        ulong gids = gpu.Upload<int>(Ids), gy = gpu.Alloc(n * Size(bf16)), firstBad = gpu.Upload<ulong>([ulong.MaxValue]);
        gpu.Launch("embed.cu", Kernel("embedding_forward", bf16), (4, 1, 1), (32, 1, 1), gpu.Upload<float>(table), gids, gy, (long)count, Vocab, dim, firstBad);
        float[] expected = Read(y);
        Assert.That(Read(gy, n, bf16), Is.EqualTo(bf16 ? RoundBf16(expected) : expected), "the rows, copied (bf16: rounded once)");
        Assert.That(gpu.Download<ulong>(firstBad, 1)[0], Is.EqualTo(ulong.MaxValue), "no id out of range");

        var cdTable = Cpu(dTable);
        cpu.EmbeddingBackward(ids, Cpu(dy), cdTable, count, Vocab, dim);
        ulong gdTable = Dev(dTable, false);
        gpu.Launch("embed.cu", Kernel("embedding_backward", bf16), (3, (dim + 31) / 32, 1), (32, 1, 1), gids, Dev(dy, bf16), gdTable, (long)count, Vocab, dim);
        Assert.That(Read(gdTable, Vocab * dim, false), Is.EqualTo(Read(cdTable)), "repeated ids add up in position order, as on the CPU");
    }

    [Test]
    public void EmbeddingReportsTheFirstIdOutOfRange()
    {
        const int dim = 5;
        int[] ids = [2, 4, 10, -1, 3, 11, 11];
        float[] table = Values(Vocab * dim, 93, false);
        ulong gy = gpu.Upload<float>(Enumerable.Repeat(float.NaN, ids.Length * dim).ToArray()), firstBad = gpu.Upload<ulong>([ulong.MaxValue]);
        gpu.Launch("embed.cu", "embedding_forward_f32", (3, 1, 1), (32, 1, 1), gpu.Upload<float>(table), gpu.Upload<int>(ids), gy, (long)ids.Length, Vocab, dim, firstBad);
        Assert.That(gpu.Download<ulong>(firstBad, 1)[0], Is.EqualTo(3UL), "the first bad position, as the CPU backend names it");
        float[] y = gpu.Download<float>(gy, ids.Length * dim);
        for (int i = 0; i < ids.Length; i++)
            Assert.That(y.AsSpan(i * dim, dim).ToArray(), Is.EqualTo((uint)ids[i] < Vocab ? table.AsSpan(ids[i] * dim, dim).ToArray() : new float[dim]),
                $"row {i}: copied, or zeros for a bad id (never read out of bounds)");

        var cpuIds = cpu.Allocate(DType.I32, ids.Length);
        cpuBuffers.Add(cpuIds);
        cpu.Upload<int>(ids, cpuIds);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => cpu.EmbeddingForward(Cpu(table), cpuIds, Cpu(new float[ids.Length * dim]), ids.Length, Vocab, dim))!;
        Assert.That(e.Message, Does.Contain("id -1 at position 3"), "the CPU names the same position");
    }

    [Test]
    public void TimestepEmbeddingMatchesCpu([Values(1, 2, 7, 33, 256, 4 * 192 + 3)] int dim, [Values] bool bf16)
    {
        float[] t = [0f, 0.5f, 1f, 17.25f, 999f];
        int count = t.Length, n = count * dim;
        const double maxPeriod = 10000;
        float[] dy = Values(n, 100, bf16), dt = [0.25f, -1f, 0.5f, 2f, -0.125f];
        var y = Cpu(new float[n]);
        cpu.TimestepEmbeddingForward(Cpu(t), y, count, dim, maxPeriod);
        ulong gt = Dev(t, false), gy = gpu.Alloc(n * Size(bf16));
        gpu.Launch("embed.cu", Kernel("timestep_embedding_forward", bf16), (2, 1, 1), (32, 1, 1), gt, gy, (long)count, dim, maxPeriod);
        // Arguments up to 999 rad: the libm's range reduction differs (glibc here and on the GPU vs .NET), a few ulp.
        AssertClose("y", Read(gy, n, bf16), Read(y), bf16 ? Bf16Rounding : 0, 1e-6);

        var cdt = Cpu(dt);
        cpu.TimestepEmbeddingBackward(Cpu(t), Cpu(dy), cdt, count, dim, maxPeriod);
        ulong gdt = Dev(dt, false);
        gpu.Launch("embed.cu", Kernel("timestep_embedding_backward", bf16), (1, 1, 1), (64, 1, 1), gt, Dev(dy, bf16), gdt, (long)count, dim, maxPeriod);
        // The sum has up to 385 terms f_k (..) of either sign: noise relative to the sum of their magnitudes.
        int half = dim / 2;
        double magnitude = Enumerable.Range(0, count).Max(r => Enumerable.Range(0, half)
            .Sum(k => Math.Exp(-Math.Log(maxPeriod) * k / half) * (Math.Abs(dy[r * dim + k]) + Math.Abs(dy[r * dim + half + k]))));
        float[] expected = Read(cdt), actual = Read(gdt, count, false);
        for (int r = 0; r < count; r++)
            Assert.That(actual[r], Is.EqualTo(expected[r]).Within(1e-5 * Math.Max(magnitude, 1)), $"dt[{r}]");
    }

    // ---- optim.cu ------------------------------------------------------------------------------------------------

    [TestCase(1)]
    [TestCase(7)]
    [TestCase(33)]
    [TestCase(100_003)]
    public void SumOfSquaresIsDeterministicAndMatchesCpu(int n)
    {
        const int blocks = 3, threads = 128;
        float[] a = Values(n, 110, false, 3), b = Values(n, 111, false);
        ulong ga = Dev(a, false), gb = Dev(b, false), partial = gpu.Alloc(blocks * 8), total = gpu.Alloc(8);
        double Squares(ulong x, int accumulate)
        {
            gpu.Launch("optim.cu", "sum_of_squares_partial_f32", (blocks, 1, 1), (threads, 1, 1), x, (long)n, partial);
            gpu.Launch("optim.cu", "sum_of_squares_finish", (1, 1, 1), (threads, 1, 1), partial, blocks, total, accumulate);
            return gpu.Download<double>(total, 1)[0];
        }
        double first = Squares(ga, 0), second = Squares(ga, 0);
        double expected = cpu.SumOfSquares(Cpu(a), n);
        Assert.That(first, Is.EqualTo(expected).Within(1e-12 * expected), "fp64 sums of exact fp32 squares");
        Assert.That(BitConverter.DoubleToInt64Bits(second), Is.EqualTo(BitConverter.DoubleToInt64Bits(first)), "deterministic");
        double both = Squares(gb, 1); // accumulate: total += |b|^2
        double expectedBoth = expected + cpu.SumOfSquares(Cpu(b), n);
        Assert.That(both, Is.EqualTo(expectedBoth).Within(1e-12 * expectedBoth), "squared norms of several tensors add up on the device");
    }

    [Test]
    public void AdamWIsBitwiseTheCpus([Values(1, 7, 1003)] int n, [Values(1, 7)] int step)
    {
        const double lr = 3e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 0.01, gradScale = 0.37;
        float[] param = Values(n, 120, false), grad = Values(n, 121, false, 5);
        float[] m = Values(n, 122, false, 0.1), v = Values(n, 123, false, 0.01, 0.01); // v >= 0
        var (cp, cm, cv) = (Cpu(param), Cpu(m), Cpu(v));
        cpu.AdamWStep(cp, Cpu(grad), cm, cv, n, lr, beta1, beta2, eps, weightDecay, gradScale, step);

        ulong gp = Dev(param, false), gm = Dev(m, false), gv = Dev(v, false), copy = gpu.Alloc(n * 2);
        // The scalars as the CPU backend forms them: in fp64, each rounded once to fp32.
        gpu.Launch("optim.cu", "adamw_step_f32", (2, 1, 1), (64, 1, 1), gp, Dev(grad, false), gm, gv, (long)n,
            (float)gradScale, (float)(1 - lr * weightDecay), (float)beta1, (float)beta2, (float)(1 - beta1), (float)(1 - beta2),
            (float)Math.Sqrt(1 - Math.Pow(beta2, step)), (float)eps, (float)-(lr / (1 - Math.Pow(beta1, step))), copy);
        float[] expected = Read(cp);
        Assert.That(Read(gp, n, false), Is.EqualTo(expected), "parameters");
        Assert.That(Read(gm, n, false), Is.EqualTo(Read(cm)), "first moments");
        Assert.That(Read(gv, n, false), Is.EqualTo(Read(cv)), "second moments");
        Assert.That(gpu.Download<ushort>(copy, n), Is.EqualTo(expected.Select(HalfPrecision.FloatToBf16).ToArray()), "the bf16 copy for GEMMs");
    }

    [Test]
    public void EmaIsBitwiseTheCpus([Values(1, 7, 1003)] int n)
    {
        const double decay = 0.9999;
        float[] ema = Values(n, 130, false), param = Values(n, 131, false);
        var cema = Cpu(ema);
        cpu.EmaUpdate(cema, Cpu(param), n, decay);
        ulong gema = Dev(ema, false);
        gpu.Launch("optim.cu", "ema_update_f32", (2, 1, 1), (64, 1, 1), gema, Dev(param, false), (long)n, (float)decay, (float)(1 - decay));
        Assert.That(Read(gema, n, false), Is.EqualTo(Read(cema)));
    }

    // ---- helpers -------------------------------------------------------------------------------------------------

    static string Kernel(string stem, bool bf16) => stem + (bf16 ? "_bf16" : "_f32");

    static int Size(bool bf16) => bf16 ? 2 : 4;

    /// <summary>Uniform values in offset + scale [-1, 1), rounded to bf16 when <paramref name="bf16"/> (the inputs a bf16
    /// kernel reads exactly, so that the CPU computes on the same numbers).</summary>
    static float[] Values(int n, int seed, bool bf16, double scale = 1, double offset = 0)
    {
        var random = new Random(seed);
        var values = Enumerable.Range(0, n).Select(_ => (float)(offset + scale * (2 * random.NextDouble() - 1))).ToArray();
        return bf16 ? RoundBf16(values) : values;
    }

    static float[] RoundBf16(float[] values) => values.Select(v => HalfPrecision.Bf16ToFloat(HalfPrecision.FloatToBf16(v))).ToArray();

    ulong Dev(float[] values, bool bf16) =>
        bf16 ? gpu.Upload<ushort>(values.Select(HalfPrecision.FloatToBf16).ToArray()) : gpu.Upload<float>(values);

    object? DevOrNull(float[]? values, bool bf16) => values == null ? null : Dev(values, bf16);

    float[] Read(ulong pointer, int n, bool bf16) =>
        bf16 ? gpu.Download<ushort>(pointer, n).Select(HalfPrecision.Bf16ToFloat).ToArray() : gpu.Download<float>(pointer, n);

    DeviceBuffer Cpu(float[] values)
    {
        var buffer = cpu.Allocate(DType.F32, values.Length);
        cpuBuffers.Add(buffer);
        cpu.Upload<float>(values, buffer);
        return buffer;
    }

    DeviceBuffer? CpuOrNull(float[]? values) => values == null ? null : Cpu(values);

    float[] Read(DeviceBuffer buffer)
    {
        var values = new float[buffer.Length];
        cpu.Download<float>(buffer, values);
        return values;
    }

    /// <summary>|actual - expected| &lt;= relative |expected| + absolute max(1, max |expected|) element by element.</summary>
    static void AssertClose(string what, float[] actual, float[] expected, double relative, double absolute)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), what);
        double scale = Math.Max(1, expected.Length == 0 ? 0 : expected.Max(e => Math.Abs((double)e)));
        for (int i = 0; i < expected.Length; i++)
        {
            double tolerance = relative * Math.Abs(expected[i]) + absolute * scale;
            if (!(Math.Abs((double)actual[i] - expected[i]) <= tolerance))
                Assert.Fail($"{what}[{i}] = {actual[i]:R}, the CPU has {expected[i]:R} (tolerance {tolerance:G3}).");
        }
    }
}
