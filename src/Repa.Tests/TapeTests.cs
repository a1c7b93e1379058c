using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Tests.Checks;

namespace Repa.Tests;

using static Repa.Autograd.Ops;

/// <summary>The tape, tensors and the pooled allocator: recording, accumulation, no-grad, errors, zero allocations.</summary>
[TestFixture]
public class TapeTests
{
    private static Tensor Param(IBackend be, params int[] shape)
    {
        var rng = new Random(3);
        return Tensor.FromArray(be, Enumerable.Range(0, (int)Shapes.Count(shape)).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray(), shape).AsParameter();
    }

    [Test]
    public void TrainingStepAllocatesNothingAfterTheFirst()
    {
        using var be = new CpuBackend(2);
        var w1 = Param(be, 33, 17);
        var b1 = Param(be, 33);
        var w2 = Param(be, 5, 33);
        var x = Param(be, 9, 17);
        x.RequiresGrad = false;
        var counts = new List<long>();
        using var tape = new Tape();
        for (int step = 0; step < 4; step++)
        {
            tape.Reset();
            w1.ZeroGrad(); b1.ZeroGrad(); w2.ZeroGrad();
            var h = Silu(Linear(x, w1, b1));
            var parts = Chunk(Linear(h, w2), 1, 0);
            var loss = Mean(Mul(parts[0], parts[0]));
            tape.Backward(loss);
            counts.Add(be.AllocationCount);
        }
        Assert.That(counts[0], Is.GreaterThan(0));
        Assert.That(counts.Skip(1), Is.All.EqualTo(counts[0]), $"allocations per step: {string.Join(", ", counts)}");
    }

    [Test]
    public void GradientsAccumulateUntilZeroed()
    {
        var be = OpCheck.Backend;
        var w = Param(be, 3, 4);
        var x = Param(be, 2, 4);
        double[] Once()
        {
            using var tape = new Tape();
            tape.Backward(Sum(Linear(x, w)));
            return w.Grad!.ToDoubleArray();
        }
        var first = Once();
        var second = Once();
        Assert.That(second, Is.EqualTo(first.Select(v => 2 * v).ToArray()).Within(1e-6));
        w.ZeroGrad();
        Assert.That(w.Grad!.ToDoubleArray(), Is.All.EqualTo(0.0));
        // d/dw sum(x w^T) = column sums of x, repeated for every output row.
        var xs = x.ToDoubleArray();
        var expected = Enumerable.Range(0, 12).Select(i => xs[i % 4] + xs[4 + i % 4]).ToArray();
        Assert.That(Once(), Is.EqualTo(expected).Within(1e-6));
    }

    [Test]
    public void NoGradRecordsNothing()
    {
        var be = OpCheck.Backend;
        var w = Param(be, 3, 4);
        using var tape = new Tape();
        using (Tape.NoGrad())
        {
            var y = Gelu(Linear(Param(be, 2, 4), w));
            Assert.That(y.RequiresGrad, Is.False);
            Assert.That(tape.NodeCount, Is.EqualTo(0));
            Assert.Throws<InvalidOperationException>(() => tape.Backward(Sum(y)));
        }
        Assert.That(Tape.IsRecording, Is.True);
        Gelu(Linear(Param(be, 2, 4), w));
        Assert.That(tape.NodeCount, Is.EqualTo(2));
    }

    [Test]
    public void ResetReturnsTensorsToThePoolButKeepsParameters()
    {
        using var be = new CpuBackend(1);
        var w = Param(be, 8, 8);
        var tape = new Tape();
        var y = Linear(w, w);
        tape.Backward(Sum(y));
        tape.Dispose();
        Assert.Throws<ObjectDisposedException>(() => _ = y.Buffer);
        Assert.That(w.ToFloatArray(), Has.Length.EqualTo(64));
        Assert.That(w.Grad, Is.Not.Null);
        Assert.That(be.Pool.IdleBytes, Is.GreaterThan(0));
        Assert.That(Tape.Current, Is.Null);
    }

    [Test]
    public void ReshapeSharesMemory()
    {
        var be = OpCheck.Backend;
        using var tape = new Tape();
        var x = Tensor.FromArray(be, new float[] { 1, 2, 3, 4, 5, 6 }, 2, 3);
        var v = Reshape(x, 3, 2);
        Assert.That(v.Buffer, Is.SameAs(x.Buffer));
        Assert.That(v.ToFloatArray(), Is.EqualTo(new float[] { 1, 2, 3, 4, 5, 6 }));
    }

    [Test]
    public void ShapeErrorsNameTheOpAndBothShapes()
    {
        var be = OpCheck.Backend;
        using var tape = new Tape();
        var a = Tensor.Zeros(be, DType.F32, 2, 3);
        var b = Tensor.Zeros(be, DType.F32, 4, 5);
        var add = Assert.Throws<ShapeMismatchException>(() => Add(a, b))!;
        Assert.That(add.Message, Does.Contain("add").And.Contain("[2, 3]").And.Contain("[4, 5]"));
        var linear = Assert.Throws<ShapeMismatchException>(() => Linear(a, b))!;
        Assert.That(linear.Message, Does.Contain("linear").And.Contain("[2, 3]").And.Contain("[4, 5]"));
        var matmul = Assert.Throws<ShapeMismatchException>(() => MatMul(a, b))!;
        Assert.That(matmul.Message, Does.Contain("matmul").And.Contain("[2, 3]").And.Contain("[4, 5]"));
        var mixed = Assert.Throws<ShapeMismatchException>(() => Add(a, Tensor.Zeros(be, DType.F64, 2, 3)))!;
        Assert.That(mixed.Message, Does.Contain("float32").And.Contain("float64"));
        a.RequiresGrad = true;
        Assert.Throws<ShapeMismatchException>(() => tape.Backward(Add(a, a), Tensor.Zeros(be, DType.F32, 3, 2)));
        Assert.Throws<ShapeMismatchException>(() => tape.Backward(Add(a, a)));
    }
}
