using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cuda;
using static Repa.Autograd.Ops;

namespace Repa.Tests.Cuda;

// The attention family (kernels/attention.cu) against the CPU backend: forward output and log-sum-exp, then the
// backward accumulated into a non-zero dQkv, on shapes that leave partial tiles (tokens 1, 7, 33, 65, 130 against
// 32-row tiles; head dims 8, 16, 64, 72, 128 against 4-lane float4 chunks), default and custom scales. The bfloat16
// kernels come in two kinds: CUDA cores (AttentionMatchesTheCpu, with the tensor-core choice turned off) and tensor
// cores (TensorCoreAttention*MatchesTheCpu, their own shapes against 64-row blocks, 64-key forward tiles and 32-row
// backward tiles, with error bounds for the bf16 roundings of P and dS).
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
    public void AttentionMatchesTheCpu(DType dtype, DType lseType)
    {
        Cuda.TensorCoreAttention = false; // the CUDA-core kernels here; the tensor-core ones below
        try
        {
            MemberCases.Attention(Eq, dtype, lseType);
        }
        finally
        {
            Cuda.TensorCoreAttention = true;
        }
    }

    /// <summary>(batch, heads, tokens, head_dim, scale or null) for the tensor-core forward: tokens 1, 20, 33, 37, 64, 65,
    /// 70, 130 against 64-query blocks and 64-key tiles (16-key MMA chunks); head dims 16, 64, 72 (QK^T k-steps padded
    /// from 72 to 80), 80, 128, 24 and 8 (padded to 32 and 16) and the odd 9 (16-bit loads); one peaked softmax
    /// (scale 3).</summary>
    private static readonly (int Batch, int Heads, int Tokens, int HeadDim, double? Scale)[] TensorCoreAttentionCases =
    [
        (1, 1, 1, 16, null),
        (2, 3, 37, 64, null),
        (1, 2, 130, 72, null),
        (1, 2, 65, 80, 0.2),
        (1, 1, 64, 128, null),
        (2, 2, 33, 24, null),
        (1, 3, 70, 8, 3.0),
        (1, 2, 20, 9, null),
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
            // bf16; 8 significant bits, unit roundoff 2^-8): |p~ - p| <= 2^-8 p, so |dO| <= 2^-8 sum_s p_s |v_s| /
            // sum_s p_s <= 2^-8 max |v|; the row sums and the lse use the unrounded p. On top, both sides round O to bf16, one ulp apart at most near a rounding
            // boundary (<= 2^-7 |O|).
            double maxValue = 0;
            for (long row = 0; row < (long)batch * tokens; row++)
                for (int f = 0; f < width; f++)
                    maxValue = Math.Max(maxValue, Math.Abs(HalfPrecision.Bf16ToFloat(HalfPrecision.FloatToBf16(values[row * 3 * width + 2 * width + f]))));
            Eq.AssertClose(output, Tolerance.Close(1.0 / 128, Math.Pow(2, -8) * maxValue), $"attention output, {what}");
            // lse: fp32 statistics (base 2 inside the kernel: exp2 / log2 of scores pre-multiplied by scale log2 e).
            Eq.AssertClose(lse, lseType == DType.F32 ? Tolerance.Close(1e-5, 1e-5) : Tolerance.Close(1.0 / 128, 1e-3), $"attention lse, {what}");
        }
    }

    /// <summary>The forward's cases the tensor-core backward takes (head_dim <= 80), and one larger head dim (96:
    /// tensor-core forward, CUDA-core backward).</summary>
    private static readonly (int Batch, int Heads, int Tokens, int HeadDim, double? Scale)[] TensorCoreBackwardCases =
        [.. TensorCoreAttentionCases.Where(c => c.HeadDim <= CudaBackend.AttentionMmaBackwardMaxHeadDim), (1, 1, 40, 96, null)];

    [TestCase(DType.BF16)]
    [TestCase(DType.F32)]
    public void TensorCoreAttentionBackwardMatchesTheCpu(DType lseType)
    {
        foreach (var (batch, heads, tokens, headDim, customScale) in TensorCoreBackwardCases)
        {
            int width = heads * headDim;
            double scale = customScale ?? 1.0 / Math.Sqrt(headDim);
            string what = $"tensor cores, N {batch}, H {heads}, T {tokens}, hd {headDim}, scale {scale:G3}, lse {lseType.Name()}";
            var qkv = Eq.Random(DType.BF16, (long)batch * tokens * 3 * width);
            var output = Eq.Full(DType.BF16, (long)batch * tokens * width, float.NaN);
            var lse = Eq.Full(lseType, (long)batch * heads * tokens, float.NaN);
            Eq.Run((be, on) => be.AttentionForward(on(qkv), on(output), on(lse), batch, tokens, heads, headDim, scale));
            // The backward from the same forward results on both sides: the candidate's (its O differs from the CPU's
            // by the forward's own bf16 rounding of P, which would reach dS through Di = dO . O).
            foreach (var pair in new[] { output, lse })
                cpu.Upload<float>(BackendEquivalence.Read(pair.Candidate).Select(v => (float)v).ToArray(), pair.Reference);
            var dOutput = Eq.Random(DType.BF16, (long)batch * tokens * width);
            var dQkv = Eq.Random(DType.BF16, (long)batch * tokens * 3 * width);
            var before = BackendEquivalence.Read(dQkv.Reference);
            Eq.Run((be, on) => be.AttentionBackward(on(qkv), on(output), on(dOutput), on(lse), on(dQkv), batch, tokens, heads, headDim, scale));

            // The MMAs take P (for dV += P^T dO) and dS (for dQ += scale dS K, dK += scale dS^T Q) rounded to bf16,
            // |x~ - x| <= 2^-8 |x|, so per element |d dQ_td| <= 2^-8 scale sum_s |dS_ts| |k_sd|, |d dK_sd| <= 2^-8 scale
            // sum_t |dS_ts| |q_td|, |d dV_sd| <= 2^-8 sum_t P_ts |dO_td| (computed here in float64 from the same inputs);
            // on top, both sides round dQkv to bf16 (one ulp apart near a boundary, <= 2^-7 |ref|) and fp32 noise (1e-3).
            double[] x = BackendEquivalence.Read(qkv.Reference), o = BackendEquivalence.Read(output.Reference);
            double[] g = BackendEquivalence.Read(dOutput.Reference), l = BackendEquivalence.Read(lse.Reference);
            var bound = new double[x.Length];
            double u = Math.Pow(2, -8); // bf16's unit roundoff
            for (int n = 0; n < batch; n++)
                for (int h = 0; h < heads; h++)
                {
                    long Q(int t, int d) => ((long)n * tokens + t) * 3 * width + (long)h * headDim + d;
                    long O(int t, int d) => ((long)n * tokens + t) * width + (long)h * headDim + d;
                    for (int t = 0; t < tokens; t++)
                    {
                        double di = 0;
                        for (int d = 0; d < headDim; d++) di += g[O(t, d)] * o[O(t, d)];
                        double lseT = l[((long)n * heads + h) * tokens + t];
                        for (int s = 0; s < tokens; s++)
                        {
                            double dot = 0, dp = 0;
                            for (int d = 0; d < headDim; d++)
                            {
                                dot += x[Q(t, d)] * x[Q(s, d) + width];
                                dp += g[O(t, d)] * x[Q(s, d) + 2 * width];
                            }
                            double p = Math.Exp(scale * dot - lseT), ds = Math.Abs(p * (dp - di));
                            for (int d = 0; d < headDim; d++)
                            {
                                bound[Q(t, d)] += u * scale * ds * Math.Abs(x[Q(s, d) + width]);
                                bound[Q(s, d) + width] += u * scale * ds * Math.Abs(x[Q(t, d)]);
                                bound[Q(s, d) + 2 * width] += u * p * Math.Abs(g[O(t, d)]);
                            }
                        }
                    }
                }
            var expected = BackendEquivalence.Read(dQkv.Reference).Select(v => BackendEquivalence.Round(DType.BF16, v)).ToArray();
            var actual = BackendEquivalence.Read(dQkv.Candidate);
            int failures = 0;
            double worstShare = 0;
            var bad = new List<string>();
            for (int i = 0; i < expected.Length; i++)
            {
                double allowed = 1e-3 + Math.Abs(expected[i]) / 128 + bound[i], error = Math.Abs(actual[i] - expected[i]);
                worstShare = Math.Max(worstShare, error / allowed);
                if (error <= allowed) continue;
                if (failures++ < 5) bad.Add($"[{i}] expected {expected[i]:R} (before {before[i]:R}), got {actual[i]:R}, allowed {allowed:G3}");
            }
            Assert.That(failures, Is.Zero, $"attention dQkv (accumulated), {what}: {failures} of {expected.Length} beyond the bound: {string.Join("; ", bad)}");
            TestContext.Out.WriteLine($"{what}: worst |d| / allowed {worstShare:G3}");
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
