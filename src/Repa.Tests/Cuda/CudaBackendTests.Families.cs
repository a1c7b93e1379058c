using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Optim;
using static Repa.Autograd.Ops;

namespace Repa.Tests.Cuda;

/// <summary>
/// The norm, loss, embedding and optimiser families of the CUDA backend against the CPU backend, member by member
/// (forward and backward, accumulating into non-zero gradients, absent inputs and unrequested gradients, awkward
/// widths, float32 and bfloat16), and end to end through autograd and the optimisers.
/// </summary>
public abstract partial class CudaBackendTests
{
    private static Tolerance F32Sums => MemberCases.F32Sums;

    private static Tolerance Bf16Stores => MemberCases.Bf16Stores;

    private static Tolerance Stored(DType dtype) => MemberCases.Stored(dtype);

    private BufferPair? RandomOrNull(bool present, DType dtype, long length, double scale = 1) => present ? Eq.Random(dtype, length, scale) : null;

    private static DeviceBuffer? On(Func<BufferPair, DeviceBuffer> on, BufferPair? pair) => pair == null ? null : on(pair);

    // ---- norm -----------------------------------------------------------------------------------------------------

    /// <summary>(rows, dim, rows per group, weight, bias, shift, scale).</summary>
    internal static readonly object[] LayerNormCases =
    [
        new object[] { 9, 1, 1, false, false, false, false },
        new object[] { 9, 1, 3, true, true, true, true }, // width 1: xhat = 0, the partials fold as one column
        new object[] { 9, 7, 1, true, true, false, false },
        new object[] { 10, 33, 5, true, true, true, true },
        new object[] { 6, 192, 3, false, false, true, true }, // adaLN: no affine, then modulate
        new object[] { 4, 4 * 192 + 3, 2, true, false, false, true },
        new object[] { 300, 33, 1, true, true, false, false }, // many chunks of rows for dweight/dbias
        new object[] { 40, 65, 20, true, true, true, true }, // groups longer than the tile's 8 thread rows
    ];

    [TestCaseSource(nameof(LayerNormCases))]
    public void LayerNormMatchesTheCpu(int rows, int dim, int rowsPerGroup, bool hasWeight, bool hasBias, bool hasShift, bool hasScale)
    {
        foreach (var dtype in new[] { DType.F32, DType.BF16 })
        {
            Eq.Dispose();
            int groups = rows / rowsPerGroup;
            // An offset mean: the statistics must be two-pass.
            var x = Eq.Values(dtype, [.. Enumerable.Range(0, rows * dim).Select(i => 0.75f + 2 * MathF.Sin(i * 0.37f + rows))]);
            var weight = RandomOrNull(hasWeight, DType.F32, dim);
            var bias = RandomOrNull(hasBias, DType.F32, dim);
            var shift = RandomOrNull(hasShift, dtype, (long)groups * dim);
            var scale = RandomOrNull(hasScale, dtype, (long)groups * dim, 0.5);
            var y = Eq.Full(dtype, (long)rows * dim, float.NaN);
            var mean = Eq.Full(DType.F32, rows, float.NaN);
            var rstd = Eq.Full(DType.F32, rows, float.NaN);
            Eq.Run((be, on) => be.LayerNormForward(on(x), On(on, weight), On(on, bias), On(on, shift), On(on, scale), on(y), on(mean), on(rstd),
                rows, dim, rowsPerGroup, 1e-5));
            Eq.AssertClose(y, Stored(dtype), $"{dtype.Name()} y");
            Eq.AssertClose(mean, F32Sums, $"{dtype.Name()} mean");
            Eq.AssertClose(rstd, Tolerance.Close(2e-5), $"{dtype.Name()} rstd");
            Eq.StoreAsCandidate(y);

            // Every gradient, accumulated into non-zero values; then the input alone; then the parameters alone.
            foreach (var (input, parameters) in new[] { (true, true), (true, false), (false, true) })
            {
                var dy = Eq.Random(dtype, (long)rows * dim);
                var dx = input ? Eq.Random(dtype, (long)rows * dim) : null;
                var dweight = RandomOrNull(parameters && hasWeight, DType.F32, dim);
                var dbias = RandomOrNull(parameters && hasBias, DType.F32, dim);
                var dshift = RandomOrNull(parameters && hasShift, dtype, (long)groups * dim);
                var dscale = RandomOrNull(parameters && hasScale, dtype, (long)groups * dim);
                Eq.Run((be, on) => be.LayerNormBackward(on(x), On(on, weight), On(on, bias), On(on, scale), on(mean), on(rstd), on(dy),
                    On(on, dx), On(on, dweight), On(on, dbias), On(on, dshift), On(on, dscale), rows, dim, rowsPerGroup));
                string what = $"{dtype.Name()} backward ({(input ? "dx" : "")}{(parameters ? " parameters" : "")})";
                if (dx != null) Eq.AssertClose(dx, Stored(dtype), $"{what}: dx");
                // Sums over up to 300 rows of O(1) terms.
                if (dweight != null) Eq.AssertClose(dweight, Tolerance.Close(1e-4, 1e-4), $"{what}: dweight");
                if (dbias != null) Eq.AssertClose(dbias, Tolerance.Close(1e-4, 1e-4), $"{what}: dbias");
                if (dshift != null) Eq.AssertClose(dshift, dtype == DType.F32 ? Tolerance.Close(1e-4, 1e-4) : Bf16Stores, $"{what}: dshift");
                if (dscale != null) Eq.AssertClose(dscale, dtype == DType.F32 ? Tolerance.Close(1e-4, 1e-4) : Bf16Stores, $"{what}: dscale");
            }
        }
    }

    [Test]
    public void LayerNormRefusesWhatTheCpuRefuses()
    {
        using var x = Cuda.Allocate(DType.F32, 12);
        using var stats = Cuda.Allocate(DType.F32, 4);
        using var bf = Cuda.Allocate(DType.BF16, 12);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.LayerNormForward(x, null, null, x, null, x, stats, stats, 4, 3, 3, 1e-5))!;
        Assert.That(e.Message, Does.Contain("rowsPerGroup 3 must be >= 1 and divide rows 4"));
        Assert.Throws<ArgumentException>(() => Cuda.LayerNormForward(x, null, null, null, null, bf, stats, stats, 4, 3, 1, 1e-5), "mixed activations");
        Assert.Throws<ArgumentException>(() => Cuda.LayerNormForward(bf, null, null, null, null, bf, bf, bf, 4, 3, 1, 1e-5), "bf16 statistics");
        Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.LayerNormForward(x, null, null, null, null, x, stats, stats, 5, 3, 1, 1e-5), "rows beyond x");
    }

    [TestCase(6, 7, 3)]
    [TestCase(10, 33, 5)]
    [TestCase(4, 4 * 192 + 3, 1)]
    [TestCase(9, 1, 9)]
    [TestCase(22, 33, 11)]
    public void GatedResidualMatchesTheCpu(int rows, int dim, int rowsPerGroup)
    {
        foreach (var dtype in new[] { DType.F32, DType.BF16 })
        {
            Eq.Dispose();
            long n = (long)rows * dim, gn = (long)(rows / rowsPerGroup) * dim;
            var (x, y, gate, output) = (Eq.Random(dtype, n), Eq.Random(dtype, n), Eq.Random(dtype, gn), Eq.Full(dtype, n, float.NaN));
            Eq.Run((be, on) => be.GatedResidualForward(on(x), on(y), on(gate), on(output), rows, dim, rowsPerGroup));
            Eq.AssertClose(output, dtype == DType.F32 ? Tolerance.Close(2 * F32Epsilon, 1e-7) : Bf16Stores, $"{dtype.Name()} output");

            var (dout, dx, dy, dgate) = (Eq.Random(dtype, n), Eq.Random(dtype, n), Eq.Random(dtype, n), Eq.Random(dtype, gn));
            Eq.Run((be, on) => be.GatedResidualBackward(on(y), on(gate), on(dout), on(dx), on(dy), on(dgate), rows, dim, rowsPerGroup));
            Eq.AssertClose(dx, dtype == DType.F32 ? Tolerance.Bits : Bf16Stores, $"{dtype.Name()} dx");
            Eq.AssertClose(dy, Stored(dtype), $"{dtype.Name()} dy");
            Eq.AssertClose(dgate, Stored(dtype), $"{dtype.Name()} dgate");

            // Only the gate's gradient requested.
            var dgateOnly = Eq.Random(dtype, gn);
            Eq.Run((be, on) => be.GatedResidualBackward(on(y), on(gate), on(dout), null, null, on(dgateOnly), rows, dim, rowsPerGroup));
            Eq.AssertClose(dgateOnly, Stored(dtype), $"{dtype.Name()} dgate alone");
        }
    }

    // ---- loss -----------------------------------------------------------------------------------------------------

    [Test]
    public void MseMatchesTheCpu([Values(1, 7, 771, 5000)] int inner, [Values(DType.F32, DType.BF16)] DType dtype) =>
        MemberCases.Mse(Eq, inner, dtype);

    [Test]
    public void CosineAlignmentMatchesTheCpu([Values(1, 7, 33, 771)] int dim, [Values(DType.F32, DType.BF16)] DType dtype) =>
        MemberCases.CosineAlignment(Eq, dim, dtype);

    [Test]
    public void RowL2NormalizeMatchesTheCpu([Values(1, 7, 192, 771)] int dim, [Values(DType.F32, DType.BF16)] DType dtype) =>
        MemberCases.RowL2Normalize(Eq, dim, dtype);

    [Test]
    public void DiagonalCrossEntropyMatchesTheCpu([Values(1, 7, 33)] int n, [Values(2.5, -1.5)] double scale, [Values(DType.F32, DType.BF16)] DType dtype) =>
        MemberCases.DiagonalCrossEntropy(Eq, n, scale, dtype);

    [Test]
    public void DiffusionVlbMatchesTheCpu([Values(7, 771)] int inner, [Values(DType.F32, DType.BF16)] DType dtype) =>
        MemberCases.DiffusionVlb(Eq, inner, dtype);

    // ---- embedding ------------------------------------------------------------------------------------------------

    [Test]
    public void EmbeddingIsBitwiseTheCpus([Values(1, 7, 33, 771)] int dim, [Values(DType.F32, DType.BF16)] DType dtype) =>
        MemberCases.EmbeddingIsBitwiseTheCpus(Eq, dim, dtype);

    [Test]
    public void EmbeddingNamesTheFirstIdOutOfRangeAsTheCpuDoes()
    {
        int[] idValues = [2, 4, 10, -1, 3, 11];
        var table = Eq.Random(DType.F32, 11 * 5);
        var ids = Eq.Ints(idValues);
        var y = Eq.Full(DType.F32, idValues.Length * 5, 0);
        var onCpu = Assert.Throws<ArgumentOutOfRangeException>(() => cpu.EmbeddingForward(table.Reference, ids.Reference, y.Reference, idValues.Length, 11, 5))!;
        var onCuda = Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.EmbeddingForward(table.Candidate, ids.Candidate, y.Candidate, idValues.Length, 11, 5))!;
        Assert.That(onCuda.Message, Is.EqualTo(onCpu.Message));
        Assert.That(onCuda.Message, Does.StartWith("embedding: id -1 at position 3 is out of range for a table of 11 rows (valid ids are 0..10)."));
        Assert.That(onCuda.ActualValue, Is.EqualTo(-1));
        // Through autograd (Ops.Embedding frees its output and rethrows): the same sentence.
        using var tape = new Tape();
        using var cudaTable = Tensor.FromArray(Cuda, new float[11 * 5], 11, 5);
        using var cudaIds = Tensor.FromArray(Cuda, idValues, idValues.Length);
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => Embedding(cudaTable, cudaIds))!.Message, Is.EqualTo(onCpu.Message));
        using var f32Ids = Cuda.Allocate(DType.F32, 6);
        Assert.Throws<ArgumentException>(() => Cuda.EmbeddingForward(table.Candidate, f32Ids, y.Candidate, 6, 11, 5), "ids must be int32");
    }

    [Test]
    public void TimestepEmbeddingMatchesTheCpu([Values(1, 2, 7, 256, 771)] int dim, [Values(DType.F32, DType.BF16)] DType dtype) =>
        MemberCases.TimestepEmbedding(Eq, dim, dtype);

    // ---- optimiser ------------------------------------------------------------------------------------------------

    [TestCase(1)]
    [TestCase(1003)]
    [TestCase(300_001)]
    public void OptimiserKernelsMatchTheCpu(int n) =>
        MemberCases.OptimiserKernelsMatchTheCpu(Eq, n);

    [Test]
    public void OptimiserRefusesWhatItDoesNotKeep()
    {
        using var bf = Cuda.Allocate(DType.BF16, 4);
        using var f = Cuda.Allocate(DType.F32, 4);
        Assert.That(Cuda.SumOfSquares(f, 0), Is.Zero);
        Assert.Throws<NotSupportedException>(() => Cuda.SumOfSquares(bf, 4), "bf16 master weights");
        Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.EmaUpdate(f, f, 5, 0.9), "n beyond the buffers");
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.AdamWStep(f, f, f, f, 4, 1e-3, 0.9, 0.999, 1e-8, 0, 1, 0))!;
        Assert.That(e.Message, Does.Contain("step is 1-based"));
    }

    // ---- autograd and the optimisers on the backend ---------------------------------------------------------------

    /// <summary>
    /// A miniature SiT block through autograd: conditioning from a label embedding and a timestep embedding, adaLN
    /// LayerNorm + modulate, the gated residual, REPA's MSE and cosine alignment losses; its gradients on the CUDA
    /// backend match the CPU's. Then AdamW (with the norm clip) and the EMA take a step from the same gradients on
    /// both: bitwise the same parameters.
    /// </summary>
    [Test]
    public void AutogradBlockAndOptimiserStepMatchTheCpu()
    {
        var (cpuLoss, cpuGrads, cpuAfter) = BlockStep(cpu, null);
        var (cudaLoss, cudaGrads, cudaAfter) = BlockStep(Cuda, cpuGrads);
        Assert.That(cudaLoss, Is.EqualTo(cpuLoss).Within(1e-5).Percent);
        foreach (var name in cpuGrads.Keys)
            BackendEquivalence.AssertClose(cpuGrads[name], cudaGrads[name], Tolerance.Close(1e-4, 1e-6), $"d loss / d {name}");
        foreach (var name in cpuAfter.Keys)
            BackendEquivalence.AssertClose(cpuAfter[name], cudaAfter[name], Tolerance.Bits, $"{name} after AdamW + EMA");
    }

    private static (double Loss, Dictionary<string, double[]> Grads, Dictionary<string, double[]> After) BlockStep(
        IBackend backend, Dictionary<string, double[]>? stepFrom)
    {
        const int n = 2, tokens = 5, dim = 12, vocab = 4;
        float[] Normal(ulong stream, int count, double scale = 1)
        {
            var values = new float[count];
            Philox.Normal(17, stream, 0, values);
            return [.. values.Select(v => (float)(v * scale))];
        }
        using var tape = new Tape();
        var parameters = new (string Name, Tensor Tensor)[]
        {
            ("x", Tensor.FromArray(backend, Normal(1, n * tokens * dim, 2), n, tokens, dim).AsParameter("x")),
            ("shift_table", Tensor.FromArray(backend, Normal(2, vocab * dim, 0.5), vocab, dim).AsParameter("shift_table")),
            ("scale_table", Tensor.FromArray(backend, Normal(3, vocab * dim, 0.5), vocab, dim).AsParameter("scale_table")),
            ("gate_table", Tensor.FromArray(backend, Normal(4, vocab * dim), vocab, dim).AsParameter("gate_table")),
            ("weight", Tensor.FromArray(backend, Normal(5, dim, 0.3).Select(v => v + 1).ToArray(), dim).AsParameter("weight")),
            ("bias", Tensor.FromArray(backend, Normal(6, dim, 0.3), dim).AsParameter("bias")),
            ("t", Tensor.FromArray(backend, [0.25f, 0.8f], n).AsParameter("t")),
        };
        var p = parameters.ToDictionary(e => e.Name, e => e.Tensor);
        using var ids = Tensor.FromArray(backend, new[] { 3, 1 }, n);
        using var target = Tensor.FromArray(backend, Normal(7, n * tokens * dim), n, tokens, dim);
        using var features = Tensor.FromArray(backend, Normal(8, n * tokens * dim), n, tokens, dim);

        var shift = Add(Embedding(p["shift_table"], ids), Mul(TimestepEmbedding(p["t"], dim), TimestepEmbedding(p["t"], dim)));
        var h = LayerNormModulate(p["x"], shift, Embedding(p["scale_table"], ids), 1e-6, p["weight"], p["bias"]);
        var y = GatedResidual(p["x"], Embedding(p["gate_table"], ids), h);
        var loss = Add(Mean(MsePerSample(y, target)), Mean(CosineAlignmentLoss(y, features)));
        tape.Backward(loss);
        double value = loss.Item();
        var grads = parameters.ToDictionary(e => e.Name, e => e.Tensor.Grad!.ToFloatArray().Select(v => (double)v).ToArray());

        // The optimiser step, from the given gradients (the CPU's) so that both backends update from the same numbers.
        if (stepFrom != null)
            foreach (var (name, tensor) in parameters)
                backend.Upload<float>(stepFrom[name].Select(v => (float)v).ToArray(), tensor.Grad!.Buffer);
        using var adamw = new AdamW(parameters, lr: 1e-3, weightDecay: 0.01, maxGradNorm: 0.5);
        using var ema = new Ema(parameters, decay: 0.9);
        adamw.Step();
        ema.Update();
        var after = parameters.ToDictionary(e => e.Name, e => e.Tensor.ToFloatArray().Select(v => (double)v).ToArray());
        foreach (var (name, _) in parameters) after["ema." + name] = [.. ema[name].ToFloatArray().Select(v => (double)v)];
        foreach (var (_, tensor) in parameters) tensor.Dispose();
        return (value, grads, after);
    }
}
