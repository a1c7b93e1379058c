using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Tests.Checks;

namespace Repa.Tests.Ops;

using static Repa.Autograd.Ops;

/// <summary>Elementwise, shape, reduction and linear ops: gradient checks and fp32-vs-fp64 on awkward shapes.</summary>
[TestFixture]
public class CoreOpChecks
{
    public static IEnumerable<OpCase> Cases()
    {
        yield return new OpCase("Add", "same shape 3x17", x => Add(x[0], x[1]), Input.Random(3, 17), Input.Random(3, 17));
        yield return new OpCase("Add", "bias broadcast [5,33]+[33]", x => Add(x[0], x[1]), Input.Random(5, 33), Input.Random(33));
        yield return new OpCase("Add", "per-sample [2,7,9]+[2,1,9]", x => Add(x[0], x[1]), Input.Random(2, 7, 9), Input.Random(2, 1, 9));
        yield return new OpCase("Add", "both broadcast [3,1]+[1,5]", x => Add(x[0], x[1]), Input.Random(3, 1), Input.Random(1, 5));
        yield return new OpCase("Sub", "broadcast [4,1,3]-[5,3]", x => Sub(x[0], x[1]), Input.Random(4, 1, 3), Input.Random(5, 3));
        yield return new OpCase("Mul", "same shape batch 1 [1,19]", x => Mul(x[0], x[1]), Input.Random(1, 19), Input.Random(1, 19));
        yield return new OpCase("Mul", "broadcast [2,3,17]*[2,1,17]", x => Mul(x[0], x[1]), Input.Random(2, 3, 17), Input.Random(2, 1, 17));
        yield return new OpCase("Mul", "scalar-like [6,5]*[1]", x => Mul(x[0], x[1]), Input.Random(6, 5), Input.Random(1));
        yield return new OpCase("Scale", "[3,7] * -1.7", x => Scale(x[0], -1.7), Input.Random(3, 7));
        yield return new OpCase("Gelu", "[3,37] wide range", x => Gelu(x[0]), Input.Random(3, 37) with { Scale = 4 });
        yield return new OpCase("Gelu", "[2,41] saturating tails", x => Gelu(x[0]), Input.Random(2, 41) with { Scale = 30 });
        yield return new OpCase("Silu", "[2,41] saturating tails", x => Silu(x[0]), Input.Random(2, 41) with { Scale = 100 });
        yield return new OpCase("Silu", "[1,4099] crosses a chunk", x => Silu(x[0]), Input.Random(1, 4099) with { Scale = 6 });
        yield return new OpCase("Reshape", "[2,3,5]->[6,5]", x => Mul(Reshape(x[0], 6, -1), x[1]), Input.Random(2, 3, 5), Input.Random(6, 5));
        yield return new OpCase("Permute", "[2,3,4,5] (2,0,3,1)", x => Permute(x[0], 2, 0, 3, 1), Input.Random(2, 3, 4, 5));
        yield return new OpCase("Permute", "patchify [1,3,2,2,3,2]", x => Permute(x[0], 0, 2, 4, 1, 3, 5), Input.Random(1, 3, 2, 2, 3, 2));
        yield return new OpCase("Transpose", "[3,1,7] (0,2)", x => Transpose(x[0], 0, 2), Input.Random(3, 1, 7));
        yield return new OpCase("Split", "[3,10] axis 1 into 3,7", x => { var p = Split(x[0], [3, 7], 1); return Concat([Scale(p[1], 2), p[0]], 1); }, Input.Random(3, 10));
        yield return new OpCase("Chunk", "[2,6,5] axis 1 into 3", x => { var p = Chunk(x[0], 3, 1); return Add(Mul(p[0], p[1]), p[2]); }, Input.Random(2, 6, 5));
        yield return new OpCase("Concat", "axis 0 [2,3]+[1,3]", x => Concat([x[0], x[1]], 0), Input.Random(2, 3), Input.Random(1, 3));
        yield return new OpCase("Concat", "axis -1 [2,3,1]+[2,3,4]", x => Concat([x[0], x[1]], -1), Input.Random(2, 3, 1), Input.Random(2, 3, 4));
        yield return new OpCase("Sum", "all [3,5,7]", x => Sum(x[0]), Input.Random(3, 5, 7));
        yield return new OpCase("Sum", "axis 1 [3,5,7]", x => Sum(x[0], [1]), Input.Random(3, 5, 7));
        yield return new OpCase("Sum", "axes 0,2 keepdim [3,5,7]", x => Sum(x[0], [0, 2], keepDim: true), Input.Random(3, 5, 7));
        yield return new OpCase("Mean", "last axis [4,33]", x => Mean(x[0], [-1]), Input.Random(4, 33));
        yield return new OpCase("Mean", "all [1,1,9]", x => Mean(x[0]), Input.Random(1, 1, 9));
        yield return new OpCase("Linear", "bias [7,13]x[5,13]^T", x => Linear(x[0], x[1], x[2]), Input.Random(7, 13), Input.Random(5, 13), Input.Random(5));
        yield return new OpCase("Linear", "no bias, 3-D input [2,3,9]", x => Linear(x[0], x[1]), Input.Random(2, 3, 9), Input.Random(17, 9));
        yield return new OpCase("Linear", "batch 1 [1,65]x[33,65]", x => Linear(x[0], x[1], x[2]), Input.Random(1, 65), Input.Random(33, 65), Input.Random(33));
        yield return new OpCase("Linear", "GELU epilogue [2,5,9]x[17,9]", x => Linear(x[0], x[1], x[2], Activation.Gelu), Input.Random(2, 5, 9), Input.Random(17, 9), Input.Random(17));
        yield return new OpCase("Linear", "SiLU epilogue, no bias [6,13]x[7,13]", x => Linear(x[0], x[1], null, Activation.Silu), Input.Random(6, 13) with { Scale = 3 }, Input.Random(7, 13));
        foreach (var (ta, tb) in new[] { (false, false), (false, true), (true, false), (true, true) })
        {
            int m = 5, k = 7, n = 3;
            int[] aShape = ta ? [k, m] : [m, k], bShape = tb ? [n, k] : [k, n];
            yield return new OpCase("MatMul", $"2-D ta={ta} tb={tb}", x => MatMul(x[0], x[1], ta, tb), Input.Random(aShape), Input.Random(bShape));
            yield return new OpCase("MatMul", $"batched 3 ta={ta} tb={tb}", x => MatMul(x[0], x[1], ta, tb), Input.Random([3, .. aShape]), Input.Random([3, .. bShape]));
            yield return new OpCase("MatMul", $"broadcast A ta={ta} tb={tb}", x => MatMul(x[0], x[1], ta, tb), Input.Random(aShape), Input.Random([2, .. bShape]));
            yield return new OpCase("MatMul", $"broadcast B ta={ta} tb={tb}", x => MatMul(x[0], x[1], ta, tb), Input.Random([2, .. aShape]), Input.Random(bShape));
        }
    }

    [TestCaseSource(nameof(Cases)), Category("GradCheck")]
    public void GradCheck(OpCase c) => c.CheckGradients();

    [TestCaseSource(nameof(Cases)), Category("Equivalence")]
    public void Fp32VsFp64(OpCase c) => c.CheckFp32();
}
