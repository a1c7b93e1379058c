using Repa.Autograd;

namespace Repa.Tests.Checks;

/// <summary>
/// One entry of the op catalogue: the op's name in <see cref="Ops"/>, a variant label, the function under test and its
/// inputs. Every family's fixture lists its cases and runs both checks on each (categories GradCheck and Equivalence).
/// </summary>
public sealed class OpCase(string op, string variant, Func<Tensor[], Tensor> function, params Input[] inputs)
{
    public string Op { get; } = op;
    public string Variant { get; } = variant;
    public Func<Tensor[], Tensor> Function { get; } = function;
    public Input[] Inputs { get; } = inputs;

    /// <summary>Relative tolerance of the fp32-vs-fp64 check (scaled by the largest magnitude).</summary>
    public double Fp32Tolerance { get; init; } = 2e-5;

    /// <summary>Relative tolerance of the finite-difference check.</summary>
    public double GradTolerance { get; init; } = 1e-5;

    public void CheckGradients() => OpCheck.Gradients(Function, Inputs, rtol: GradTolerance);

    public void CheckFp32() => OpCheck.Fp32MatchesFp64(Function, Inputs, rtol: Fp32Tolerance);

    public override string ToString() => $"{Op}({Variant})";
}
