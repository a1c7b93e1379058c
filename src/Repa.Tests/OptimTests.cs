using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Optim;
using Repa.Tests.Checks;

namespace Repa.Tests;

/// <summary>
/// AdamW + global grad-norm clip + EMA against a scalar float64 reference written from the PyTorch formulas
/// (torch.optim.AdamW, torch.nn.utils.clip_grad_norm_, REPA's update_ema), plus the sum-of-squares kernel.
/// </summary>
[TestFixture]
public class OptimTests
{
    private static readonly int[] Sizes = [1, 17, 1000];

    /// <summary>PyTorch's formulas, element by element, in float64.</summary>
    private sealed class ReferenceAdamW(double[][] parameters, double lr, double beta1, double beta2, double eps, double weightDecay, double? maxNorm)
    {
        public readonly double[][] P = parameters.Select(p => (double[])p.Clone()).ToArray();
        public readonly double[][] M = parameters.Select(p => new double[p.Length]).ToArray();
        public readonly double[][] V = parameters.Select(p => new double[p.Length]).ToArray();
        public int T;
        public double LastCoef;

        public double Step(double[][] grads)
        {
            double total = Math.Sqrt(grads.Sum(g => g.Sum(x => x * x)));
            double scale = 1;
            LastCoef = double.NaN;
            if (maxNorm is { } max)
            {
                LastCoef = max / (total + 1e-6);
                if (LastCoef < 1) scale = LastCoef;
            }
            T++;
            for (int k = 0; k < P.Length; k++)
                for (int i = 0; i < P[k].Length; i++)
                {
                    double g = grads[k][i] * scale;
                    P[k][i] *= 1 - lr * weightDecay;
                    M[k][i] = beta1 * M[k][i] + (1 - beta1) * g;
                    V[k][i] = beta2 * V[k][i] + (1 - beta2) * g * g;
                    P[k][i] -= lr * (M[k][i] / (1 - Math.Pow(beta1, T))) / (Math.Sqrt(V[k][i] / (1 - Math.Pow(beta2, T))) + eps);
                }
            return total;
        }
    }

    private static double[] Random(Random rng, int n, double scale = 1) =>
        Enumerable.Range(0, n).Select(_ => scale * (2 * rng.NextDouble() - 1)).ToArray();

    /// <summary>Values as the tensor holds them (fp32 rounds once), so the reference starts from the same numbers.</summary>
    private static double[] Rounded(DType dtype, double[] x) => dtype == DType.F64 ? x : x.Select(v => (double)(float)v).ToArray();

    private static (string, Tensor)[] MakeParameters(DType dtype, double[][] values) =>
        values.Select((v, k) => ($"p{k}", OpCheck.Make(dtype, v, v.Length).AsParameter($"p{k}"))).ToArray();

    private static void SetGrad(Tensor p, double[] values)
    {
        using var g = OpCheck.Make(p.DType, values, p.Shape);
        p.Grad ??= Tensor.Zeros(p.Backend, p.DType, p.Shape).Persistent();
        p.Backend.Copy(g.Buffer, 0, p.Grad.Buffer, 0, p.Count);
    }

    private static void AssertClose(double[] actual, double[] expected, double tol, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), what);
        for (int i = 0; i < actual.Length; i++)
            if (!(Math.Abs(actual[i] - expected[i]) <= tol * (1 + Math.Abs(expected[i]))))
                Assert.Fail($"{what}[{i}]: {actual[i]:R} vs reference {expected[i]:R} (tolerance {tol})");
    }

    private static double Tol(DType dtype) => dtype == DType.F64 ? 1e-12 : 3e-6;

    /// <summary>Runs both for <paramref name="steps"/> steps with fresh gradients (times gradScale) each step.</summary>
    private static void RunAgainstReference(DType dtype, double weightDecay, double? maxNorm, double gradScale, int steps = 5)
    {
        var rng = new Random(11);
        var init = Sizes.Select(n => Rounded(dtype, Random(rng, n))).ToArray();
        var ps = MakeParameters(dtype, init);
        using var opt = new AdamW(ps, lr: 1e-2, betas: (0.9, 0.999), eps: 1e-8, weightDecay: weightDecay, maxGradNorm: maxNorm);
        var reference = new ReferenceAdamW(init, 1e-2, 0.9, 0.999, 1e-8, weightDecay, maxNorm);
        try
        {
            for (int s = 0; s < steps; s++)
            {
                var grads = Sizes.Select(n => Rounded(dtype, Random(rng, n, gradScale))).ToArray();
                for (int k = 0; k < ps.Length; k++) SetGrad(ps[k].Item2, grads[k]);
                double norm = opt.Step();
                double refNorm = reference.Step(grads);
                Assert.That(norm, Is.EqualTo(refNorm).Within(1e-12 * refNorm), $"pre-clip norm at step {s + 1}");
                Assert.That(opt.StepCount, Is.EqualTo(s + 1));
                if (maxNorm != null)
                    Assert.That(opt.ClipScale(norm), Is.EqualTo(Math.Min(reference.LastCoef, 1)).Within(1e-12), "clip coefficient");
                for (int k = 0; k < ps.Length; k++)
                {
                    // The gradients are not modified by the clip (it goes through the kernel's scale).
                    AssertClose(ps[k].Item2.Grad!.ToDoubleArray(), grads[k], 0, $"grad {k}");
                    AssertClose(ps[k].Item2.ToDoubleArray(), reference.P[k], Tol(dtype), $"{dtype.Name()} param {k} step {s + 1}");
                }
            }
            var state = opt.StateTensors().ToDictionary(t => t.Name, t => t.Tensor);
            for (int k = 0; k < ps.Length; k++)
            {
                AssertClose(state[$"optimizer.m.p{k}"].ToDoubleArray(), reference.M[k], Tol(dtype), $"m {k}");
                AssertClose(state[$"optimizer.v.p{k}"].ToDoubleArray(), reference.V[k], Tol(dtype), $"v {k}");
            }
        }
        finally
        {
            foreach (var (_, p) in ps) p.Dispose();
        }
    }

    [TestCase(DType.F64), TestCase(DType.F32)]
    public void MatchesPyTorchFormulas(DType dtype) => RunAgainstReference(dtype, 0, null, 1);

    [TestCase(DType.F64), TestCase(DType.F32)]
    public void WeightDecayIsDecoupled(DType dtype) => RunAgainstReference(dtype, 0.1, null, 1);

    // Gradients of norm ~ 10 * sqrt(1018/3) >> 1: the coefficient engages every step.
    [TestCase(DType.F64), TestCase(DType.F32)]
    public void ClippingEngagesAboveMaxNorm(DType dtype) => RunAgainstReference(dtype, 0, 1.0, 10);

    // Gradients of norm ~ 1e-3 * 18 << 1: the coefficient is > 1 and must not scale them up.
    [TestCase(DType.F64), TestCase(DType.F32)]
    public void ClippingIdleBelowMaxNorm(DType dtype) => RunAgainstReference(dtype, 0, 1.0, 1e-3);

    [Test]
    public void ClipScaleIsPyTorchsCoefficient()
    {
        using var opt = new AdamW([], maxGradNorm: 1.0);
        Assert.That(opt.ClipScale(4.0), Is.EqualTo(1.0 / (4.0 + 1e-6)));
        Assert.That(opt.ClipScale(0.5), Is.EqualTo(1.0));
        Assert.That(opt.ClipScale(1.0), Is.EqualTo(1.0 / (1.0 + 1e-6)), "the 1e-6 makes norm == max clip slightly");
        Assert.That(double.IsNaN(opt.ClipScale(double.NaN)), "NaN propagates as torch.clamp does");
        using var noClip = new AdamW([], maxGradNorm: 0);
        Assert.That(noClip.MaxGradNorm, Is.Null);
        Assert.That(noClip.ClipScale(100), Is.EqualTo(1.0));
    }

    [Test]
    public void ParametersWithoutGradientCountAsZeroAndStayPut()
    {
        var ps = MakeParameters(DType.F64, [[1.0, 2.0], [3.0, 4.0, 5.0]]);
        using var opt = new AdamW(ps, lr: 0.1);
        SetGrad(ps[0].Item2, [3.0, 4.0]);
        Assert.That(opt.Step(), Is.EqualTo(5.0));
        Assert.That(ps[1].Item2.ToDoubleArray(), Is.EqualTo(new[] { 3.0, 4.0, 5.0 }));
        // First Adam step moves each element by lr * g / (|g| + eps) ~ lr against the gradient's sign.
        AssertClose(ps[0].Item2.ToDoubleArray(), [0.9, 1.9], 1e-6, "param 0");
        foreach (var (_, p) in ps) p.Dispose();
    }

    [TestCase(DType.F64, 1e-12), TestCase(DType.F32, 1e-5)]
    public void EmaMatchesClosedFormForConstantParameter(DType dtype, double tol)
    {
        const double decay = 0.9;
        const int k = 7;
        var rng = new Random(5);
        var init = Sizes.Select(n => Rounded(dtype, Random(rng, n))).ToArray();
        var ps = MakeParameters(dtype, init);
        using var ema = new Ema(ps, decay);
        var target = Sizes.Select(n => Rounded(dtype, Random(rng, n))).ToArray();
        for (int j = 0; j < ps.Length; j++)
        {
            AssertClose(ema[$"p{j}"].ToDoubleArray(), init[j], 0, "initial copy");
            using var t = OpCheck.Make(dtype, target[j], Sizes[j]);
            ps[j].Item2.Backend.Copy(t.Buffer, 0, ps[j].Item2.Buffer, 0, Sizes[j]);
        }
        for (int s = 0; s < k; s++) ema.Update();
        double dk = Math.Pow(decay, k);
        var named = ema.StateTensors().ToDictionary(t => t.Name, t => t.Tensor);
        for (int j = 0; j < ps.Length; j++)
        {
            var expected = init[j].Zip(target[j], (a, c) => dk * a + (1 - dk) * c).ToArray();
            AssertClose(named[$"ema.p{j}"].ToDoubleArray(), expected, tol, $"ema p{j}");
        }
        foreach (var (_, p) in ps) p.Dispose();
    }

    /// <summary>Deterministic gradient for a step: depends on the step and the current parameter (like a real loss).</summary>
    private static void SetStepGrads((string, Tensor)[] ps, int step)
    {
        foreach (var (_, p) in ps)
        {
            var x = p.ToDoubleArray();
            SetGrad(p, x.Select((v, i) => 3 * Math.Sin(v * (step + 1) + i) + v).ToArray());
        }
    }

    private static Dictionary<string, Tensor> Snapshot(IEnumerable<(string Name, Tensor Tensor)> state) =>
        state.ToDictionary(t => t.Name, t => t.Tensor.Detached());

    [TestCase(DType.F64), TestCase(DType.F32)]
    public void SaveAndRestoreContinuesBitwise(DType dtype)
    {
        var rng = new Random(21);
        var init = Sizes.Select(n => Rounded(dtype, Random(rng, n))).ToArray();
        const double lr = 1e-2, wd = 0.05, clip = 1.0;

        var straight = MakeParameters(dtype, init);
        double[][] straightEma;
        using (var opt = new AdamW(straight, lr, weightDecay: wd, maxGradNorm: clip))
        using (var ema = new Ema(straight, 0.99))
        {
            for (int s = 0; s < 5; s++)
            {
                SetStepGrads(straight, s);
                opt.Step();
                ema.Update();
            }
            straightEma = ema.StateTensors().Select(t => t.Tensor.ToDoubleArray()).ToArray();
        }

        var resumed = MakeParameters(dtype, init);
        Dictionary<string, Tensor> optState, emaState;
        int savedStep;
        using (var opt = new AdamW(resumed, lr, weightDecay: wd, maxGradNorm: clip))
        using (var ema = new Ema(resumed, 0.99))
        {
            for (int s = 0; s < 2; s++)
            {
                SetStepGrads(resumed, s);
                opt.Step();
                ema.Update();
            }
            optState = Snapshot(opt.StateTensors());
            emaState = Snapshot(ema.StateTensors());
            savedStep = opt.StepCount;
        }
        Assert.That(optState.Keys, Is.EquivalentTo(new[] { "optimizer.m.p0", "optimizer.m.p1", "optimizer.m.p2", "optimizer.v.p0", "optimizer.v.p1", "optimizer.v.p2" }));
        Assert.That(emaState.Keys, Is.EquivalentTo(new[] { "ema.p0", "ema.p1", "ema.p2" }));

        // Fresh objects (fresh zero moments, EMA copied from current params) restored from the snapshot.
        using (var opt = new AdamW(resumed, lr, weightDecay: wd, maxGradNorm: clip))
        using (var ema = new Ema(resumed, 0.99))
        {
            opt.LoadState(optState, savedStep);
            ema.LoadState(emaState);
            Assert.That(opt.StepCount, Is.EqualTo(2));
            for (int s = 2; s < 5; s++)
            {
                SetStepGrads(resumed, s);
                opt.Step();
                ema.Update();
            }
            for (int k = 0; k < Sizes.Length; k++)
                Assert.That(resumed[k].Item2.ToDoubleArray(), Is.EqualTo(straight[k].Item2.ToDoubleArray()), $"param p{k} after resume");
            Assert.That(ema.StateTensors().Select(t => t.Tensor.ToDoubleArray()).ToArray(), Is.EqualTo(straightEma), "ema after resume");
        }
        foreach (var t in optState.Values.Concat(emaState.Values)) t.Dispose();
        foreach (var (_, p) in straight.Concat(resumed)) p.Dispose();
    }

    [TestCase(DType.F64), TestCase(DType.F32)]
    public void EmaSaveAndRestoreContinuesBitwise(DType dtype)
    {
        var rng = new Random(8);
        var init = Sizes.Select(n => Rounded(dtype, Random(rng, n))).ToArray();
        double[][] Run(bool resume)
        {
            var ps = MakeParameters(dtype, init);
            var ema = new Ema(ps, 0.95);
            for (int s = 0; s < 5; s++)
            {
                if (resume && s == 2)
                {
                    var saved = Snapshot(ema.StateTensors());
                    ema.Dispose();
                    ema = new Ema(ps, 0.95);
                    ema.LoadState(saved);
                    foreach (var t in saved.Values) t.Dispose();
                }
                foreach (var (_, p) in ps)
                {
                    using var next = OpCheck.Make(dtype, p.ToDoubleArray().Select((v, i) => v + Math.Cos(s + i)).ToArray(), p.Shape);
                    p.Backend.Copy(next.Buffer, 0, p.Buffer, 0, p.Count);
                }
                ema.Update();
            }
            var result = ema.StateTensors().Select(t => t.Tensor.ToDoubleArray()).ToArray();
            ema.Dispose();
            foreach (var (_, p) in ps) p.Dispose();
            return result;
        }
        Assert.That(Run(true), Is.EqualTo(Run(false)));
    }

    [Test]
    public void LoadStateRejectsMissingOrMisshapenTensors()
    {
        var ps = MakeParameters(DType.F64, [[1.0, 2.0, 3.0]]);
        using var opt = new AdamW(ps);
        using var wrong = Tensor.Zeros(OpCheck.Backend, DType.F64, 2).Persistent();
        using var right = Tensor.Zeros(OpCheck.Backend, DType.F64, 3).Persistent();
        Assert.Throws<KeyNotFoundException>(() => opt.LoadState(new Dictionary<string, Tensor> { ["optimizer.m.p0"] = right }, 1));
        Assert.Throws<ShapeMismatchException>(() => opt.LoadState(new Dictionary<string, Tensor> { ["optimizer.m.p0"] = right, ["optimizer.v.p0"] = wrong }, 1));
        Assert.That(opt.StepCount, Is.EqualTo(0), "a rejected state leaves the optimiser untouched");
        using var ema = new Ema(ps);
        Assert.Throws<KeyNotFoundException>(() => ema.LoadState(new Dictionary<string, Tensor>()));
        foreach (var (_, p) in ps) p.Dispose();
    }

    [TestCase(DType.F64, 1), TestCase(DType.F64, 17), TestCase(DType.F64, 1000), TestCase(DType.F64, 1_000_003)]
    [TestCase(DType.F32, 1), TestCase(DType.F32, 17), TestCase(DType.F32, 1000), TestCase(DType.F32, 1_000_003)]
    public void SumOfSquaresIsAccurateAndReproducible(DType dtype, int n)
    {
        using var be = new CpuBackend(4); // several chunks for the large case, whatever the machine
        var values = Rounded(dtype, Random(new Random(n), n, 3));
        var buffer = be.Allocate(dtype, n);
        try
        {
            if (dtype == DType.F64) be.Upload<double>(values, buffer);
            else be.Upload<float>(values.Select(v => (float)v).ToArray(), buffer);
            // Compensated (Kahan) reference; squares of fp32 values are exact in float64.
            double expected = 0, carry = 0;
            foreach (double v in values)
            {
                double y = v * v - carry, t = expected + y;
                carry = (t - expected) - y;
                expected = t;
            }
            double first = be.SumOfSquares(buffer, n), second = be.SumOfSquares(buffer, n);
            Assert.That(BitConverter.DoubleToInt64Bits(second), Is.EqualTo(BitConverter.DoubleToInt64Bits(first)), "same threads, same bits");
            Assert.That(first, Is.EqualTo(expected).Within(1e-12 * expected), "float64 accumulation");
        }
        finally
        {
            buffer.Dispose();
        }
    }

    [Test]
    public void KernelsHandleSimdTailsIdentically()
    {
        // A length that leaves a scalar tail after the vector body: each element must get the same update as it
        // would in the body, so run one element alone and compare with the same element inside a longer buffer.
        var be = OpCheck.Backend;
        const int n = 37;
        var rng = new Random(4);
        double[] p0 = Random(rng, n), g = Random(rng, n);
        double[] Run(int length, int offset)
        {
            var p = Tensor.FromArray(be, p0.Skip(offset).Take(length).ToArray(), length).Persistent();
            var gr = Tensor.FromArray(be, g.Skip(offset).Take(length).ToArray(), length).Persistent();
            var m = Tensor.Zeros(be, DType.F64, length).Persistent();
            var v = Tensor.Zeros(be, DType.F64, length).Persistent();
            for (int step = 1; step <= 3; step++) be.AdamWStep(p.Buffer, gr.Buffer, m.Buffer, v.Buffer, length, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.5, step);
            var r = p.ToDoubleArray();
            foreach (var t in new[] { p, gr, m, v }) t.Dispose();
            return r;
        }
        var all = Run(n, 0);
        for (int i = 0; i < n; i++)
            Assert.That(BitConverter.DoubleToInt64Bits(Run(1, i)[0]), Is.EqualTo(BitConverter.DoubleToInt64Bits(all[i])), $"element {i}");
    }
}
