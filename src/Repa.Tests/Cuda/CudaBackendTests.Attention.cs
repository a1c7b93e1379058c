using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cuda;
using static Repa.Autograd.Ops;

namespace Repa.Tests.Cuda;

// The attention family (kernels/attention.cu) against the CPU backend: forward output and log-sum-exp, then the
// backward accumulated into a non-zero dQkv, on shapes that leave partial tiles (tokens 1, 7, 33, 65, 130 against
// 32-row tiles; head dims 8, 16, 64, 72, 128 against 4-lane float4 chunks), default and custom scales.
public abstract partial class CudaBackendTests
{
    /// <summary>(batch, heads, tokens, head_dim, scale or null for head_dim^-0.5), small enough for the emulator.</summary>
    internal static readonly (int Batch, int Heads, int Tokens, int HeadDim, double? Scale)[] AttentionCases =
    [
        (1, 1, 1, 8, null),
        (2, 3, 7, 16, 0.3),
        (3, 2, 33, 72, null),
        (1, 2, 65, 64, null),
        (2, 1, 130, 8, 0.9),
        (1, 1, 33, 128, null),
        (1, 2, 100, 16, 3.0), // scores of tens: the running max moves across key tiles, exp(s - lse) underflows
    ];

    /// <summary>float32 throughout; bfloat16 activations with a bfloat16 log-sum-exp (what a bfloat16 graph allocates)
    /// and with a float32 one.</summary>
    [TestCase(DType.F32, DType.F32)]
    [TestCase(DType.BF16, DType.BF16)]
    [TestCase(DType.BF16, DType.F32)]
    public void AttentionMatchesTheCpu(DType dtype, DType lseType) =>
        MemberCases.Attention(Eq, dtype, lseType);

    [Test]
    public void AttentionBackwardIsDeterministic()
    {
        const int batch = 2, tokens = 70, heads = 2, headDim = 24, width = heads * headDim;
        var qkv = Eq.Random(DType.F32, batch * tokens * 3 * width);
        var output = Eq.Full(DType.F32, batch * tokens * width, 0);
        var lse = Eq.Full(DType.F32, batch * heads * tokens, 0);
        var dOutput = Eq.Random(DType.F32, batch * tokens * width);
        var first = Eq.Full(DType.F32, batch * tokens * 3 * width, 0);
        var second = Eq.Full(DType.F32, batch * tokens * 3 * width, 0);
        Cuda.AttentionForward(qkv.Candidate, output.Candidate, lse.Candidate, batch, tokens, heads, headDim, 0.2);
        Cuda.AttentionBackward(qkv.Candidate, output.Candidate, dOutput.Candidate, lse.Candidate, first.Candidate, batch, tokens, heads, headDim, 0.2);
        Cuda.AttentionBackward(qkv.Candidate, output.Candidate, dOutput.Candidate, lse.Candidate, second.Candidate, batch, tokens, heads, headDim, 0.2);
        Assert.That(BackendEquivalence.ReadBits(second.Candidate), Is.EqualTo(BackendEquivalence.ReadBits(first.Candidate)), "no atomics: the same bits every run");
    }

    [Test]
    public void AttentionRejectsWhatItCannotHold()
    {
        using var qkv = Cuda.Allocate(DType.F32, 3 * 130);
        using var output = Cuda.Allocate(DType.F32, 130);
        using var lse = Cuda.Allocate(DType.F32, 1);
        var e = Assert.Throws<NotSupportedException>(() => Cuda.AttentionForward(qkv, output, lse, 1, 1, 1, 130, 1.0))!;
        Assert.That(e.Message, Does.Contain("head_dim 130"));
        Assert.Throws<ArgumentException>(() => Cuda.AttentionForward(qkv, output, lse, 1, 2, 1, 64, 1.0), "qkv too small");
        using var lse64 = Cuda.Allocate(DType.F64, 1);
        Assert.Throws<ArgumentException>(() => Cuda.AttentionForward(qkv, output, lse64, 1, 1, 1, 8, 1.0), "float64 lse");
    }

    [Test]
    public void AutogradAttentionMatchesTheCpu()
    {
        var qkv = new float[2 * 9 * 3 * 2 * 8];
        Philox.Normal(4, 1, 0, qkv);
        var (lossCpu, gradCpu) = AttentionStep(cpu, qkv);
        var (lossCuda, gradCuda) = AttentionStep(Cuda, qkv);
        Assert.That(lossCuda, Is.EqualTo(lossCpu).Within(1e-4).Percent);
        BackendEquivalence.AssertClose(gradCpu, gradCuda, Tolerance.Close(1e-5, 1e-6), "d loss / d qkv");
    }

    /// <summary>loss = mean(gelu(attention(qkv, 2 heads of 8))) and d loss / d qkv after two steps (accumulated).</summary>
    private static (double Loss, double[] Grad) AttentionStep(IBackend backend, float[] qkv)
    {
        using var tape = new Tape();
        using var t = Tensor.FromArray(backend, qkv, 2, 9, 48).AsParameter("qkv");
        var loss = Mean(Gelu(Attention(t, 2)));
        tape.Backward(loss);
        double value = loss.Item();
        tape.Reset();
        tape.Backward(Mean(Gelu(Attention(t, 2))));
        return (value, [.. t.Grad!.ToFloatArray().Select(v => (double)v)]);
    }
}
