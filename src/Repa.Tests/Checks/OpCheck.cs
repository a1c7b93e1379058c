using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;

namespace Repa.Tests.Checks;

/// <summary>How a test input is made: random floats (differentiated unless constant) or fixed integers (never).</summary>
public sealed record Input(int[] Shape, double[]? Values, int[]? Ints, bool Differentiable)
{
    /// <summary>Uniform in [-scale, scale] (plus offset), drawn from the check's seeded generator.</summary>
    public static Input Random(params int[] shape) => new(shape, null, null, true);

    /// <summary>Given float values; differentiated.</summary>
    public static Input Of(double[] values, params int[] shape) => new(shape, values, null, true);

    /// <summary>Given float values that the check does not differentiate (targets, tables).</summary>
    public static Input Constant(double[] values, params int[] shape) => new(shape, values, null, false);

    /// <summary>Random floats that the check does not differentiate.</summary>
    public static Input RandomConstant(params int[] shape) => new(shape, null, null, false);

    /// <summary>int32 values (ids, labels).</summary>
    public static Input Int(int[] values, params int[] shape) => new(shape, null, values, false);

    public double Scale { get; init; } = 1.0;
    public double Offset { get; init; }
}

/// <summary>
/// The two checks every differentiable op passes: (1) its analytic gradient against float64 central finite
/// differences, (2) fp32 against fp64 for the output and every gradient. The scalar that is differentiated is
/// &lt;f(x), R&gt; for a fixed random R, so every output element and every input element is exercised.
/// </summary>
public static class OpCheck
{
    public static IBackend Backend { get; } = new CpuBackend();

    public static double[][] Materialise(Input[] inputs, int seed)
    {
        var rng = new Random(seed);
        return inputs.Select(i => i.Ints != null
            ? i.Ints.Select(v => (double)v).ToArray()
            : i.Values ?? Enumerable.Range(0, (int)Shapes.Count(i.Shape)).Select(_ => i.Offset + i.Scale * (2 * rng.NextDouble() - 1)).ToArray()).ToArray();
    }

    /// <summary>A float tensor of the given values in <paramref name="dtype"/> (float32 values are rounded once).</summary>
    public static Tensor Make(DType dtype, double[] values, params int[] shape) => dtype == DType.F64
        ? Tensor.FromArray(Backend, values, shape)
        : Tensor.FromArray(Backend, values.Select(v => (float)v).ToArray(), shape);

    private static Tensor[] Make(Input[] inputs, double[][] values, DType dtype)
    {
        var result = new Tensor[inputs.Length];
        for (int i = 0; i < inputs.Length; i++)
        {
            var spec = inputs[i];
            result[i] = spec.Ints != null
                ? Tensor.FromArray(Backend, spec.Ints, spec.Shape)
                : Make(dtype, values[i], spec.Shape);
            result[i].RequiresGrad = spec.Differentiable;
            result[i].Name = $"input{i}";
        }
        return result;
    }

    private static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>Runs f and its backward with seed R; returns output values and the gradient of every input.</summary>
    private static (double[] output, double[]?[] grads) Run(Func<Tensor[], Tensor> f, Input[] inputs, double[][] values, DType dtype, int seed)
    {
        var xs = Make(inputs, values, dtype);
        try
        {
            using var tape = new Tape();
            var y = f(xs);
            var output = y.ToDoubleArray();
            var rng = new Random(seed + 1);
            var r = Enumerable.Range(0, output.Length).Select(_ => 2 * rng.NextDouble() - 1).ToArray();
            var seedTensor = dtype == DType.F64 ? Tensor.FromArray(Backend, r, y.Shape) : Tensor.FromArray(Backend, r.Select(v => (float)v).ToArray(), y.Shape);
            tape.Backward(y, seedTensor);
            var grads = xs.Select(x => x.RequiresGrad ? x.Grad?.ToDoubleArray() ?? new double[x.Count] : null).ToArray();
            return (output, grads);
        }
        finally
        {
            foreach (var x in xs) x.Dispose();
        }
    }

    private static double Evaluate(Func<Tensor[], Tensor> f, Input[] inputs, double[][] values, double[] r)
    {
        var xs = Make(inputs, values, DType.F64);
        try
        {
            using var tape = new Tape();
            using var _ = Tape.NoGrad();
            return Dot(f(xs).ToDoubleArray(), r);
        }
        finally
        {
            foreach (var x in xs) x.Dispose();
        }
    }

    /// <summary>
    /// Analytic gradients against central differences in float64. At most <paramref name="maxProbes"/> elements per
    /// input are perturbed (spread evenly, always including the first and last).
    /// </summary>
    public static void Gradients(Func<Tensor[], Tensor> f, Input[] inputs, int seed = 1, double step = 1e-6,
        double rtol = 1e-5, double atol = 1e-8, int maxProbes = 64)
    {
        var values = Materialise(inputs, seed);
        var (output, grads) = Run(f, inputs, values, DType.F64, seed);
        var rng = new Random(seed + 1);
        var r = Enumerable.Range(0, output.Length).Select(_ => 2 * rng.NextDouble() - 1).ToArray();
        Assert.That(output.All(double.IsFinite), Is.True, "forward produced a non-finite value");
        int checkedInputs = 0;
        for (int i = 0; i < inputs.Length; i++)
        {
            if (!inputs[i].Differentiable || inputs[i].Ints != null) continue;
            checkedInputs++;
            var g = grads[i]!;
            int n = values[i].Length;
            int probes = Math.Min(n, maxProbes);
            for (int p = 0; p < probes; p++)
            {
                int j = probes == 1 ? 0 : (int)((long)p * (n - 1) / (probes - 1));
                double keep = values[i][j];
                values[i][j] = keep + step;
                double plus = Evaluate(f, inputs, values, r);
                values[i][j] = keep - step;
                double minus = Evaluate(f, inputs, values, r);
                values[i][j] = keep;
                double numeric = (plus - minus) / (2 * step);
                double tolerance = atol + rtol * Math.Max(Math.Abs(numeric), 1e-3 * Math.Max(1, Math.Abs(plus)));
                Assert.That(g[j], Is.EqualTo(numeric).Within(tolerance),
                    $"d/d input{i}[{j}] (shape {Shapes.Format(inputs[i].Shape)}): analytic {g[j]:R} vs numeric {numeric:R}");
            }
        }
        Assert.That(checkedInputs, Is.GreaterThan(0), "the check differentiated no input");
    }

    /// <summary>fp32 against fp64: the output and every gradient agree to <paramref name="rtol"/> of their magnitude.</summary>
    public static void Fp32MatchesFp64(Func<Tensor[], Tensor> f, Input[] inputs, int seed = 1, double rtol = 2e-5)
    {
        var values = Materialise(inputs, seed);
        // Round the inputs to fp32 first so that both runs see the same numbers.
        var rounded = values.Select(v => v.Select(x => (double)(float)x).ToArray()).ToArray();
        var (y64, g64) = Run(f, inputs, rounded, DType.F64, seed);
        var (y32, g32) = Run(f, inputs, rounded, DType.F32, seed);
        AssertClose(y32, y64, rtol, "output");
        for (int i = 0; i < inputs.Length; i++)
            if (g64[i] != null) AssertClose(g32[i]!, g64[i]!, rtol, $"grad of input{i}");
    }

    /// <summary>Every element within rtol * max(|expected|) (plus a tiny floor): the scale-aware fp32 error budget.</summary>
    public static void AssertClose(double[] actual, double[] expected, double rtol, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: length");
        double scale = expected.Length == 0 ? 0 : expected.Max(Math.Abs);
        double tol = rtol * Math.Max(scale, 1e-6);
        for (int i = 0; i < actual.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(tol), $"{what}[{i}] (scale {scale:G4})");
    }

    /// <summary>Both checks; the usual call from an op's test.</summary>
    public static void All(Func<Tensor[], Tensor> f, params Input[] inputs)
    {
        Gradients(f, inputs);
        Fp32MatchesFp64(f, inputs);
    }
}
