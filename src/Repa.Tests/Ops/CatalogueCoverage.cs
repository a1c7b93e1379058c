using System.Reflection;
using NUnit.Framework;
using Repa.Autograd;
using Repa.Tests.Checks;

namespace Repa.Tests.Ops;

/// <summary>Every differentiable op in <see cref="Repa.Autograd.Ops"/> has at least one entry in some op catalogue.</summary>
[TestFixture]
public class CatalogueCoverage
{
    // Ops that produce constants (no input to differentiate); their values are tested on their own.
    private static readonly string[] Constants = [nameof(Repa.Autograd.Ops.PosEmbed2D), nameof(Repa.Autograd.Ops.SinCos2D)];

    // Ops whose rounding makes finite differences meaningless; their gradients are checked exactly elsewhere
    // (Cast: MixedPrecisionTests, the gradient of a cast is the cast of the gradient).
    private static readonly string[] CheckedApart = [nameof(Repa.Autograd.Ops.Cast)];

    [Test, Category("GradCheck")]
    public void EveryOpIsGradientChecked()
    {
        var catalogued = typeof(CatalogueCoverage).Assembly.GetTypes()
            .Select(t => t.GetMethod("Cases", BindingFlags.Public | BindingFlags.Static))
            .Where(m => m != null && m.ReturnType == typeof(IEnumerable<OpCase>))
            .SelectMany(m => (IEnumerable<OpCase>)m!.Invoke(null, null)!)
            .Select(c => c.Op).ToHashSet();
        var ops = typeof(Repa.Autograd.Ops).GetMethods(BindingFlags.Public | BindingFlags.Static)
            .Where(m => m.ReturnType == typeof(Tensor) || m.ReturnType == typeof(Tensor[]))
            .Select(m => m.Name).Distinct().Except(Constants).Except(CheckedApart).ToList();
        Assert.That(ops, Is.Not.Empty);
        var missing = ops.Where(o => !catalogued.Contains(o)).ToList();
        Assert.That(missing, Is.Empty, "ops without a gradient check: " + string.Join(", ", missing));
    }
}
