using System.Runtime.Intrinsics;

namespace Repa.Kernels.Cpu;

/// <summary>
/// Vectorised fp32 transcendental functions for the fused kernels. TensorPrimitives evaluates float Exp/Tanh through
/// double for full accuracy, which makes softmax and GELU compute-bound; this Cephes-style expf (Cody-Waite range
/// reduction, degree-6 polynomial, about 1 ulp) is several times faster and accurate enough for training.
/// </summary>
internal static class FastMath
{
    // Cephes expf constants: ln 2 split in two for an exact n*ln2, and the minimax polynomial of exp on [-ln2/2, ln2/2].
    private const float ExpHi = 88.3762626647949f, ExpLo = -87.3365447504f, Log2E = 1.44269504088896341f;
    private const float Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;
    private const float P0 = 1.9875691500E-4f, P1 = 1.3981999507E-3f, P2 = 8.3334519073E-3f, P3 = 4.1665795894E-2f,
        P4 = 1.6666665459E-1f, P5 = 5.0000001201E-1f;

    public static Vector512<float> Exp(Vector512<float> x)
    {
        // The clamp keeps 2^n a normal float; exponents below -87.3 (weights < 1e-38) become 1e-38 instead of 0.
        x = Vector512.Min(Vector512.Max(x, Vector512.Create(ExpLo)), Vector512.Create(ExpHi));
        var n = Vector512.Round(x * Log2E);
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), x);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(P0), r, Vector512.Create(P1));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P3));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P5));
        p = Vector512.FusedMultiplyAdd(p, r * r, r + Vector512<float>.One);
        var pow2 = Vector512.ShiftLeft(Vector512.ConvertToInt32(n) + Vector512.Create(127), 23).AsSingle();
        return p * pow2;
    }

    public static Vector256<float> Exp(Vector256<float> x)
    {
        x = Vector256.Min(Vector256.Max(x, Vector256.Create(ExpLo)), Vector256.Create(ExpHi));
        var n = Vector256.Round(x * Log2E);
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), x);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(P0), r, Vector256.Create(P1));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P5));
        p = Vector256.FusedMultiplyAdd(p, r * r, r + Vector256<float>.One);
        var pow2 = Vector256.ShiftLeft(Vector256.ConvertToInt32(n) + Vector256.Create(127), 23).AsSingle();
        return p * pow2;
    }


    /// <summary>tanh(x) = 1 - 2 / (exp(2x) + 1); saturates cleanly at +-1 through the clamp in Exp.</summary>
    public static Vector512<float> Tanh(Vector512<float> x) =>
        Vector512<float>.One - Vector512.Create(2f) / (Exp(x + x) + Vector512<float>.One);

    public static Vector256<float> Tanh(Vector256<float> x) =>
        Vector256<float>.One - Vector256.Create(2f) / (Exp(x + x) + Vector256<float>.One);

    /// <summary>sigmoid(x) = 1 / (1 + exp(-x)).</summary>
    public static Vector512<float> Sigmoid(Vector512<float> x) => Vector512<float>.One / (Vector512<float>.One + Exp(-x));

    public static Vector256<float> Sigmoid(Vector256<float> x) => Vector256<float>.One / (Vector256<float>.One + Exp(-x));
}
