using NUnit.Framework;
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
}
