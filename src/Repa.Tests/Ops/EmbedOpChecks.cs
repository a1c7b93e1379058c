using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Tests.Checks;

namespace Repa.Tests.Ops;

using static Repa.Autograd.Ops;

/// <summary>Embedding lookups and the sinusoidal timestep embedding: catalogue checks and closed-form values.</summary>
[TestFixture]
public class EmbedOpChecks
{
    public static IEnumerable<OpCase> Cases()
    {
        yield return new OpCase("Embedding", "ids [4] with repeats", x => Embedding(x[0], x[1]), Input.Random(5, 7), Input.Int([3, 0, 3, 4], 4));
        yield return new OpCase("Embedding", "ids [2,3]", x => Embedding(x[0], x[1]), Input.Random(6, 5), Input.Int([5, 1, 0, 2, 2, 5], 2, 3));
        yield return new OpCase("Embedding", "single id, D=1", x => Embedding(x[0], x[1]), Input.Random(3, 1), Input.Int([2], 1));
        yield return new OpCase("Embedding", "scalar id (rank 0)", x => Embedding(x[0], x[1]), Input.Random(4, 3), Input.Int([1]));
        yield return new OpCase("Embedding", "V=1 every id 0", x => Embedding(x[0], x[1]), Input.Random(1, 17), Input.Int([0, 0, 0], 3));
        yield return new OpCase("Embedding", "D=300 spans column blocks, null-class row", x => Embedding(x[0], x[1]),
            Input.Random(11, 300), Input.Int([10, 0, 7, 10, 3, 10, 9], 7));

        yield return new OpCase("TimestepEmbedding", "dim 1 (only the zero column)", x => TimestepEmbedding(x[0], 1), Input.Random(3));
        yield return new OpCase("TimestepEmbedding", "dim 5 odd", x => TimestepEmbedding(x[0], 5), Input.Random(3));
        yield return new OpCase("TimestepEmbedding", "dim 6 batch 1", x => TimestepEmbedding(x[0], 6), Input.Random(1));
        yield return new OpCase("TimestepEmbedding", "dim 256 (SiT) t in [0,1]", x => TimestepEmbedding(x[0]), Input.Random(7) with { Scale = 0.5, Offset = 0.5 });
        yield return new OpCase("TimestepEmbedding", "dim 33 max period 100", x => TimestepEmbedding(x[0], 33, 100), Input.Random(2));
        // DiT feeds integer-scale timesteps; fp32 arguments near 1000 carry ~1e-4 absolute error in cos/sin.
        yield return new OpCase("TimestepEmbedding", "dim 17 DiT-scale t ~ 500", x => TimestepEmbedding(x[0], 17), Input.Random(3) with { Scale = 499, Offset = 500 })
        { Fp32Tolerance = 5e-4 };
        yield return new OpCase("TimestepEmbedding", "t [2,3] dim 8", x => TimestepEmbedding(x[0], 8), Input.Random(2, 3));
    }

    [TestCaseSource(nameof(Cases)), Category("GradCheck")]
    public void GradCheck(OpCase c) => c.CheckGradients();

    [TestCaseSource(nameof(Cases)), Category("Equivalence")]
    public void Fp32VsFp64(OpCase c) => c.CheckFp32();

    private static IBackend Be => OpCheck.Backend;

    private static Tensor Make(DType dtype, double[] values, params int[] shape) => OpCheck.Make(dtype, values, shape);

    [Test, Category("Equivalence")]
    public void EmbeddingPicksRowsAndScatterAdds([Values(DType.F32, DType.F64)] DType dtype)
    {
        using var tape = new Tape();
        var table = Make(dtype, [0, 1, 10, 11, 20, 21, 30, 31], 4, 2);
        table.RequiresGrad = true;
        var ids = Tensor.FromArray(Be, new[] { 3, 0, 3, 1 }, 2, 2);
        var y = Embedding(table, ids);
        Assert.That(y.Shape, Is.EqualTo(new[] { 2, 2, 2 }));
        Assert.That(y.ToDoubleArray(), Is.EqualTo(new double[] { 30, 31, 0, 1, 30, 31, 10, 11 }));
        tape.Backward(y, Make(dtype, [1, 2, 3, 4, 5, 6, 7, 8], 2, 2, 2));
        // Row 3 appears twice: its gradient is the sum of both upstream rows; row 2 is never used.
        Assert.That(table.Grad!.ToDoubleArray(), Is.EqualTo(new double[] { 3, 4, 7, 8, 0, 0, 1 + 5, 2 + 6 }));
    }

    [Test]
    public void EmbeddingRejectsOutOfRangeIds([Values(7, -1)] int bad)
    {
        using var tape = new Tape();
        var table = Make(DType.F32, new double[10], 5, 2);
        var ids = Tensor.FromArray(Be, new[] { 0, 4, bad }, 3);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => Embedding(table, ids))!;
        Assert.That(ex.Message, Does.Contain($"id {bad}").And.Contain("5 rows"));
    }

    [Test]
    public void EmbeddingRejectsFloatIds()
    {
        using var tape = new Tape();
        var table = Make(DType.F32, new double[10], 5, 2);
        var ids = Make(DType.F32, [0, 1], 2);
        Assert.Throws<ShapeMismatchException>(() => Embedding(table, ids));
    }

    [Test, Category("Equivalence")]
    public void TimestepEmbeddingAtZeroIsOnesThenZeros([Values(DType.F32, DType.F64)] DType dtype, [Values(6, 7, 256)] int dim)
    {
        using var tape = new Tape();
        var y = TimestepEmbedding(Make(dtype, [0, 0], 2), dim).ToDoubleArray();
        int half = dim / 2;
        var row = Enumerable.Repeat(1.0, half).Concat(Enumerable.Repeat(0.0, dim - half)).ToArray();
        Assert.That(y, Is.EqualTo(row.Concat(row).ToArray()));
    }

    [Test, Category("Equivalence")]
    public void TimestepEmbeddingMatchesHandComputation([Values(DType.F32, DType.F64)] DType dtype)
    {
        using var tape = new Tape();
        // dim 6: half 3, freqs = 10000^(-k/3) = 1, 0.0464159, 0.00215443; output [cos(t f) | sin(t f)].
        double[] f = [1.0, Math.Pow(10000, -1.0 / 3), Math.Pow(10000, -2.0 / 3)];
        const double t = 0.5;
        var expected = f.Select(v => Math.Cos(t * v)).Concat(f.Select(v => Math.Sin(t * v))).ToArray();
        var y = TimestepEmbedding(Make(dtype, [t], 1), 6).ToDoubleArray();
        Assert.That(y, Is.EqualTo(expected).Within(1e-6));
        Assert.That(y[0], Is.EqualTo(0.8775825618903728).Within(1e-6)); // cos(0.5)
        Assert.That(y[3], Is.EqualTo(0.479425538604203).Within(1e-6)); // sin(0.5)
    }

    [Test]
    public void TimestepEmbeddingShapes()
    {
        using var tape = new Tape();
        Assert.That(TimestepEmbedding(Make(DType.F32, [0.1, 0.2, 0.3], 3)).Shape, Is.EqualTo(new[] { 3, 256 }));
        Assert.That(TimestepEmbedding(Make(DType.F32, [0.1], 1), 5).Shape, Is.EqualTo(new[] { 1, 5 }));
        Assert.Throws<ShapeMismatchException>(() => TimestepEmbedding(Make(DType.F32, [0.1], 1), 0));
    }
}
