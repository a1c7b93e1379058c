using NUnit.Framework;
using Repa.Kernels;
using Repa.Tests.Cuda;

namespace Repa.Tests.Ilgpu;

/// <summary>The norm, attention, loss, embedding and optimiser families of the ILGPU backend against the CPU's.</summary>
public sealed partial class IlgpuBackendTests
{
    private BufferPair? RandomOrNull(bool present, long length, double scale = 1) => present ? eq.Random(DType.F32, length, scale) : null;

    private static DeviceBuffer? On(Func<BufferPair, DeviceBuffer> on, BufferPair? pair) => pair == null ? null : on(pair);

    // ---- norm -----------------------------------------------------------------------------------------------------

    [TestCaseSource(typeof(CudaBackendTests), nameof(CudaBackendTests.LayerNormCases))]
    public void LayerNormMatchesTheCpu(int rows, int dim, int rowsPerGroup, bool hasWeight, bool hasBias, bool hasShift, bool hasScale)
    {
        int groups = rows / rowsPerGroup;
        var x = eq.Values(DType.F32, [.. Enumerable.Range(0, rows * dim).Select(i => 0.75f + 2 * MathF.Sin(i * 0.37f + rows))]);
        var weight = RandomOrNull(hasWeight, dim);
        var bias = RandomOrNull(hasBias, dim);
        var shift = RandomOrNull(hasShift, (long)groups * dim);
        var scale = RandomOrNull(hasScale, (long)groups * dim, 0.5);
        var y = eq.Full(DType.F32, (long)rows * dim, float.NaN);
        var mean = eq.Full(DType.F32, rows, float.NaN);
        var rstd = eq.Full(DType.F32, rows, float.NaN);
        eq.Run((be, on) => be.LayerNormForward(on(x), On(on, weight), On(on, bias), On(on, shift), On(on, scale), on(y), on(mean), on(rstd),
            rows, dim, rowsPerGroup, 1e-5));
        eq.AssertClose(y, F32Sums, "y");
        eq.AssertClose(mean, F32Sums, "mean");
        eq.AssertClose(rstd, Tolerance.Close(2e-5), "rstd");
        foreach (var (input, parameters) in new[] { (true, true), (true, false), (false, true) })
        {
            var dy = eq.Random(DType.F32, (long)rows * dim);
            var dx = input ? eq.Random(DType.F32, (long)rows * dim) : null;
            var dweight = RandomOrNull(parameters && hasWeight, dim);
            var dbias = RandomOrNull(parameters && hasBias, dim);
            var dshift = RandomOrNull(parameters && hasShift, (long)groups * dim);
            var dscale = RandomOrNull(parameters && hasScale, (long)groups * dim);
            eq.Run((be, on) => be.LayerNormBackward(on(x), On(on, weight), On(on, bias), On(on, scale), on(mean), on(rstd), on(dy),
                On(on, dx), On(on, dweight), On(on, dbias), On(on, dshift), On(on, dscale), rows, dim, rowsPerGroup));
            string what = $"backward ({(input ? "dx" : "")}{(parameters ? " parameters" : "")})";
            if (dx != null) eq.AssertClose(dx, F32Sums, $"{what}: dx");
            foreach (var (pair, name) in new[] { (dweight, "dweight"), (dbias, "dbias"), (dshift, "dshift"), (dscale, "dscale") })
                if (pair != null) eq.AssertClose(pair, Tolerance.Close(1e-4, 1e-4), $"{what}: {name}");
        }
        using var stats = ilgpu.Allocate(DType.F32, 4);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ilgpu.LayerNormForward(stats, null, null, stats, null, stats, stats, stats, 4, 1, 3, 1e-5))!;
        Assert.That(e.Message, Does.Contain("rowsPerGroup 3 must be >= 1 and divide rows 4"));
    }

    [TestCase(6, 7, 3)]
    [TestCase(10, 33, 5)]
    [TestCase(9, 1, 9)]
    public void GatedResidualMatchesTheCpu(int rows, int dim, int rowsPerGroup)
    {
        long n = (long)rows * dim, gn = (long)(rows / rowsPerGroup) * dim;
        var (x, y, gate, output) = (eq.Random(DType.F32, n), eq.Random(DType.F32, n), eq.Random(DType.F32, gn), eq.Full(DType.F32, n, float.NaN));
        eq.Run((be, on) => be.GatedResidualForward(on(x), on(y), on(gate), on(output), rows, dim, rowsPerGroup));
        eq.AssertClose(output, Tolerance.Close(2 * F32Epsilon, 1e-7), "output");
        var (dout, dx, dy, dgate) = (eq.Random(DType.F32, n), eq.Random(DType.F32, n), eq.Random(DType.F32, n), eq.Random(DType.F32, gn));
        var shared = eq.Random(DType.F32, n);
        eq.Run((be, on) =>
        {
            be.GatedResidualBackward(on(y), on(gate), on(dout), on(dx), on(dy), on(dgate), rows, dim, rowsPerGroup);
            be.GatedResidualBackward(on(y), on(gate), on(dout), on(shared), on(shared), null, rows, dim, rowsPerGroup); // dx aliasing dy
        });
        eq.AssertClose(dx, Tolerance.Bits, "dx");
        eq.AssertClose(dy, F32Sums, "dy");
        eq.AssertClose(dgate, F32Sums, "dgate");
        eq.AssertClose(shared, F32Sums, "dx = dy");
    }

    // ---- attention ------------------------------------------------------------------------------------------------

    [Test]
    public void AttentionMatchesTheCpu()
    {
        foreach (var (batch, heads, tokens, headDim, customScale) in CudaBackendTests.AttentionCases)
        {
            int width = heads * headDim;
            double scale = customScale ?? 1.0 / Math.Sqrt(headDim);
            string what = $"N {batch}, H {heads}, T {tokens}, hd {headDim}, scale {scale:G3}";
            var qkv = eq.Random(DType.F32, (long)batch * tokens * 3 * width);
            var output = eq.Full(DType.F32, (long)batch * tokens * width, float.NaN);
            var lse = eq.Full(DType.F32, (long)batch * heads * tokens, float.NaN);
            eq.Run((be, on) => be.AttentionForward(on(qkv), on(output), on(lse), batch, tokens, heads, headDim, scale));
            eq.AssertClose(output, Tolerance.Close(1e-5, 1e-5), $"attention output, {what}");
            eq.AssertClose(lse, Tolerance.Close(1e-5, 1e-5), $"attention lse, {what}");
            var dOutput = eq.Random(DType.F32, (long)batch * tokens * width);
            var dQkv = eq.Random(DType.F32, (long)batch * tokens * 3 * width);
            eq.Run((be, on) => be.AttentionBackward(on(qkv), on(output), on(dOutput), on(lse), on(dQkv), batch, tokens, heads, headDim, scale));
            double spread = 1 + scale * Math.Sqrt(headDim);
            eq.AssertClose(dQkv, Tolerance.Close(1e-5 * spread, 1e-5 * spread), $"attention dQkv (accumulated), {what}");
        }
        using var big = ilgpu.Allocate(DType.F32, 3 * 130);
        var e = Assert.Throws<NotSupportedException>(() => ilgpu.AttentionForward(big, big, big, 1, 1, 1, 130, 1.0))!;
        Assert.That(e.Message, Does.Contain("head_dim 130"));
    }

    // ---- loss -----------------------------------------------------------------------------------------------------

    [Test]
    public void MseMatchesTheCpu([Values(1, 771, 5000)] int inner)
    {
        const int samples = 3;
        long n = samples * (long)inner;
        var (p, t) = (eq.Random(DType.F32, n), eq.Random(DType.F32, n));
        var loss = eq.Full(DType.F32, samples, float.NaN);
        var dLoss = eq.Values(DType.F32, 0.5f, -1.25f, 2f);
        var (dp, dt, dpOnly) = (eq.Random(DType.F32, n), eq.Random(DType.F32, n), eq.Random(DType.F32, n));
        eq.Run((be, on) =>
        {
            be.MseForward(on(p), on(t), on(loss), samples, inner);
            be.MseBackward(on(p), on(t), on(dLoss), on(dp), on(dt), samples, inner);
            be.MseBackward(on(p), on(t), on(dLoss), on(dpOnly), null, samples, inner);
        });
        eq.AssertClose(loss, Tolerance.Close(1e-6), "loss");
        eq.AssertClose(dp, F32Sums, "dprediction");
        eq.AssertClose(dt, F32Sums, "dtarget");
        eq.AssertClose(dpOnly, F32Sums, "dprediction alone");
    }

    [Test]
    public void CosineAlignmentAndL2NormalizeMatchTheCpu([Values(1, 7, 771)] int dim)
    {
        const int samples = 2, tokens = 5;
        const double eps = 1e-6;
        long n = (long)samples * tokens * dim;
        var z = eq.Random(DType.F32, n);
        var h = eq.Random(DType.F32, n, scale: 3);
        eq.Run((be, on) => be.Fill(on(h), 3 * dim, dim, 0)); // a zero row: its norm is clamped to eps
        var loss = eq.Full(DType.F32, samples, float.NaN);
        var dLoss = eq.Values(DType.F32, 1.5f, -0.75f);
        var (dz, dh, dzOnly) = (eq.Random(DType.F32, n), eq.Random(DType.F32, n), eq.Random(DType.F32, n));
        var (y, dy, dx) = (eq.Full(DType.F32, n, float.NaN), eq.Random(DType.F32, n), eq.Random(DType.F32, n));
        eq.Run((be, on) =>
        {
            be.CosineAlignmentForward(on(z), on(h), on(loss), samples, tokens, dim, eps);
            be.CosineAlignmentBackward(on(z), on(h), on(dLoss), on(dz), on(dh), samples, tokens, dim, eps);
            be.CosineAlignmentBackward(on(z), on(h), on(dLoss), on(dzOnly), null, samples, tokens, dim, eps);
            be.RowL2NormalizeForward(on(h), on(y), samples * tokens, dim, eps);
            be.RowL2NormalizeBackward(on(h), on(dy), on(dx), samples * tokens, dim, eps);
        });
        eq.AssertClose(loss, F32Sums, "cosine loss");
        eq.AssertClose(dz, F32Sums, "dz");
        eq.AssertClose(dh, F32Sums, "dh");
        eq.AssertClose(dzOnly, F32Sums, "dz alone");
        eq.AssertClose(y, F32Sums, "normalised rows");
        eq.AssertClose(dx, F32Sums, "normalisation dx");
    }

    [Test]
    public void DiagonalCrossEntropyMatchesTheCpu([Values(1, 7, 33)] int n, [Values(2.5, -1.5)] double scale)
    {
        const int samples = 2;
        long count = (long)samples * n * n;
        var logits = eq.Random(DType.F32, count, scale: 2);
        var (lse, loss) = (eq.Full(DType.F32, samples * n, float.NaN), eq.Full(DType.F32, samples, float.NaN));
        var dLoss = eq.Values(DType.F32, 0.8f, -1.1f);
        var dLogits = eq.Random(DType.F32, count);
        eq.Run((be, on) => be.DiagonalCrossEntropyForward(on(logits), on(lse), on(loss), samples, n, scale));
        eq.AssertClose(lse, F32Sums, "lse");
        eq.AssertClose(loss, F32Sums, "loss");
        eq.Run((be, on) => be.DiagonalCrossEntropyBackward(on(logits), on(lse), on(dLoss), on(dLogits), samples, n, scale));
        eq.AssertClose(dLogits, F32Sums, "dlogits");
    }

    [Test]
    public void DiffusionVlbMatchesTheCpu([Values(7, 771)] int inner)
    {
        const int samples = 4;
        int n = samples * inner;
        var random = new Random(80);
        float[] x0Values = Enumerable.Range(0, n).Select(i => i % 5 == 0 ? (i % 2 == 0 ? -1f : 1f) : random.Next(256) / 127.5f - 1).ToArray();
        float[] meanValues = x0Values.Select(v => v + (float)(random.NextDouble() - 0.5) * 0.05f).ToArray();
        var x0 = eq.Values(DType.F32, x0Values);
        var mean = eq.Values(DType.F32, meanValues);
        var trueMean = eq.Values(DType.F32, meanValues.Select(v => v + (float)(random.NextDouble() - 0.5) * 0.02f).ToArray());
        var v = eq.Random(DType.F32, n, scale: 0.5);
        var stepParams = eq.Values(DType.F32, -9.6f, -4.7f, -9.4f, 0f, -11.2f, -7.1f, -11.2f, 1f, -3.1f, -2.3f, -3.0f, 0f, -10.4f, -6.9f, -10.4f, 1f);
        var loss = eq.Full(DType.F32, samples, float.NaN);
        var dLoss = eq.Values(DType.F32, 1f, -0.5f, 2f, 0.25f);
        var dv = eq.Random(DType.F32, n);
        eq.Run((be, on) =>
        {
            be.DiffusionVlbForward(on(v), on(mean), on(trueMean), on(x0), on(stepParams), on(loss), samples, inner);
            be.DiffusionVlbBackward(on(v), on(mean), on(trueMean), on(x0), on(stepParams), on(dLoss), on(dv), samples, inner);
        });
        // The decoder's tanh-approximated CDF: tanh through exp here, the CPU's float tanh there.
        eq.AssertClose(loss, Tolerance.Close(1e-5, 1e-6), "loss");
        eq.AssertClose(dv, Tolerance.Close(1e-4, 1e-5), "dvar");
    }

    // ---- embedding ------------------------------------------------------------------------------------------------

    [Test]
    public void EmbeddingsMatchTheCpu([Values(1, 7, 33, 64)] int dim)
    {
        int[] idValues = [3, 0, 10, 3, 7, 7, 3, 1, 10];
        const int vocab = 11;
        int count = idValues.Length;
        var table = eq.Random(DType.F32, vocab * dim);
        var ids = eq.Ints(idValues);
        var y = eq.Full(DType.F32, (long)count * dim, float.NaN);
        var dy = eq.Random(DType.F32, (long)count * dim);
        var dTable = eq.Random(DType.F32, vocab * dim);
        var t = eq.Values(DType.F32, 0f, 1f, 999f, 0.25f, 500.5f);
        var te = eq.Full(DType.F32, 5L * dim, float.NaN);
        var dte = eq.Random(DType.F32, 5L * dim);
        var dt = eq.Random(DType.F32, 5);
        eq.Run((be, on) =>
        {
            be.EmbeddingForward(on(table), on(ids), on(y), count, vocab, dim);
            be.EmbeddingBackward(on(ids), on(dy), on(dTable), count, vocab, dim);
            be.TimestepEmbeddingForward(on(t), on(te), 5, dim, 10000);
            be.TimestepEmbeddingBackward(on(t), on(dte), on(dt), 5, dim, 10000);
        });
        eq.AssertClose(y, Tolerance.Bits, "rows copied");
        eq.AssertClose(dTable, Tolerance.Bits, "repeated ids add up in position order, as on the CPU");
        // cos/sin of arguments up to 1000: a float32 ulp of the argument is ~6e-5.
        eq.AssertClose(te, Tolerance.Close(1e-5, 2e-4), "timestep embedding");
        eq.AssertClose(dt, Tolerance.Close(1e-3, 1e-3 * dim), "timestep embedding dt");
        var bad = eq.Ints(2, 11, 0);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ilgpu.EmbeddingForward(table.Candidate, bad.Candidate, y.Candidate, 3, vocab, dim))!;
        Assert.That(e.Message, Does.Contain("id 11 at position 1"));
    }

    // ---- optimisers -----------------------------------------------------------------------------------------------

    [Test]
    public void OptimiserKernelsMatchTheCpu([Values(1, 4099)] int n)
    {
        var param = eq.Random(DType.F32, n);
        var grad = eq.Random(DType.F32, n, scale: 3);
        var m = eq.Random(DType.F32, n, scale: 0.1);
        var v = eq.Values(DType.F32, [.. Enumerable.Range(0, n).Select(i => 0.01f + i % 7 * 0.003f)]);
        var ema = eq.Random(DType.F32, n);
        double cpuSum = cpu.SumOfSquares(grad.Reference, n), ilgpuSum = ilgpu.SumOfSquares(grad.Candidate, n);
        Assert.That(ilgpuSum, Is.EqualTo(cpuSum).Within(1e-12).Percent, "sum of squares in float64");
        Assert.That(ilgpu.SumOfSquares(grad.Candidate, n), Is.EqualTo(ilgpuSum), "deterministic");
        eq.Run((be, on) => be.AdamWStep(on(param), on(grad), on(m), on(v), n, 1e-3, 0.9, 0.999, 1e-8, 0.01, 0.5, 3));
        eq.Run((be, on) => be.EmaUpdate(on(ema), on(param), n, 0.9999));
        // The same float32 operations in the same order: bit-identical on the simulator.
        eq.AssertClose(param, Tolerance.Bits, "AdamW parameters");
        eq.AssertClose(m, Tolerance.Bits, "AdamW first moments");
        eq.AssertClose(v, Tolerance.Bits, "AdamW second moments");
        eq.AssertClose(ema, Tolerance.Bits, "EMA");
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ilgpu.AdamWStep(param.Candidate, grad.Candidate, m.Candidate, v.Candidate, n, 1e-3, 0.9, 0.999, 1e-8, 0, 1, 0))!;
        Assert.That(e.Message, Does.Contain("step is 1-based"));
    }
}
