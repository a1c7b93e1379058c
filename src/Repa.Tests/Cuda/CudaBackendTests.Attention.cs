using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cuda;
using static Repa.Autograd.Ops;

namespace Repa.Tests.Cuda;

// The attention family (kernels/attention.cu) against the CPU backend: forward output and log-sum-exp, then the
// backward accumulated into a non-zero dQkv, on shapes that leave partial tiles (tokens 1, 7, 33, 65, 130 against
// 32-row tiles; head dims 8, 16, 64, 72, 128 against 4-lane float4 chunks), default and custom scales. The bfloat16
// forward has two kernels: the CUDA-core one (here, with the tensor-core choice turned off) and the tensor-core one
// (TensorCoreAttentionForwardMatchesTheCpu, its own shapes against 64-query blocks and 64-key tiles).
public abstract partial class CudaBackendTests
{
    /// <summary>(batch, heads, tokens, head_dim, scale or null for head_dim^-0.5), small enough for the emulator.</summary>
    private static readonly (int Batch, int Heads, int Tokens, int HeadDim, double? Scale)[] AttentionCases =
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
    public void AttentionMatchesTheCpu(DType dtype, DType lseType)
    {
        foreach (var (batch, heads, tokens, headDim, customScale) in AttentionCases)
        {
            int width = heads * headDim;
            double scale = customScale ?? 1.0 / Math.Sqrt(headDim);
            string what = $"N {batch}, H {heads}, T {tokens}, hd {headDim}, scale {scale:G3}, lse {lseType.Name()}";
            var qkv = Eq.Random(dtype, (long)batch * tokens * 3 * width);
            var output = Eq.Full(dtype, (long)batch * tokens * width, float.NaN);
            var lse = Eq.Full(lseType, (long)batch * heads * tokens, float.NaN);
            Cuda.TensorCoreAttention = false;
            try
            {
                Eq.Run((be, on) => be.AttentionForward(on(qkv), on(output), on(lse), batch, tokens, heads, headDim, scale));
            }
            finally
            {
                Cuda.TensorCoreAttention = true;
            }
            // fp32: the online softmax rescales where the CPU divides once; measured worst |d| 2e-6 (lse ~5). bf16: one rounding.
            var forward = dtype == DType.F32 ? Tolerance.Close(1e-5, 1e-5) : Tolerance.Close(1.0 / 128, 1e-3);
            Eq.AssertClose(output, forward, $"attention output, {what}");
            Eq.AssertClose(lse, lseType == DType.F32 ? Tolerance.Close(1e-5, 1e-5) : Tolerance.Close(1.0 / 128, 1e-3), $"attention lse, {what}");

            // The backward from the same (rounded) forward results on both sides, accumulating into non-zero gradients.
            Eq.StoreAsCandidate(output, lse);
            var dOutput = Eq.Random(dtype, (long)batch * tokens * width);
            var dQkv = Eq.Random(dtype, (long)batch * tokens * 3 * width);
            Eq.Run((be, on) => be.AttentionBackward(on(qkv), on(output), on(dOutput), on(lse), on(dQkv), batch, tokens, heads, headDim, scale));
            // Measured worst |d| on the emulator: fp32 6e-6 (T 130), bf16 one storage ulp of a few elements. fp32 errors
            // grow with the scores' spread (std scale sqrt(head_dim) here): exp(s - lse) carries |s| ulps of s.
            double spread = 1 + scale * Math.Sqrt(headDim);
            var backward = dtype == DType.F32 ? Tolerance.Close(1e-5 * spread, 1e-5 * spread) : Tolerance.Close(1.0 / 128, 1e-3);
            Eq.AssertClose(dQkv, backward, $"attention dQkv (accumulated), {what}");
        }
    }

    /// <summary>(batch, heads, tokens, head_dim, scale or null) for the tensor-core forward: tokens 1, 37, 64, 65, 130
    /// against 64-query blocks and 64-key tiles (16-key MMA chunks); head dims 16, 64, 72 (QK^T k-steps padded from 72 to
    /// 80), 80, 128 and the odd 24 and 8 (padded, 16-bit loads); one peaked softmax (scale 3).</summary>
    private static readonly (int Batch, int Heads, int Tokens, int HeadDim, double? Scale)[] TensorCoreAttentionCases =
    [
        (1, 1, 1, 16, null),
        (2, 3, 37, 64, null),
        (1, 2, 130, 72, null),
        (1, 2, 65, 80, 0.2),
        (1, 1, 64, 128, null),
        (2, 2, 33, 24, null),
        (1, 3, 70, 8, 3.0),
    ];

    [TestCase(DType.BF16)]
    [TestCase(DType.F32)]
    public void TensorCoreAttentionForwardMatchesTheCpu(DType lseType)
    {
        Assert.That(Cuda.TensorCoreAttention, Is.True, "bfloat16 forwards take the tensor cores by default");
        foreach (var (batch, heads, tokens, headDim, customScale) in TensorCoreAttentionCases)
        {
            int width = heads * headDim;
            double scale = customScale ?? 1.0 / Math.Sqrt(headDim);
            string what = $"tensor cores, N {batch}, H {heads}, T {tokens}, hd {headDim}, scale {scale:G3}, lse {lseType.Name()}";
            var values = new float[(long)batch * tokens * 3 * width];
            Philox.Normal(11, (ulong)(tokens * 131 + headDim), 0, values);
            var qkv = Eq.Values(DType.BF16, values);
            var output = Eq.Full(DType.BF16, (long)batch * tokens * width, float.NaN);
            var lse = Eq.Full(lseType, (long)batch * heads * tokens, float.NaN);
            Eq.Run((be, on) => be.AttentionForward(on(qkv), on(output), on(lse), batch, tokens, heads, headDim, scale));
            // Q K^T is exact products summed in fp32, as on the CPU. P is rounded to bf16 before P V (the MMA takes
            // bf16): |p~ - p| <= 2^-9 p, so |dO| <= 2^-9 sum_s p_s |v_s| / sum_s p_s <= 2^-9 max |v|; the row sums and the
            // lse use the unrounded p. On top, both sides round O to bf16, one ulp apart at most near a rounding
            // boundary (<= 2^-7 |O|).
            double maxValue = 0;
            for (long row = 0; row < (long)batch * tokens; row++)
                for (int f = 0; f < width; f++)
                    maxValue = Math.Max(maxValue, Math.Abs(HalfPrecision.Bf16ToFloat(HalfPrecision.FloatToBf16(values[row * 3 * width + 2 * width + f]))));
            Eq.AssertClose(output, Tolerance.Close(1.0 / 128, Math.Pow(2, -9) * maxValue), $"attention output, {what}");
            // lse: fp32 statistics (base 2 inside the kernel: exp2 / log2 of scores pre-multiplied by scale log2 e).
            Eq.AssertClose(lse, lseType == DType.F32 ? Tolerance.Close(1e-5, 1e-5) : Tolerance.Close(1.0 / 128, 1e-3), $"attention lse, {what}");
        }
    }

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
