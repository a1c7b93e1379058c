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
    public void AttentionMatchesTheCpu() => MemberCases.Attention(eq, DType.F32, DType.F32);

    [Test]
    public void AttentionRefusesWideHeads()
    {
        using var big = ilgpu.Allocate(DType.F32, 3 * 130);
        var e = Assert.Throws<NotSupportedException>(() => ilgpu.AttentionForward(big, big, big, 1, 1, 1, 130, 1.0))!;
        Assert.That(e.Message, Does.Contain("head_dim 130"));
    }

    // ---- loss (the CUDA suite's bodies, MemberCases, in float32) ------------------------------------------------

    [Test]
    public void MseMatchesTheCpu([Values(1, 7, 771, 5000)] int inner) => MemberCases.Mse(eq, inner, DType.F32);

    [Test]
    public void CosineAlignmentMatchesTheCpu([Values(1, 7, 33, 771)] int dim) => MemberCases.CosineAlignment(eq, dim, DType.F32);

    [Test]
    public void RowL2NormalizeMatchesTheCpu([Values(1, 7, 192, 771)] int dim) => MemberCases.RowL2Normalize(eq, dim, DType.F32);

    [Test]
    public void DiagonalCrossEntropyMatchesTheCpu([Values(1, 7, 33)] int n, [Values(2.5, -1.5)] double scale) =>
        MemberCases.DiagonalCrossEntropy(eq, n, scale, DType.F32);

    [Test]
    public void DiffusionVlbMatchesTheCpu([Values(7, 771)] int inner) => MemberCases.DiffusionVlb(eq, inner, DType.F32);

    // ---- embedding ------------------------------------------------------------------------------------------------

    [Test]
    public void EmbeddingIsBitwiseTheCpus([Values(1, 7, 33, 771)] int dim) => MemberCases.EmbeddingIsBitwiseTheCpus(eq, dim, DType.F32);

    [Test]
    public void TimestepEmbeddingMatchesTheCpu([Values(1, 2, 7, 256, 771)] int dim) => MemberCases.TimestepEmbedding(eq, dim, DType.F32);

    [Test]
    public void EmbeddingNamesTheFirstIdOutOfRange()
    {
        var table = eq.Random(DType.F32, 11 * 5);
        var y = eq.Full(DType.F32, 15, float.NaN);
        var bad = eq.Ints(2, 11, 0);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ilgpu.EmbeddingForward(table.Candidate, bad.Candidate, y.Candidate, 3, 11, 5))!;
        Assert.That(e.Message, Does.Contain("id 11 at position 1"));
    }

    // ---- optimisers -----------------------------------------------------------------------------------------------

    [TestCase(1)]
    [TestCase(4099)]
    public void OptimiserKernelsMatchTheCpu(int n) => MemberCases.OptimiserKernelsMatchTheCpu(eq, n);

    [Test]
    public void AdamWRefusesStepZero()
    {
        using var f = ilgpu.Allocate(DType.F32, 4);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ilgpu.AdamWStep(f, f, f, f, 4, 1e-3, 0.9, 0.999, 1e-8, 0, 1, 0))!;
        Assert.That(e.Message, Does.Contain("step is 1-based"));
        Assert.Throws<ArgumentOutOfRangeException>(() => ilgpu.EmaUpdate(f, f, 5, 0.9), "n beyond the buffers");
    }

    // ---- sampler ----

    public static IEnumerable<TestCaseData> FlowStepCases()
    {
        var drifts = new (string Name, ScoreDrift? Drift)[]
        {
            ("velocity", null),
            ("linear drift", Repa.Runtime.Sampling.FlowSampler.Drift("linear", 0.62)),
            ("cosine drift", Repa.Runtime.Sampling.FlowSampler.Drift("cosine", 0.37)),
        };
        foreach (long n in new long[] { 1, 7, 1001 })
            foreach (var dtype in new[] { DType.F32, DType.F64 })
                foreach (var guided in new[] { false, true })
                    foreach (var (name, drift) in drifts)
                        yield return new TestCaseData(n, dtype, guided, drift).SetArgDisplayNames($"n={n}", dtype.Name(), guided ? "guided" : "unguided", name);
    }

    /// <summary>The noise is drawn on the host by Philox.Normal itself: bit for bit, like everything else.</summary>
    [TestCaseSource(nameof(FlowStepCases))]
    public void FlowStepMatchesTheCpu(long n, DType dtype, bool guided, ScoreDrift? drift) =>
        MemberCases.FlowStep(eq, n, dtype, guided, drift, Tolerance.Bits);

    /// <summary>The device-scalar optimiser members of a captured step, and Capture (which reruns its body here).</summary>
    [Test]
    public void DeviceScalarOptimiserMembersAndCaptureMatchTheCpu()
    {
        const int n = 1003;
        var param = eq.Random(DType.F32, n);
        var grad = eq.Random(DType.F32, n, scale: 5);
        var m = eq.Random(DType.F32, n, scale: 0.1);
        var v = eq.Random(DType.F32, n, scale: 0.01);
        eq.Run((be, on) => be.Binary(BinaryOp.Mul, on(v), [1], on(v), [1], on(v), [n])); // v >= 0
        var total = eq.Values(DType.F64, 0.5f);
        var loss = eq.Values(DType.F32, 1.25f);
        var figures = eq.Values(DType.F64, 0, 0, 0, 0);
        var scalars = eq.Values(DType.F64, 0, 0, 0, 0);
        // {sum of squares (written below), -lr / (1 - beta1), sqrt(1 - beta2), 1 - lr wd}: step 1 at lr 3e-4, wd 0.01.
        double[] stepScalars = [0, -3e-4 / (1 - 0.9), Math.Sqrt(1 - 0.999), 1 - 3e-4 * 0.01];
        foreach (var (backend, buffer) in new[] { (eq.Reference, scalars.Reference), (eq.Candidate, scalars.Candidate) })
            backend.Upload<double>(stepScalars, buffer);
        eq.Run((be, on) =>
        {
            using var graph = be.Capture(() =>
            {
                be.SumOfSquares(on(grad), n, on(total), accumulate: true);
                be.SumOfSquares(on(grad), n, on(scalars), accumulate: false);
                be.AdamWStep(on(param), on(grad), on(m), on(v), n, 0.9, 0.999, 1e-8, 1.0, on(scalars));
                be.AccumulateScalar(on(loss), on(figures), 2, 4);
            });
            graph.Launch();
            graph.Launch();
        });
        eq.AssertClose(total, Tolerance.Close(1e-12), "squared norm accumulated twice onto 0.5");
        eq.AssertClose(figures, Tolerance.Bits, "the loss figure added twice");
        eq.AssertClose(param, Tolerance.Bits, "AdamW from device scalars (clipped), two steps");
        eq.AssertClose(m, Tolerance.Bits, "first moments");
        eq.AssertClose(v, Tolerance.Bits, "second moments");
    }
}
