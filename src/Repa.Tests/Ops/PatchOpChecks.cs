using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Tests.Checks;

namespace Repa.Tests.Ops;

using static Repa.Autograd.Ops;

/// <summary>Patch embedding, unpatchify and the 2-D sin-cos table against their PyTorch definitions.</summary>
[TestFixture]
public class PatchOpChecks
{
    public static IEnumerable<OpCase> Cases()
    {
        yield return new OpCase("PatchEmbed", "p=2 [1,3,4,6]->D=5", x => PatchEmbed(x[0], x[1], x[2]), Input.Random(1, 3, 4, 6), Input.Random(5, 3, 2, 2), Input.Random(5));
        yield return new OpCase("PatchEmbed", "p=3 [2,1,3,9]->D=7 no bias", x => PatchEmbed(x[0], x[1]), Input.Random(2, 1, 3, 9), Input.Random(7, 1, 3, 3));
        yield return new OpCase("Unpatchify", "C=3 p=2 grid 2x3", x => Unpatchify(x[0], 3, 2, 2, 3), Input.Random(2, 6, 12));
        yield return new OpCase("Unpatchify", "C=1 p=1 grid 3x1", x => Unpatchify(x[0], 1, 1, 3, 1), Input.Random(1, 3, 1));
    }

    [TestCaseSource(nameof(Cases)), Category("GradCheck")]
    public void GradCheck(OpCase c) => c.CheckGradients();

    [TestCaseSource(nameof(Cases)), Category("Equivalence")]
    public void Fp32VsFp64(OpCase c) => c.CheckFp32();

    [Test, Category("Equivalence")]
    public void PatchEmbedIsAStridedConvolution()
    {
        const int n = 2, c = 3, h = 4, w = 6, p = 2, d = 5;
        var values = OpCheck.Materialise([Input.Random(n, c, h, w), Input.Random(d, c, p, p), Input.Random(d)], 7);
        var be = OpCheck.Backend;
        using var tape = new Tape();
        var y = PatchEmbed(Tensor.FromArray(be, values[0], n, c, h, w), Tensor.FromArray(be, values[1], d, c, p, p), Tensor.FromArray(be, values[2], d)).ToDoubleArray();
        int gw = w / p, tokens = h / p * gw;
        Assert.That(y, Has.Length.EqualTo(n * tokens * d));
        for (int b = 0; b < n; b++)
        for (int t = 0; t < tokens; t++)
        for (int o = 0; o < d; o++)
        {
            double s = values[2][o];
            for (int ch = 0; ch < c; ch++)
            for (int ky = 0; ky < p; ky++)
            for (int kx = 0; kx < p; kx++)
                s += values[1][((o * c + ch) * p + ky) * p + kx] * values[0][((b * c + ch) * h + t / gw * p + ky) * w + t % gw * p + kx];
            Assert.That(y[(b * tokens + t) * d + o], Is.EqualTo(s).Within(1e-12), $"sample {b} token {t} feature {o}");
        }
    }

    [Test, Category("Equivalence")]
    public void UnpatchifyPutsChannelFastestFeaturesInPlace()
    {
        const int n = 1, c = 2, p = 2, gh = 2, gw = 3;
        var x = Enumerable.Range(0, n * gh * gw * p * p * c).Select(v => (double)v).ToArray();
        using var tape = new Tape();
        var img = Unpatchify(Tensor.FromArray(OpCheck.Backend, x, n, gh * gw, p * p * c), c, p, gh, gw);
        Assert.That(img.Shape, Is.EqualTo(new[] { n, c, gh * p, gw * p }));
        var y = img.ToDoubleArray();
        for (int ch = 0; ch < c; ch++)
        for (int r = 0; r < gh * p; r++)
        for (int col = 0; col < gw * p; col++)
        {
            int token = r / p * gw + col / p, feature = (r % p * p + col % p) * c + ch;
            Assert.That(y[(ch * gh * p + r) * gw * p + col], Is.EqualTo(x[token * p * p * c + feature]));
        }
    }

    [Test, Category("Equivalence")]
    public void PosEmbedFollowsMaeLayout()
    {
        // dim 8: quarter 2, omega = [1, 1e-2]; token (row 1, col 2) of a 2x3 grid is t = 5.
        using var tape = new Tape();
        var table = PosEmbed2D(OpCheck.Backend, DType.F32, 8, 2, 3);
        Assert.That(table.Shape, Is.EqualTo(new[] { 1, 6, 8 }));
        var v = table.ToDoubleArray().Skip(5 * 8).Take(8).ToArray();
        double[] expected = [Math.Sin(2), Math.Sin(0.02), Math.Cos(2), Math.Cos(0.02), Math.Sin(1), Math.Sin(0.01), Math.Cos(1), Math.Cos(0.01)];
        Assert.That(v, Is.EqualTo(expected).Within(1e-6));
        Assert.Throws<ShapeMismatchException>(() => PosEmbed2D(OpCheck.Backend, DType.F32, 6, 2, 2));
    }
}
