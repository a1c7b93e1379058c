using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Models;
using Repa.Runtime.Training;
using static Repa.Autograd.Ops;

namespace Repa.Tests.Cuda;

/// <summary>
/// bf16 mixed precision on the emulated device: the Cast op exactly, a SiT computing in bfloat16 against the same SiT
/// in float32 (outputs and every master gradient), and training steps against the CPU backend.
/// </summary>
[TestFixture, Category("EmulatedCuda"), NonParallelizable]
public class MixedPrecisionTests
{
    /// <summary>depth 2, hidden 32, 2 heads of 16, patch 2 on 8x8x1, 3 classes, qk-norm (a float32 affine beside
    /// bfloat16 activations), one projector 16 -> 8 after block 1.</summary>
    private static readonly SiTConfig Small = new()
    {
        Name = "small", InputSize = 8, PatchSize = 2, InChannels = 1, HiddenSize = 32, Depth = 2, NumHeads = 2,
        NumClasses = 3, EncoderDepth = 1, ZDims = [8], ProjectorDim = 16, QkNorm = true,
    };

    [Test]
    public void CastRoundsAndItsGradientIsTheCastGradient()
    {
        using var cuda = EmulatedCuda.Open();
        using var tape = new Tape();
        var values = new float[37];
        var weights = new float[37];
        Philox.Normal(7, 1, 0, values);
        Philox.Normal(7, 2, 0, weights);
        using var x = Tensor.FromArray(cuda, values, 37).AsParameter("x");
        var w = Tensor.FromArray(cuda, weights, 37).To(DType.BF16);
        var y = Cast(x, DType.BF16);
        Assert.That(y.DType, Is.EqualTo(DType.BF16));
        Assert.That(y.ToFloatArray(), Is.EqualTo(values.Select(v => HalfPrecision.Bf16ToFloat(HalfPrecision.FloatToBf16(v))).ToArray()), "rounded to nearest even");
        tape.Backward(Sum(Mul(y, w)));
        // d/dx sum(w * bf16(x)) = w (bfloat16 values), landing in x's float32 gradient.
        Assert.That(x.Grad!.DType, Is.EqualTo(DType.F32));
        Assert.That(x.Grad.ToFloatArray(), Is.EqualTo(w.ToFloatArray()));
        Assert.That(Cast(x, DType.F32), Is.SameAs(x), "a cast to the tensor's own dtype is the tensor");
        tape.Reset();
    }

    [Test]
    public void CastAccumulatesOnTheCpuToo()
    {
        using var cpu = new CpuBackend(1);
        using var tape = new Tape();
        using var x = Tensor.FromArray(cpu, new[] { 0.1, -2.5, 3e-9 }, 3).AsParameter("x");
        var c = Tensor.FromArray(cpu, new[] { 1.5f, -0.25f, 4f }, 3);
        tape.Backward(Sum(Add(Mul(Cast(x, DType.F32), c), Mul(Cast(x, DType.F32), c)))); // two uses: gradients add up
        Assert.That(x.Grad!.ToDoubleArray(), Is.EqualTo(new[] { 3.0, -0.5, 8.0 }));
        Assert.That(Cast(x, DType.F32).ToFloatArray(), Is.EqualTo(new[] { 0.1f, -2.5f, 3e-9f }));
        tape.Reset();
    }

    [Test]
    public void Bf16SiTTracksTheFloat32SiT()
    {
        using var cuda = EmulatedCuda.Open();
        var (outFp32, projFp32, gradsFp32) = ForwardBackward(cuda, DType.F32);
        var (outBf16, projBf16, gradsBf16) = ForwardBackward(cuda, DType.BF16);
        // bfloat16 keeps 8 significant bits (unit roundoff 2^-8); a few roundings per layer compound to ~1%.
        Assert.That(RelativeError(outBf16, outFp32), Is.LessThan(3e-2), "velocity output");
        Assert.That(RelativeError(projBf16, projFp32), Is.LessThan(3e-2), "projection");
        // Errors are relative to the gradient's norm, floored at 1e-3 of the largest one: some gradients are rounding
        // noise around zero (softmax is invariant to k_norm's bias, so its exact gradient is 0) and in bf16 the noise
        // scales with the activations, not with the tiny exact value. Measured: 0.3% to 3% on the sizeable ones.
        double largest = gradsFp32.Values.Max(Norm);
        foreach (var (name, g) in gradsFp32)
            Assert.That(Norm(Difference(gradsBf16[name], g)) / Math.Max(Norm(g), 1e-3 * largest), Is.LessThan(6e-2), $"d loss / d {name}");
    }

    /// <summary>A Small SiT with random (not zero-initialised) weights, its output and projection for a fixed batch,
    /// and the float32 master gradients of loss = sum(out * r) + sum(proj * q).</summary>
    private static (float[] Output, float[] Projection, Dictionary<string, float[]> Grads) ForwardBackward(IBackend backend, DType compute)
    {
        using var model = new SiT(backend, DType.F32, Small, 3) { ComputeDType = compute };
        ulong stream = 100;
        foreach (var (_, p) in model.NamedParameters())
        {
            var v = new float[p.Count];
            Philox.Normal(11, stream++, 0, v);
            for (int i = 0; i < v.Length; i++) v[i] *= 0.2f;
            backend.Upload<float>(v, p.Buffer);
        }
        int n = 3;
        using var tape = new Tape();
        var x = Tensor.FromArray(backend, Normal(21, n * 64), n, 1, 8, 8);
        var t = Tensor.FromArray(backend, new[] { 0.1f, 0.5f, 0.93f }, n);
        var y = Tensor.FromArray(backend, new[] { 0, 2, 3 }, n);
        var (output, projections) = model.Forward(x, t, y);
        Assert.That(output.DType, Is.EqualTo(DType.F32), "outputs come back in the parameters' dtype");
        var r = Tensor.FromArray(backend, Normal(22, (int)output.Count), output.Shape);
        var q = Tensor.FromArray(backend, Normal(23, (int)projections[0].Count), projections[0].Shape);
        tape.Backward(Add(Sum(Mul(output, r)), Sum(Mul(projections[0], q))));
        var grads = model.NamedParameters().ToDictionary(e => e.Name, e =>
        {
            Assert.That(e.Tensor.DType, Is.EqualTo(DType.F32), e.Name);
            Assert.That(e.Tensor.Grad!.DType, Is.EqualTo(DType.F32), e.Name + " gradient");
            return e.Tensor.Grad.ToFloatArray();
        });
        var result = (output.ToFloatArray(), projections[0].ToFloatArray(), grads);
        tape.Reset();
        return result;
    }

    private static float[] Normal(ulong stream, int count)
    {
        var v = new float[count];
        Philox.Normal(31, stream, 0, v);
        return v;
    }

    private static double Norm(float[] v) => Math.Sqrt(v.Sum(x => (double)x * x));

    private static float[] Difference(float[] a, float[] b) => a.Zip(b, (x, y) => x - y).ToArray();

    /// <summary>||a - b|| / ||b||.</summary>
    private static double RelativeError(float[] a, float[] b) => Norm(Difference(a, b)) / Math.Max(Norm(b), 1e-30);

    [Test]
    public void Bf16TrainingStepsTrackTheCpuBackend()
    {
        using var cuda = EmulatedCuda.Open();
        using var cpu = new CpuBackend(2);
        var onCuda = CudaTrainingTests.Train(cuda, 3, "bf16");
        var onCpu = CudaTrainingTests.Train(cpu, 3, "no");
        for (int i = 0; i < onCpu.Count; i++)
        {
            string at = $"step {i + 1}";
            TestContext.Out.WriteLine($"{at}: denoise {onCuda[i].Denoise:G6} vs {onCpu[i].Denoise:G6}, proj {onCuda[i].Proj:G6} vs {onCpu[i].Proj:G6}, grad norm {onCuda[i].GradNorm:G6} vs {onCpu[i].GradNorm:G6}");
            // Measured: denoise within 0.03%, proj within 1e-4, grad norm within 0.04% (step 1's output is exactly 0 in
            // both: adaLN-Zero); the bounds leave a few times that for bfloat16 rounding.
            Assert.That(onCuda[i].Denoise, Is.EqualTo(onCpu[i].Denoise).Within(0.2).Percent, at + " denoise");
            Assert.That(onCuda[i].Proj, Is.EqualTo(onCpu[i].Proj).Within(5e-4), at + " proj");
            Assert.That(onCuda[i].GradNorm, Is.EqualTo(onCpu[i].GradNorm).Within(0.5).Percent, at + " grad norm");
        }
    }
}

/// <summary>The --mixed-precision choices and their one-sentence refusals (no device needed).</summary>
[TestFixture]
public class MixedPrecisionChoiceTests
{
    [Test]
    public void TheCpuComputesInFloat32AndRefusesBf16()
    {
        using var cpu = new CpuBackend(1);
        Assert.That(Trainer.ComputeType(null, cpu), Is.EqualTo(DType.F32));
        Assert.That(Trainer.ComputeType("no", cpu), Is.EqualTo(DType.F32));
        var bf16 = Assert.Throws<ArgumentException>(() => Trainer.ComputeType("bf16", cpu))!;
        Assert.That(bf16.Message, Does.Contain("--mixed-precision no"));
        var fp16 = Assert.Throws<ArgumentException>(() => Trainer.ComputeType("fp16", cpu))!;
        Assert.That(fp16.Message, Does.Contain("loss scaling"));
    }

    [Test, Category("EmulatedCuda"), NonParallelizable]
    public void CudaDefaultsToBf16()
    {
        using var cuda = EmulatedCuda.Open();
        Assert.That(Trainer.ComputeType(null, cuda), Is.EqualTo(DType.BF16));
        Assert.That(Trainer.ComputeType("no", cuda), Is.EqualTo(DType.F32));
    }
}
