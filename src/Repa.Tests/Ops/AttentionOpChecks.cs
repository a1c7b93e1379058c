using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Tests.Checks;

namespace Repa.Tests.Ops;

using static Repa.Autograd.Ops;

/// <summary>
/// Fused multi-head attention: gradient checks and fp32-vs-fp64 over awkward shapes, equivalence with attention composed
/// from existing ops (timm semantics), the saved log-sum-exp, and that no T x T tensor outlives the forward.
/// </summary>
[TestFixture]
public class AttentionOpChecks
{
    /// <summary>qkv input [N, T, 3 * H * hd].</summary>
    private static Input Qkv(int n, int t, int h, int hd) => Input.Random(n, t, 3 * h * hd);

    public static IEnumerable<OpCase> Cases()
    {
        yield return new OpCase("Attention", "N1 T1 H1 hd1", x => Attention(x[0], 1), Qkv(1, 1, 1, 1));
        yield return new OpCase("Attention", "N2 T1 H2 hd7", x => Attention(x[0], 2), Qkv(2, 1, 2, 7));
        yield return new OpCase("Attention", "N1 T5 H3 hd1", x => Attention(x[0], 3), Qkv(1, 5, 3, 1));
        yield return new OpCase("Attention", "N2 T5 H2 hd4", x => Attention(x[0], 2), Qkv(2, 5, 2, 4));
        yield return new OpCase("Attention", "N1 T17 H3 hd7", x => Attention(x[0], 3), Qkv(1, 17, 3, 7));
        yield return new OpCase("Attention", "N2 T17 H1 hd64", x => Attention(x[0], 1), Qkv(2, 17, 1, 64));
        yield return new OpCase("Attention", "N1 T5 H2 hd64", x => Attention(x[0], 2), Qkv(1, 5, 2, 64));
        yield return new OpCase("Attention", "N2 T17 H2 hd4 scale 0.9", x => Attention(x[0], 2, 0.9), Qkv(2, 17, 2, 4));
        // Rows that cross every SIMD width and GEMM register block.
        yield return new OpCase("Attention", "N1 T70 H2 hd33", x => Attention(x[0], 2), Qkv(1, 70, 2, 33));
        // Two query tiles (240 + 17 rows), so dK/dV accumulate over tiles.
        yield return new OpCase("Attention", "N1 T257 H1 hd3 two query tiles", x => Attention(x[0], 1), Qkv(1, 257, 1, 3));
        // One pair: with several threads the forward splits its 64 queries into smaller tiles.
        yield return new OpCase("Attention", "N1 T64 H1 hd8 one pair", x => Attention(x[0], 1), Qkv(1, 64, 1, 8));
        // Logits around 100: exp overflows fp32 (max ~88.7) unless the row max is subtracted; the softmax is still soft
        // because the spread between keys is moderate. fp32 logits of that size carry ~1e-5 absolute error.
        yield return new OpCase("Attention", "N2 T17 H2 hd16 large logits", x => Attention(x[0], 2), Qkv(2, 17, 2, 16) with { Offset = 5 })
        {
            Fp32Tolerance = 3e-4,
        };
    }

    [TestCaseSource(nameof(Cases)), Category("GradCheck")]
    public void GradCheck(OpCase c) => c.CheckGradients();

    [TestCaseSource(nameof(Cases)), Category("Equivalence")]
    public void Fp32VsFp64(OpCase c) => c.CheckFp32();

    // ---- semantics against attention composed from existing ops ----

    /// <summary>Row softmax over the last axis, written out in the test, with its closed-form backward.</summary>
    private static Tensor ReferenceSoftmax(Tensor s)
    {
        int cols = s.Shape[^1];
        var x = s.ToDoubleArray();
        var p = new double[x.Length];
        for (int r = 0; r < x.Length / cols; r++)
        {
            double max = double.NegativeInfinity, sum = 0;
            for (int j = 0; j < cols; j++) max = Math.Max(max, x[r * cols + j]);
            for (int j = 0; j < cols; j++) sum += p[r * cols + j] = Math.Exp(x[r * cols + j] - max);
            for (int j = 0; j < cols; j++) p[r * cols + j] /= sum;
        }
        var y = Make(s.Backend, s.DType, p, s.Shape);
        return Record("reference_softmax", y, [s], dy =>
        {
            if (GradOf(s) is not { } g) return;
            var d = dy.ToDoubleArray();
            var gx = new double[d.Length];
            for (int r = 0; r < d.Length / cols; r++)
            {
                double dot = 0;
                for (int j = 0; j < cols; j++) dot += d[r * cols + j] * p[r * cols + j];
                for (int j = 0; j < cols; j++) gx[r * cols + j] = p[r * cols + j] * (d[r * cols + j] - dot);
            }
            using var t = Make(s.Backend, s.DType, gx, s.Shape);
            Accumulate(t, g);
        });
    }

    private static Tensor Make(IBackend backend, DType dtype, double[] values, int[] shape) => dtype == DType.F64
        ? Tensor.FromArray(backend, values, shape)
        : Tensor.FromArray(backend, values.Select(v => (float)v).ToArray(), shape);

    /// <summary>timm: qkv.reshape(N, T, 3, H, hd).permute(2, 0, 3, 1, 4); softmax(q k^T * scale) v; back to [N, T, D].</summary>
    private static Tensor ComposedAttention(Tensor qkv, int heads, double scale)
    {
        int n = qkv.Shape[0], t = qkv.Shape[1], hd = qkv.Shape[2] / (3 * heads);
        var parts = Split(Permute(Reshape(qkv, n, t, 3, heads, hd), 2, 0, 3, 1, 4), [1, 1, 1], 0);
        var q = Reshape(parts[0], n * heads, t, hd);
        var k = Reshape(parts[1], n * heads, t, hd);
        var v = Reshape(parts[2], n * heads, t, hd);
        var p = ReferenceSoftmax(Scale(MatMul(q, k, transB: true), scale));
        var o = MatMul(p, v);
        return Reshape(Permute(Reshape(o, n, heads, t, hd), 0, 2, 1, 3), n, t, heads * hd);
    }

    private static (double[] y, double[] grad) RunWithGrad(Func<Tensor, Tensor> f, double[] qkvValues, int[] shape, double[] seed, DType dtype)
    {
        using var qkv = Make(OpCheck.Backend, dtype, qkvValues, shape).AsParameter("qkv");
        using var tape = new Tape();
        var y = f(qkv);
        using var seedTensor = Make(OpCheck.Backend, dtype, seed, y.Shape);
        tape.Backward(y, seedTensor);
        return (y.ToDoubleArray(), qkv.Grad!.ToDoubleArray());
    }

    [Category("Equivalence")]
    [TestCase(2, 5, 3, 4, null)]
    [TestCase(1, 70, 2, 64, null)]
    [TestCase(2, 257, 2, 9, null)]
    [TestCase(2, 17, 2, 7, 0.5)]
    [TestCase(3, 1, 1, 1, null)]
    public void MatchesComposedAttention(int n, int t, int h, int hd, double? scale)
    {
        var rng = new Random(n * 1000 + t * 10 + h);
        int[] shape = [n, t, 3 * h * hd];
        var x = Enumerable.Range(0, n * t * 3 * h * hd).Select(_ => (double)(float)(2 * rng.NextDouble() - 1)).ToArray();
        var seed = Enumerable.Range(0, n * t * h * hd).Select(_ => (double)(float)(2 * rng.NextDouble() - 1)).ToArray();
        double s = scale ?? 1 / Math.Sqrt(hd);

        var (y, g) = RunWithGrad(q => Attention(q, h, scale), x, shape, seed, DType.F64);
        var (yRef, gRef) = RunWithGrad(q => ComposedAttention(q, h, s), x, shape, seed, DType.F64);
        OpCheck.AssertClose(y, yRef, 1e-12, "fp64 output");
        OpCheck.AssertClose(g, gRef, 1e-12, "fp64 grad of qkv");

        var (y32, g32) = RunWithGrad(q => Attention(q, h, scale), x, shape, seed, DType.F32);
        OpCheck.AssertClose(y32, yRef, 2e-5, "fp32 output");
        OpCheck.AssertClose(g32, gRef, 5e-5, "fp32 grad of qkv");
    }

    [Test, Category("Equivalence")]
    public void SavesTheRowLogSumExp()
    {
        const int n = 2, t = 9, h = 3, hd = 5, d = h * hd;
        var rng = new Random(7);
        var x = Enumerable.Range(0, n * t * 3 * d).Select(_ => 4 * rng.NextDouble() - 2).ToArray();
        var be = OpCheck.Backend;
        using var qkv = Tensor.FromArray(be, x, n, t, 3 * d);
        using var y = Tensor.Empty(be, DType.F64, n, t, d);
        using var lse = Tensor.Empty(be, DType.F64, n, h, t);
        double scale = 1 / Math.Sqrt(hd);
        be.AttentionForward(qkv.Buffer, y.Buffer, lse.Buffer, n, t, h, hd, scale);
        var got = lse.ToDoubleArray();
        for (int b = 0; b < n; b++)
        for (int head = 0; head < h; head++)
        for (int i = 0; i < t; i++)
        {
            double sum = 0;
            for (int j = 0; j < t; j++)
            {
                double dot = 0;
                for (int c = 0; c < hd; c++) dot += x[(b * t + i) * 3 * d + head * hd + c] * x[(b * t + j) * 3 * d + d + head * hd + c];
                sum += Math.Exp(scale * dot);
            }
            Assert.That(got[(b * h + head) * t + i], Is.EqualTo(Math.Log(sum)).Within(1e-12), $"lse[{b},{head},{i}]");
        }
    }

    [Test]
    public void QueryTilesFitTheScoreBudget()
    {
        Assert.That(CpuBackend.AttentionQueryTile(256), Is.EqualTo(256));
        Assert.That(CpuBackend.AttentionQueryTile(257), Is.EqualTo(240));
        Assert.That(CpuBackend.AttentionQueryTile(1024), Is.EqualTo(64));
        Assert.That(CpuBackend.AttentionQueryTile(5), Is.EqualTo(5));
        Assert.That(CpuBackend.AttentionQueryTile(1 << 20), Is.EqualTo(32));
        // Fewer (pair, tile) items than threads: the forward's tiles shrink (to 32 rows at most).
        Assert.That(CpuBackend.AttentionQueryTile(256, pairs: 1, threads: 4), Is.EqualTo(64));
        Assert.That(CpuBackend.AttentionQueryTile(256, pairs: 1, threads: 64), Is.EqualTo(32));
        Assert.That(CpuBackend.AttentionQueryTile(256, pairs: 48, threads: 16), Is.EqualTo(256));
    }

    [Test]
    public void KeepsNoTokenByTokenTensorOnTheTape()
    {
        // A fresh backend, so its pool holds exactly what this tape owned once the tape is reset.
        const int n = 2, t = 64, h = 3, hd = 8, d = h * hd;
        using var be = new CpuBackend(threads: 2);
        var rng = new Random(3);
        using var qkv = Tensor.FromArray(be, Enumerable.Range(0, n * t * 3 * d).Select(_ => rng.NextDouble() - 0.5).ToArray(), n, t, 3 * d).AsParameter("qkv");
        using var tape = new Tape();
        var y = Attention(qkv, h);
        Assert.That(tape.NodeCount, Is.EqualTo(1));
        var seed = Tensor.Full(be, DType.F64, 1, n, t, d);
        tape.Backward(y, seed);
        Assert.That(qkv.Grad, Is.Not.Null);
        tape.Reset();
        // Owned: the output, the log-sum-exp [N, H, T], the seed and the output's gradient. The T x T probabilities alone
        // (N*H*T*T = 24576 values) would exceed all of them together.
        long expected = 3L * n * t * d + (long)n * h * t;
        Assert.That(be.Pool.IdleBytes, Is.EqualTo(expected * sizeof(double)),
            $"the tape owned {be.Pool.IdleBytes / sizeof(double)} values; output, seed, output grad and lse are {expected}");
        Assert.That((long)n * h * t * t, Is.GreaterThan(expected));
    }

    [Test]
    public void NoGradForwardMatchesAndReturnsItsStatistics()
    {
        using var be = new CpuBackend(threads: 1);
        var rng = new Random(5);
        using var qkv = Tensor.FromArray(be, Enumerable.Range(0, 2 * 7 * 12).Select(_ => rng.NextDouble() - 0.5).ToArray(), 2, 7, 12);
        using var y = Attention(qkv, 2); // no tape: nothing will replay it, so the log-sum-exp goes straight back
        Assert.That(y.Shape, Is.EqualTo(new[] { 2, 7, 4 }));
        Assert.That(be.Pool.IdleBytes, Is.EqualTo(2L * 2 * 7 * sizeof(double)));
    }

    [Test]
    public void RejectsBadShapes()
    {
        var be = OpCheck.Backend;
        using var qkv = Tensor.Zeros(be, DType.F32, 2, 5, 20);
        var e = Assert.Throws<ShapeMismatchException>(() => Attention(qkv, 3));
        Assert.That(e!.Message, Does.Contain("attention").And.Contain("[2, 5, 20]").And.Contain("multiple of 9"));
        using var flat = Tensor.Zeros(be, DType.F32, 5, 24);
        Assert.Throws<ShapeMismatchException>(() => Attention(flat, 2));
        using var ok = Tensor.Zeros(be, DType.F32, 1, 3, 24);
        Assert.Throws<ShapeMismatchException>(() => Attention(ok, 0));
    }
}
