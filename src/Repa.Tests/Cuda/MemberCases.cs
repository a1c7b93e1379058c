using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;

namespace Repa.Tests.Cuda;

/// <summary>
/// Member-level equivalence test bodies that every device backend runs against the CPU backend through
/// <see cref="BackendEquivalence"/> (the CUDA fixtures in float32 and bfloat16, the ILGPU fixture in float32): the loss,
/// embedding and optimiser families. Each takes the harness and the case's parameters.
/// </summary>
internal static class MemberCases
{
    /// <summary>fp32 results of another summation order: relative, plus absolute for values that cancel.</summary>
    public static readonly Tolerance F32Sums = Tolerance.Close(2e-5, 2e-5);

    /// <summary>bf16 stores: one rounding of a slightly different fp32 value (one bf16 ulp, 2^-7 relative at most).</summary>
    public static readonly Tolerance Bf16Stores = Tolerance.Close(1.0 / 128, 2e-3);

    public static Tolerance Stored(DType dtype) => dtype == DType.F32 ? F32Sums : Bf16Stores;

    /// <summary>A shape with leading unit axes up to <paramref name="rank"/> (numpy broadcasting).</summary>
    public static int[] Pad(int[] shape, int rank) => [.. Enumerable.Repeat(1, rank - shape.Length), .. shape];

    public static void CopyAndFill(BackendEquivalence eq, DType dtype)
    {
        var source = eq.Random(dtype, 37, scale: 100);
        var target = eq.Random(dtype, 41, scale: 100);
        eq.Run((be, on) =>
        {
            be.Copy(on(source), 3, on(target), 5, 29);
            be.Fill(on(target), 0, 2, -3.75);
            be.Fill(on(target), 39, 1, 1e6 + 0.7);
        });
        eq.AssertClose(target, Tolerance.Bits, "copy + fill");
        // Overlapping ranges of one buffer move as memmove does, both ways.
        eq.Run((be, on) =>
        {
            be.Copy(on(source), 0, on(source), 4, 30);
            be.Copy(on(source), 10, on(source), 7, 25);
        });
        eq.AssertClose(source, Tolerance.Bits, "overlapping copies");
    }

    public static void BinaryOps(BackendEquivalence eq, BinaryOp op, DType dtype)
    {
        foreach (var (shape, aShape, bShape) in CudaBackendTests.BroadcastCases)
        {
            var a = eq.Random(dtype, Shapes.Count(aShape));
            var b = eq.Random(dtype, Shapes.Count(bShape));
            var y = eq.Full(dtype, Shapes.Count(shape), float.NaN);
            long[] sa = Shapes.BroadcastStrides(Pad(aShape, shape.Length), shape), sb = Shapes.BroadcastStrides(Pad(bShape, shape.Length), shape);
            eq.Run((be, on) => be.Binary(op, on(a), sa, on(b), sb, on(y), shape));
            // One IEEE operation in float32 on both sides, rounded once to the storage type.
            eq.AssertClose(y, Tolerance.Bits, $"{op} {Shapes.Format(aShape)} {Shapes.Format(bShape)} -> {Shapes.Format(shape)}");
        }
    }

    public static void Permutes(BackendEquivalence eq, DType dtype, double beta)
    {
        if (beta != 0 && dtype is DType.I32 or DType.F64) Assert.Pass("Permute accumulates in float32 and bfloat16 only (the CPU backend: float32/float64).");
        foreach (var (shape, perm) in CudaBackendTests.PermuteCases)
        {
            long n = Shapes.Count(shape);
            var x = eq.Random(dtype, n, scale: 1000);
            var y = beta == 0 ? eq.Full(dtype, n, float.NaN) : eq.Random(dtype, n);
            eq.Run((be, on) => be.Permute(on(x), on(y), shape, perm, beta));
            // beta * y and + x are rounded separately on both sides (no fused multiply-add): bit-exact.
            eq.AssertClose(y, Tolerance.Bits, $"permute {Shapes.Format(shape)} by [{string.Join(", ", perm)}], beta {beta}");
        }
    }

    public static void CopyRows(BackendEquivalence eq, DType dtype, double beta)
    {
        if (beta != 0 && dtype == DType.I32) Assert.Pass("CopyRows accumulates in float32 and bfloat16 only (the CPU backend: float32/float64).");
        // (source offset, source stride, destination offset, destination stride, rows, width)
        (long, long, long, long, int, int)[] cases = [(0, 5, 0, 5, 7, 5), (3, 11, 2, 17, 7, 5), (1, 0, 4, 9, 6, 9), (10, 3, 0, 1, 1, 1), (0, 40, 0, 40, 1, 40), (5, 4, 6, 4, 0, 3)];
        foreach (var (so, ss, d0, ds, rows, width) in cases)
        {
            var source = eq.Random(dtype, 100, scale: 100);
            var destination = beta == 0 ? eq.Full(dtype, 200, float.NaN) : eq.Random(dtype, 200);
            eq.Run((be, on) => be.CopyRows(on(source), so, ss, on(destination), d0, ds, rows, width, beta));
            eq.AssertClose(destination, Tolerance.Bits, $"copy rows ({so}, {ss}) -> ({d0}, {ds}) x {rows} x {width}, beta {beta}");
        }
    }

    public static void Attention(BackendEquivalence eq, DType dtype, DType lseType)
    {
        foreach (var (batch, heads, tokens, headDim, customScale) in CudaBackendTests.AttentionCases)
        {
            int width = heads * headDim;
            double scale = customScale ?? 1.0 / Math.Sqrt(headDim);
            string what = $"N {batch}, H {heads}, T {tokens}, hd {headDim}, scale {scale:G3}, lse {lseType.Name()}";
            var qkv = eq.Random(dtype, (long)batch * tokens * 3 * width);
            var output = eq.Full(dtype, (long)batch * tokens * width, float.NaN);
            var lse = eq.Full(lseType, (long)batch * heads * tokens, float.NaN);
            eq.Run((be, on) => be.AttentionForward(on(qkv), on(output), on(lse), batch, tokens, heads, headDim, scale));
            // fp32: the online softmax rescales where the CPU divides once; measured worst |d| 2e-6 (lse ~5). bf16: one rounding.
            var forward = dtype == DType.F32 ? Tolerance.Close(1e-5, 1e-5) : Tolerance.Close(1.0 / 128, 1e-3);
            eq.AssertClose(output, forward, $"attention output, {what}");
            eq.AssertClose(lse, lseType == DType.F32 ? Tolerance.Close(1e-5, 1e-5) : Tolerance.Close(1.0 / 128, 1e-3), $"attention lse, {what}");

            // The backward from the same (rounded) forward results on both sides, accumulating into non-zero gradients.
            eq.StoreAsCandidate(output, lse);
            var dOutput = eq.Random(dtype, (long)batch * tokens * width);
            var dQkv = eq.Random(dtype, (long)batch * tokens * 3 * width);
            eq.Run((be, on) => be.AttentionBackward(on(qkv), on(output), on(dOutput), on(lse), on(dQkv), batch, tokens, heads, headDim, scale));
            // Measured worst |d| on the emulator: fp32 6e-6 (T 130), bf16 one storage ulp of a few elements. fp32 errors
            // grow with the scores' spread (std scale sqrt(head_dim) here): exp(s - lse) carries |s| ulps of s.
            double spread = 1 + scale * Math.Sqrt(headDim);
            var backward = dtype == DType.F32 ? Tolerance.Close(1e-5 * spread, 1e-5 * spread) : Tolerance.Close(1.0 / 128, 1e-3);
            eq.AssertClose(dQkv, backward, $"attention dQkv (accumulated), {what}");
        }
    }

    public static void Mse(BackendEquivalence eq, int inner, DType dtype)
    {
        const int samples = 3;
        long n = samples * (long)inner;
        var (p, t) = (eq.Random(dtype, n), eq.Random(dtype, n));
        var loss = eq.Full(DType.F32, samples, float.NaN);
        var dLoss = eq.Values(DType.F32, 0.5f, -1.25f, 2f);
        var (dp, dt, dpOnly) = (eq.Random(dtype, n), eq.Random(dtype, n), eq.Random(dtype, n));
        eq.Run((be, on) =>
        {
            be.MseForward(on(p), on(t), on(loss), samples, inner);
            be.MseBackward(on(p), on(t), on(dLoss), on(dp), on(dt), samples, inner);
            be.MseBackward(on(p), on(t), on(dLoss), on(dpOnly), null, samples, inner);
        });
        eq.AssertClose(loss, Tolerance.Close(1e-6), "loss");
        eq.AssertClose(dp, Stored(dtype), "dprediction");
        eq.AssertClose(dt, Stored(dtype), "dtarget");
        eq.AssertClose(dpOnly, Stored(dtype), "dprediction alone");
    }

    public static void CosineAlignment(BackendEquivalence eq, int dim, DType dtype)
    {
        const int samples = 2, tokens = 5;
        const double eps = 1e-6;
        long n = (long)samples * tokens * dim;
        var z = eq.Random(dtype, n);
        var h = eq.Random(dtype, n, scale: 3);
        eq.Run((be, on) => be.Fill(on(h), 3 * dim, dim, 0)); // a zero row: its norm is clamped to eps
        var loss = eq.Full(DType.F32, samples, float.NaN);
        var dLoss = eq.Values(DType.F32, 1.5f, -0.75f);
        var (dz, dh, dzOnly) = (eq.Random(dtype, n), eq.Random(dtype, n), eq.Random(dtype, n));
        eq.Run((be, on) =>
        {
            be.CosineAlignmentForward(on(z), on(h), on(loss), samples, tokens, dim, eps);
            be.CosineAlignmentBackward(on(z), on(h), on(dLoss), on(dz), on(dh), samples, tokens, dim, eps);
            be.CosineAlignmentBackward(on(z), on(h), on(dLoss), on(dzOnly), null, samples, tokens, dim, eps); // frozen encoder
        });
        eq.AssertClose(loss, F32Sums, "loss");
        eq.AssertClose(dz, Stored(dtype), "dz");
        eq.AssertClose(dh, Stored(dtype), "dh");
        eq.AssertClose(dzOnly, Stored(dtype), "dz alone");
    }

    public static void RowL2Normalize(BackendEquivalence eq, int dim, DType dtype)
    {
        const int rows = 7;
        const double eps = 1e-6;
        long n = (long)rows * dim;
        var x = eq.Random(dtype, n, scale: 2);
        eq.Run((be, on) => be.Fill(on(x), 4 * dim, dim, 0));
        var (y, dy, dx) = (eq.Full(dtype, n, float.NaN), eq.Random(dtype, n), eq.Random(dtype, n));
        eq.Run((be, on) =>
        {
            be.RowL2NormalizeForward(on(x), on(y), rows, dim, eps);
            be.RowL2NormalizeBackward(on(x), on(dy), on(dx), rows, dim, eps);
        });
        eq.AssertClose(y, Stored(dtype), "y");
        eq.AssertClose(dx, Stored(dtype), "dx");
    }

    public static void DiagonalCrossEntropy(BackendEquivalence eq, int n, double scale, DType dtype)
    {
        const int samples = 2;
        long count = (long)samples * n * n;
        var logits = eq.Random(dtype, count, scale: 2);
        var (lse, loss) = (eq.Full(DType.F32, samples * n, float.NaN), eq.Full(DType.F32, samples, float.NaN));
        var dLoss = eq.Values(DType.F32, 0.8f, -1.1f);
        var dLogits = eq.Random(dtype, count);
        eq.Run((be, on) => be.DiagonalCrossEntropyForward(on(logits), on(lse), on(loss), samples, n, scale));
        eq.AssertClose(lse, F32Sums, "lse");
        eq.AssertClose(loss, F32Sums, "loss");
        eq.StoreAsCandidate(lse);
        eq.Run((be, on) => be.DiagonalCrossEntropyBackward(on(logits), on(lse), on(dLoss), on(dLogits), samples, n, scale));
        eq.AssertClose(dLogits, Stored(dtype), "dlogits");
    }

    public static void DiffusionVlb(BackendEquivalence eq, int inner, DType dtype)
    {
        const int samples = 4;
        int n = samples * inner;
        var random = new Random(80);
        // x0 on the 8-bit grid of [-1, 1], both ends included (the decoder's open-ended bins).
        float[] x0Values = Enumerable.Range(0, n).Select(i => i % 5 == 0 ? (i % 2 == 0 ? -1f : 1f) : random.Next(256) / 127.5f - 1).ToArray();
        float[] meanValues = x0Values.Select(v => v + (float)(random.NextDouble() - 0.5) * 0.05f).ToArray();
        var x0 = eq.Values(dtype, x0Values);
        var mean = eq.Values(dtype, meanValues);
        var trueMean = eq.Values(dtype, meanValues.Select(v => v + (float)(random.NextDouble() - 0.5) * 0.02f).ToArray());
        var v = eq.Random(dtype, n, scale: 0.5);
        // (min_log, max_log, true_log_var, decoder) per sample: KL terms at two timesteps, decoder NLL (t = 0) at two.
        var stepParams = eq.Values(DType.F32, -9.6f, -4.7f, -9.4f, 0f, -11.2f, -7.1f, -11.2f, 1f, -3.1f, -2.3f, -3.0f, 0f, -10.4f, -6.9f, -10.4f, 1f);
        var loss = eq.Full(DType.F32, samples, float.NaN);
        var dLoss = eq.Values(DType.F32, 1f, -0.5f, 2f, 0.25f);
        var dv = eq.Random(dtype, n);
        eq.Run((be, on) =>
        {
            be.DiffusionVlbForward(on(v), on(mean), on(trueMean), on(x0), on(stepParams), on(loss), samples, inner);
            be.DiffusionVlbBackward(on(v), on(mean), on(trueMean), on(x0), on(stepParams), on(dLoss), on(dv), samples, inner);
        });
        eq.AssertClose(loss, Tolerance.Close(1e-5, 1e-6), "loss");
        eq.AssertClose(dv, Stored(dtype), "dvar");
    }

    public static void EmbeddingIsBitwiseTheCpus(BackendEquivalence eq, int dim, DType dtype)
    {
        int[] idValues = [3, 0, 10, 3, 7, 7, 3, 1, 10];
        const int vocab = 11;
        int count = idValues.Length;
        var table = eq.Random(DType.F32, vocab * dim);
        var ids = eq.Ints(idValues);
        var y = eq.Full(dtype, (long)count * dim, float.NaN);
        var dy = eq.Random(dtype, (long)count * dim);
        var dTable = eq.Random(DType.F32, vocab * dim);
        eq.Run((be, on) =>
        {
            be.EmbeddingForward(on(table), on(ids), on(y), count, vocab, dim);
            be.EmbeddingBackward(on(ids), on(dy), on(dTable), count, vocab, dim);
        });
        eq.AssertClose(y, Tolerance.Bits, "rows copied (bf16: rounded once)");
        eq.AssertClose(dTable, Tolerance.Bits, "repeated ids add up in position order, as on the CPU");
    }

    public static void TimestepEmbedding(BackendEquivalence eq, int dim, DType dtype)
    {
        var t = eq.Values(DType.F32, 0f, 0.5f, 1f, 17.25f, 999f);
        const int count = 5;
        const double maxPeriod = 10000;
        var y = eq.Full(dtype, count * dim, float.NaN);
        var dy = eq.Random(dtype, count * dim);
        var dt = eq.Values(DType.F32, 0.25f, -1f, 0.5f, 2f, -0.125f);
        eq.Run((be, on) =>
        {
            be.TimestepEmbeddingForward(on(t), on(y), count, dim, maxPeriod);
            be.TimestepEmbeddingBackward(on(t), on(dy), on(dt), count, dim, maxPeriod);
        });
        // Arguments up to 999 rad: the device's and .NET's range reductions differ by a few ulp.
        eq.AssertClose(y, dtype == DType.F32 ? Tolerance.Close(0, 2e-6) : Tolerance.Close(1.0 / 128, 2e-6), "y");
        // dt sums up to 385 terms f_k (..) of either sign, |dy| ~ 1: noise relative to their magnitudes.
        eq.AssertClose(dt, Tolerance.Close(1e-5, 1e-4 * Math.Max(1, dim / 64)), "dt (accumulated)");
    }

    public static void OptimiserKernelsMatchTheCpu(BackendEquivalence eq, int n)
    {
        var param = eq.Random(DType.F32, n);
        var grad = eq.Random(DType.F32, n, scale: 5);
        var m = eq.Random(DType.F32, n, scale: 0.1);
        var v = eq.Random(DType.F32, n, scale: 0.01);
        eq.Run((be, on) => be.Binary(BinaryOp.Mul, on(v), [1], on(v), [1], on(v), [n])); // v >= 0
        var ema = eq.Random(DType.F32, n);
        double referenceSquares = eq.Reference.SumOfSquares(grad.Reference, n), candidateSquares = eq.Candidate.SumOfSquares(grad.Candidate, n);
        Assert.That(candidateSquares, Is.EqualTo(referenceSquares).Within(1e-12 * referenceSquares), "fp64 sums of exact fp32 squares");
        Assert.That(BitConverter.DoubleToInt64Bits(eq.Candidate.SumOfSquares(grad.Candidate, n)), Is.EqualTo(BitConverter.DoubleToInt64Bits(candidateSquares)), "deterministic");
        foreach (int step in new[] { 1, 7 })
            eq.Run((be, on) => be.AdamWStep(on(param), on(grad), on(m), on(v), n, 3e-4, 0.9, 0.999, 1e-8, 0.01, 0.37, step));
        eq.Run((be, on) => be.EmaUpdate(on(ema), on(param), n, 0.9999));
        eq.AssertClose(param, Tolerance.Bits, "AdamW parameters");
        eq.AssertClose(m, Tolerance.Bits, "AdamW first moments");
        eq.AssertClose(v, Tolerance.Bits, "AdamW second moments");
        eq.AssertClose(ema, Tolerance.Bits, "EMA");
    }

    // ---- sampler ----

    /// <summary>A float64 pair holding full-precision values (not float32 ones): Philox normals times <paramref name="scale"/>.</summary>
    private static BufferPair State(BackendEquivalence eq, long n, double scale, int seed)
    {
        var pair = eq.Values(DType.F64, new float[n]);
        var values = new double[n];
        Philox.Normal((ulong)seed, 77, 0, values);
        for (int i = 0; i < n; i++) values[i] *= scale;
        eq.Reference.Upload<double>(values, pair.Reference);
        eq.Candidate.Upload<double>(values, pair.Candidate);
        return pair;
    }

    /// <summary>
    /// Every sampler update against the CPU reference: Euler saving its direction, Heun in place, Euler-Maruyama (its
    /// noise within <paramref name="noiseTolerance"/>: a device's log/sincos) and the deterministic last step; everything
    /// but the noise bit for bit.
    /// </summary>
    public static void FlowStep(BackendEquivalence eq, long n, DType dtype, bool guided, ScoreDrift? drift, Tolerance noiseTolerance)
    {
        double? scale = guided ? 2.75 : null;
        var x = State(eq, n, 1.3, 1);
        var output = eq.Random(dtype, guided ? 2 * n : n, scale: 1.7);

        // Euler saving its direction into a separate destination (Heun's first half), then Heun's correction in place.
        var next = eq.Full(DType.F64, n, float.NaN);
        var direction = eq.Full(DType.F64, n, float.NaN);
        var euler = new FlowStepCoefficients(FlowUpdate.Euler, -0.0625) { GuidanceScale = scale, Drift = drift };
        eq.Run((be, on) => be.FlowStep(euler, on(x), on(output), on(direction), on(next), n));
        eq.AssertClose(next, Tolerance.Bits, "Euler step");
        eq.AssertClose(direction, Tolerance.Bits, "the saved direction");
        var corrected = eq.Random(dtype, guided ? 2 * n : n, scale: 1.1);
        eq.Run((be, on) => be.FlowStep(euler with { Update = FlowUpdate.Heun }, on(x), on(corrected), on(direction), on(x), n));
        eq.AssertClose(x, Tolerance.Bits, "Heun correction, in place");

        // Euler-Maruyama, in place, from a noise offset in the middle of a Philox block.
        var noise = new StepNoise(5, Repa.Runtime.Sampling.FlowSampler.NoiseStream(3), 4 * 1000 + 3, Math.Sqrt(2 * 0.62), Math.Sqrt(0.0625));
        var sde = new FlowStepCoefficients(FlowUpdate.EulerMaruyama, -0.0625) { GuidanceScale = scale, Drift = drift, Noise = noise };
        eq.Run((be, on) => be.FlowStep(sde, on(x), on(output), null, on(x), n));
        eq.AssertClose(x, noiseTolerance, "Euler-Maruyama step");

        // The SDE's last step and a plain ODE step: Euler in place, no direction saved, from the same state on both.
        eq.Reference.Upload<double>(BackendEquivalence.Read(x.Candidate), x.Reference);
        eq.Run((be, on) => be.FlowStep(euler with { Dt = -0.04 }, on(x), on(output), null, on(x), n));
        eq.AssertClose(x, Tolerance.Bits, "Euler step in place");
    }
}
