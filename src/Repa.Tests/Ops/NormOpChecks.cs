using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Tests.Checks;

namespace Repa.Tests.Ops;

using static Repa.Autograd.Ops;

/// <summary>LayerNorm, LayerNormModulate and GatedResidual: the catalogue checks plus PyTorch-semantics and composition tests.</summary>
[TestFixture]
public class NormOpChecks
{
    // Affine weights near 1 and modulation scales near 0, as in a trained (or adaLN-Zero initialised) block.
    private static Input Weight(int d) => Input.Random(d) with { Offset = 1, Scale = 0.5 };

    public static IEnumerable<OpCase> Cases()
    {
        yield return new OpCase("LayerNorm", "no affine [3,7]", x => LayerNorm(x[0]), Input.Random(3, 7));
        yield return new OpCase("LayerNorm", "affine [5,33]", x => LayerNorm(x[0], x[1], x[2]), Input.Random(5, 33), Weight(33), Input.Random(33));
        yield return new OpCase("LayerNorm", "weight only 3-D [2,3,17]", x => LayerNorm(x[0], x[1]), Input.Random(2, 3, 17), Weight(17));
        yield return new OpCase("LayerNorm", "bias only batch 1 [1,9]", x => LayerNorm(x[0], bias: x[1]), Input.Random(1, 9), Input.Random(9));
        yield return new OpCase("LayerNorm", "offset mean [4,19] eps 1e-5", x => LayerNorm(x[0], x[1], x[2], eps: 1e-5),
            Input.Random(4, 19) with { Offset = 3, Scale = 0.5 }, Weight(19), Input.Random(19));
        yield return new OpCase("LayerNorm", "affine [2,5,384] crosses SIMD widths", x => LayerNorm(x[0], x[1], x[2]),
            Input.Random(2, 5, 384), Weight(384), Input.Random(384)) { Fp32Tolerance = 5e-5 };
        yield return new OpCase("LayerNorm", "affine [201,200] several row chunks", x => LayerNorm(x[0], x[1], x[2]),
            Input.Random(201, 200), Weight(200), Input.Random(200)) { Fp32Tolerance = 5e-5 };

        yield return new OpCase("LayerNormModulate", "T=1 [3,1,7]", x => LayerNormModulate(x[0], x[1], x[2]),
            Input.Random(3, 1, 7), Input.Random(3, 7), Input.Random(3, 7) with { Scale = 0.5 });
        yield return new OpCase("LayerNormModulate", "T=5 D=33 [2,5,33]", x => LayerNormModulate(x[0], x[1], x[2]),
            Input.Random(2, 5, 33), Input.Random(2, 33), Input.Random(2, 33) with { Scale = 0.5 });
        yield return new OpCase("LayerNormModulate", "T=17 D=7 batch 1 [1,17,7]", x => LayerNormModulate(x[0], x[1], x[2]),
            Input.Random(1, 17, 7), Input.Random(1, 7), Input.Random(1, 7) with { Scale = 0.5 });
        yield return new OpCase("LayerNormModulate", "rank 2 [4,33]", x => LayerNormModulate(x[0], x[1], x[2]),
            Input.Random(4, 33), Input.Random(4, 33), Input.Random(4, 33) with { Scale = 0.5 });
        yield return new OpCase("LayerNormModulate", "affine T=5 D=7 [3,5,7]", x => LayerNormModulate(x[0], x[1], x[2], 1e-6, x[3], x[4]),
            Input.Random(3, 5, 7), Input.Random(3, 7), Input.Random(3, 7) with { Scale = 0.5 }, Weight(7), Input.Random(7));
        yield return new OpCase("LayerNormModulate", "T=17 D=384 [2,17,384]", x => LayerNormModulate(x[0], x[1], x[2]),
            Input.Random(2, 17, 384), Input.Random(2, 384), Input.Random(2, 384) with { Scale = 0.5 }) { Fp32Tolerance = 5e-5 };
        // 201 rows of 200: split in row chunks mid-sample, so the per-sample sums go through the shared-group slots.
        yield return new OpCase("LayerNormModulate", "affine [3,67,200] groups split across chunks", x => LayerNormModulate(x[0], x[1], x[2], 1e-6, x[3], x[4]),
            Input.Random(3, 67, 200), Input.Random(3, 200), Input.Random(3, 200) with { Scale = 0.5 }, Weight(200), Input.Random(200)) { Fp32Tolerance = 5e-5 };
        yield return new OpCase("LayerNormModulate", "constant shift/scale", x => LayerNormModulate(x[0], x[1], x[2]),
            Input.Random(2, 3, 9), Input.RandomConstant(2, 9), Input.RandomConstant(2, 9));

        yield return new OpCase("GatedResidual", "batch 1 T=1 [1,1,7]", x => GatedResidual(x[0], x[1], x[2]), Input.Random(1, 1, 7), Input.Random(1, 7), Input.Random(1, 1, 7));
        yield return new OpCase("GatedResidual", "[3,5,33]", x => GatedResidual(x[0], x[1], x[2]), Input.Random(3, 5, 33), Input.Random(3, 33), Input.Random(3, 5, 33));
        yield return new OpCase("GatedResidual", "[2,17,9]", x => GatedResidual(x[0], x[1], x[2]), Input.Random(2, 17, 9), Input.Random(2, 9), Input.Random(2, 17, 9));
        yield return new OpCase("GatedResidual", "rank 2 [4,13]", x => GatedResidual(x[0], x[1], x[2]), Input.Random(4, 13), Input.Random(4, 13), Input.Random(4, 13));
        yield return new OpCase("GatedResidual", "x as both operands [2,3,5]", x => GatedResidual(x[0], x[1], x[0]), Input.Random(2, 3, 5), Input.Random(2, 5));
        yield return new OpCase("GatedResidual", "[3,67,200] groups split across chunks", x => GatedResidual(x[0], x[1], x[2]),
            Input.Random(3, 67, 200), Input.Random(3, 200), Input.Random(3, 67, 200)) { Fp32Tolerance = 5e-5 };
    }

    [TestCaseSource(nameof(Cases)), Category("GradCheck")]
    public void GradCheck(OpCase c) => c.CheckGradients();

    [TestCaseSource(nameof(Cases)), Category("Equivalence")]
    public void Fp32VsFp64(OpCase c) => c.CheckFp32();

    // ---- semantics ----

    private static IBackend Cpu => OpCheck.Backend;

    [Test, Category("Equivalence")]
    public void LayerNormOfKnownRowsMatchesClosedForm()
    {
        // Row 0: mean 2.5, biased variance 1.25. Row 1: constant, so var 0 and the output is the bias (as in PyTorch).
        using var x = Tensor.FromArray(Cpu, new double[] { 1, 2, 3, 4, 7, 7, 7, 7 }, 2, 4);
        using var w = Tensor.FromArray(Cpu, new double[] { 2, 0.5, 1, -1 }, 4);
        using var b = Tensor.FromArray(Cpu, new double[] { 0.1, 0.2, 0.3, 0.4 }, 4);
        double rs = 1 / Math.Sqrt(1.25 + 1e-6);
        using var plain = LayerNorm(x);
        Assert.That(plain.ToDoubleArray(), Is.EqualTo(new[] { -1.5 * rs, -0.5 * rs, 0.5 * rs, 1.5 * rs, 0, 0, 0, 0 }).Within(1e-15));
        // torch.nn.functional.layer_norm([1, 2, 3, 4], (4,), eps=1e-6) = [-1.3416, -0.4472, 0.4472, 1.3416]
        Assert.That(plain.ToDoubleArray()[..4], Is.EqualTo(new[] { -1.3416402, -0.4472134, 0.4472134, 1.3416402 }).Within(1e-6));
        using var affine = LayerNorm(x, w, b);
        Assert.That(affine.ToDoubleArray(),
            Is.EqualTo(new[] { -3 * rs + 0.1, -0.25 * rs + 0.2, 0.5 * rs + 0.3, -1.5 * rs + 0.4, 0.1, 0.2, 0.3, 0.4 }).Within(1e-15));
        using var x32 = Tensor.FromArray(Cpu, new float[] { 1, 2, 3, 4 }, 1, 4);
        using var f32 = LayerNorm(x32, eps: 0.75);
        Assert.That(f32.ToDoubleArray(), Is.EqualTo(new[] { -1.5 / Math.Sqrt(2), -0.5 / Math.Sqrt(2), 0.5 / Math.Sqrt(2), 1.5 / Math.Sqrt(2) }).Within(1e-6));
    }

    [Test, Category("Equivalence")]
    public void LayerNormIsInvariantToShiftAndScaleOfTheRow()
    {
        // LN(a x + c) = LN(x) for a > 0 (up to eps): a large offset must not cost fp32 its accuracy (two-pass variance).
        var rng = new Random(5);
        var v = Enumerable.Range(0, 3 * 129).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
        using var x = Tensor.FromArray(Cpu, v.Select(e => (float)e).ToArray(), 3, 129);
        using var moved = Tensor.FromArray(Cpu, v.Select(e => (float)(1000 + 4 * e)).ToArray(), 3, 129);
        using var a = LayerNorm(x, eps: 1e-12);
        using var c = LayerNorm(moved, eps: 1e-12);
        OpCheck.AssertClose(c.ToDoubleArray(), a.ToDoubleArray(), 1e-3, "LN(1000 + 4x) vs LN(x)");
    }

    /// <summary>Runs f with a tape and the seed gradient r; returns the output and the gradient of every input.</summary>
    private static (double[] y, double[][] grads) Run(IBackend backend, Func<Tensor[], Tensor> f, double[][] values, int[][] shapes, int seed = 3)
    {
        var xs = values.Select((v, i) => Tensor.FromArray(backend, v, shapes[i])).ToArray();
        try
        {
            foreach (var x in xs) x.RequiresGrad = true;
            using var tape = new Tape();
            var y = f(xs);
            var rng = new Random(seed);
            var r = Enumerable.Range(0, (int)y.Count).Select(_ => 2 * rng.NextDouble() - 1).ToArray();
            tape.Backward(y, Tensor.FromArray(backend, r, y.Shape));
            return (y.ToDoubleArray(), xs.Select(x => x.Grad!.ToDoubleArray()).ToArray());
        }
        finally
        {
            foreach (var x in xs) x.Dispose();
        }
    }

    private static double[][] RandomValues(int[][] shapes, int seed)
    {
        var rng = new Random(seed);
        return shapes.Select(s => Enumerable.Range(0, (int)Shapes.Count(s)).Select(_ => 2 * rng.NextDouble() - 1).ToArray()).ToArray();
    }

    private static void AssertSame((double[] y, double[][] grads) actual, (double[] y, double[][] grads) expected, double rtol, string[] names)
    {
        OpCheck.AssertClose(actual.y, expected.y, rtol, "output");
        for (int i = 0; i < names.Length; i++) OpCheck.AssertClose(actual.grads[i], expected.grads[i], rtol, $"grad of {names[i]}");
    }

    private static Tensor PerSample(Tensor t, int n, int d) => Reshape(t, n, 1, d);

    private static Tensor OnePlus(Tensor t) => Add(Tensor.Full(t.Backend, t.DType, 1, 1), t);

    [TestCase(2, 5, 33, false)]
    [TestCase(1, 1, 7, true)]
    [TestCase(3, 67, 200, true)]
    [Category("Equivalence")]
    public void LayerNormModulateMatchesComposedOps(int n, int t, int d, bool affine)
    {
        int[][] shapes = affine ? [[n, t, d], [n, d], [n, d], [d], [d]] : [[n, t, d], [n, d], [n, d]];
        var values = RandomValues(shapes, 11);
        Func<Tensor[], Tensor> fused = affine
            ? x => LayerNormModulate(x[0], x[1], x[2], 1e-6, x[3], x[4])
            : x => LayerNormModulate(x[0], x[1], x[2]);
        Func<Tensor[], Tensor> composed = x =>
            Add(Mul(affine ? LayerNorm(x[0], x[3], x[4]) : LayerNorm(x[0]), OnePlus(PerSample(x[2], n, d))), PerSample(x[1], n, d));
        AssertSame(Run(Cpu, fused, values, shapes), Run(Cpu, composed, values, shapes), 1e-12,
            affine ? ["x", "shift", "scale", "weight", "bias"] : ["x", "shift", "scale"]);
    }

    [TestCase(1, 1, 7)]
    [TestCase(3, 5, 33)]
    [TestCase(3, 67, 200)]
    [Category("Equivalence")]
    public void GatedResidualMatchesComposedOps(int n, int t, int d)
    {
        int[][] shapes = [[n, t, d], [n, d], [n, t, d]];
        var values = RandomValues(shapes, 13);
        AssertSame(Run(Cpu, x => GatedResidual(x[0], x[1], x[2]), values, shapes),
            Run(Cpu, x => Add(x[0], Mul(PerSample(x[1], n, d), x[2])), values, shapes), 1e-13, ["x", "gate", "y"]);
    }

    [Test, Category("Equivalence")]
    public void LayerNormAffineMatchesComposedOps()
    {
        int[][] shapes = [[4, 6, 37], [37], [37]];
        var values = RandomValues(shapes, 17);
        AssertSame(Run(Cpu, x => LayerNorm(x[0], x[1], x[2]), values, shapes),
            Run(Cpu, x => Add(Mul(LayerNorm(x[0]), x[1]), x[2]), values, shapes), 1e-12, ["x", "weight", "bias"]);
    }

    [TestCase(1)]
    [TestCase(3)]
    [TestCase(7)]
    [Category("Equivalence")]
    public void ParameterAndPerSampleGradientsDoNotDependOnTheThreadCount(int samples)
    {
        // 7 threads over 600-wide rows: up to 7 row chunks, so groups are owned, split, or shared by several chunks.
        using var single = new CpuBackend(threads: 1);
        using var many = new CpuBackend(threads: 7);
        int t = 211 / samples + 1, d = 600;
        int[][] ln = [[samples, t, d], [samples, d], [samples, d], [d], [d]];
        var lnValues = RandomValues(ln, 19);
        Func<Tensor[], Tensor> fused = x => LayerNormModulate(x[0], x[1], x[2], 1e-6, x[3], x[4]);
        AssertSame(Run(many, fused, lnValues, ln), Run(single, fused, lnValues, ln), 1e-12, ["x", "shift", "scale", "weight", "bias"]);
        int[][] gr = [[samples, t, d], [samples, d], [samples, t, d]];
        var grValues = RandomValues(gr, 23);
        Func<Tensor[], Tensor> gated = x => GatedResidual(x[0], x[1], x[2]);
        AssertSame(Run(many, gated, grValues, gr), Run(single, gated, grValues, gr), 1e-12, ["x", "gate", "y"]);
    }

    [Test]
    public void ShapeErrorsNameTheOpAndBothShapes()
    {
        using var x = Tensor.Zeros(Cpu, DType.F32, 2, 3, 8);
        using var good = Tensor.Zeros(Cpu, DType.F32, 2, 8);
        using var wrong = Tensor.Zeros(Cpu, DType.F32, 2, 7);
        using var w = Tensor.Zeros(Cpu, DType.F32, 9);
        var e = Assert.Throws<ShapeMismatchException>(() => LayerNormModulate(x, wrong, good))!;
        Assert.That(e.Message, Does.Contain("layer_norm_modulate").And.Contain("[2, 7]").And.Contain("[2, 3, 8]"));
        e = Assert.Throws<ShapeMismatchException>(() => LayerNormModulate(x, good, wrong))!;
        Assert.That(e.Message, Does.Contain("scale").And.Contain("[2, 7]"));
        e = Assert.Throws<ShapeMismatchException>(() => LayerNorm(x, w))!;
        Assert.That(e.Message, Does.Contain("layer_norm").And.Contain("[9]").And.Contain("[2, 3, 8]"));
        e = Assert.Throws<ShapeMismatchException>(() => GatedResidual(x, wrong, x))!;
        Assert.That(e.Message, Does.Contain("gated_residual").And.Contain("[2, 7]").And.Contain("[2, 3, 8]"));
        using var other = Tensor.Zeros(Cpu, DType.F32, 2, 4, 8);
        e = Assert.Throws<ShapeMismatchException>(() => GatedResidual(x, good, other))!;
        Assert.That(e.Message, Does.Contain("[2, 4, 8]").And.Contain("[2, 3, 8]"));
    }

    [Test]
    public void UnrecordedForwardReturnsItsStatisticsToThePool()
    {
        // Without a tape nothing will read mean/rstd: after a warm-up the same forward must allocate nothing new.
        // A private backend, so that no other test's allocations are counted.
        using var cpu = new CpuBackend(threads: 1);
        using var x = Tensor.FromArray(cpu, new float[2 * 3 * 8], 2, 3, 8);
        using var s = Tensor.FromArray(cpu, new float[2 * 8], 2, 8);
        LayerNormModulate(x, s, s).Dispose();
        long before = cpu.AllocationCount;
        for (int i = 0; i < 3; i++) LayerNormModulate(x, s, s).Dispose();
        Assert.That(cpu.AllocationCount, Is.EqualTo(before));
    }
}
