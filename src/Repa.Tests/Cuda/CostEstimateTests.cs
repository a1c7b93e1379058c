using NUnit.Framework;
using Repa.Kernels;
using Repa.Kernels.Profiling;
using Repa.Runtime.Models;
using Repa.Runtime.Training;

namespace Repa.Tests;

/// <summary>
/// The counting backend's per-op costs against hand-computed values, the whole-step trace against the trainer's FLOP
/// formula, and docs/notes/cuda-estimate.md against what `estimate` makes today.
/// </summary>
[TestFixture]
public sealed class CostEstimateTests
{
    private static StepEstimate? estimate;

    /// <summary>One SiT-XL/2 + REPA step at batch 256 on the counting backend, shared by the whole-step tests (~5 s).</summary>
    private static StepEstimate Estimate => estimate ??= StepEstimate.Run();

    [Test]
    public void GemmCountsTwoMnkFlopsAndEachOperandOnce()
    {
        using var backend = new CostBackend();
        var a = backend.Allocate(DType.F32, 64 * 32);
        var b = backend.Allocate(DType.BF16, 3 * 32 * 16);
        var c = backend.Allocate(DType.F32, 3 * 64 * 16);
        // C = A B^T over 3 batch items with A broadcast (stride 0): A read once, B three times, C read and written (beta 1).
        backend.Gemm(false, true, 64, 16, 32, 1, a, 0, 32, 0, b, 0, 32, 32 * 16, 1, c, 0, 16, 64 * 16, batch: 3);
        var call = backend.Calls.Single();
        Assert.That(call.Family, Is.EqualTo("gemm"));
        Assert.That(call.Shape, Is.EqualTo("NT 64x16x32 x3"));
        Assert.That(call.Flops, Is.EqualTo(2.0 * 64 * 16 * 32 * 3));
        Assert.That(call.Bytes, Is.EqualTo(64 * 32 * 4 + 3 * 32 * 16 * 2 + 2 * 3 * 64 * 16 * 4));
        Assert.That(call.Launches, Is.EqualTo(1));

        backend.Clear();
        backend.Gemm(false, false, 64, 16, 32, 1, a, 0, 32, 0, b, 0, 16, 0, 0, c, 0, 16, 0);
        Assert.That(backend.Calls.Single().Bytes, Is.EqualTo(64 * 32 * 4 + 32 * 16 * 2 + 64 * 16 * 4), "beta = 0 never reads C");
    }

    /// <summary>The Linear members as the CUDA backend runs them: one cuBLASLt GEMM with the bias (and GELU, whose input
    /// is written as the aux matrix) in its epilogue; SiLU is composed (GEMM, bias add, activation); the weight gradient
    /// is one GEMM whose epilogue writes the bias gradient to scratch, then an axpby into dbias.</summary>
    [Test]
    public void LinearMembersCountTheFusedEpiloguesOrTheComposition()
    {
        using var backend = new CostBackend();
        const int rows = 8, inF = 4, outF = 6;
        var x = backend.Allocate(DType.BF16, rows * inF);
        var w = backend.Allocate(DType.BF16, outF * inF);
        var bias = backend.Allocate(DType.BF16, outF);
        var y = backend.Allocate(DType.BF16, rows * outF);
        var pre = backend.Allocate(DType.BF16, rows * outF);
        backend.LinearForward(x, w, bias, y, Activation.Gelu, pre, rows, inF, outF);
        var fused = backend.Calls.Single();
        Assert.That((fused.Kind, fused.Launches, fused.InputType), Is.EqualTo(("LinearForward (bias + GELU epilogue)", 1, (DType?)DType.BF16)));
        Assert.That(fused.Flops, Is.EqualTo(2.0 * rows * inF * outF));
        Assert.That(fused.Bytes, Is.EqualTo((rows * inF + outF * inF + outF + 2 * rows * outF) * 2), "x, W, bias read; y and the aux written");

        backend.Clear();
        backend.LinearForward(x, w, bias, y, Activation.Silu, pre, rows, inF, outF);
        Assert.That(backend.Calls.Select(c => c.Kind), Is.EqualTo(new[] { "Gemm", "Add (rows)", "SiluForward" }));

        backend.Clear();
        var dy = backend.Allocate(DType.BF16, rows * outF);
        var dw = backend.Allocate(DType.F32, outF * inF);
        var db = backend.Allocate(DType.F32, outF);
        backend.LinearWeightBackward(dy, x, dw, db, rows, inF, outF);
        var (gemm, axpby) = (backend.Calls[0], backend.Calls[1]);
        Assert.That(backend.Calls, Has.Count.EqualTo(2));
        Assert.That(gemm.Flops, Is.EqualTo(2.0 * rows * inF * outF));
        Assert.That(gemm.Bytes, Is.EqualTo((rows * inF + rows * outF) * 2 + (2 * outF * inF + outF) * 4), "x, dy read; dW read and written; the bias gradient to scratch");
        Assert.That(axpby.Bytes, Is.EqualTo(3 * outF * 4));
    }

    [Test]
    public void LayerNormCountsTheCudaBackendsPassesAndScratch()
    {
        using var backend = new CostBackend();
        const int rows = 8, dim = 16, group = 4;
        var x = backend.Allocate(DType.BF16, rows * dim);
        var y = backend.Allocate(DType.BF16, rows * dim);
        var shift = backend.Allocate(DType.BF16, rows / group * dim);
        var scale = backend.Allocate(DType.BF16, rows / group * dim);
        var weight = backend.Allocate(DType.F32, dim);
        var bias = backend.Allocate(DType.F32, dim);
        var mean = backend.Allocate(DType.F32, rows);
        var rstd = backend.Allocate(DType.F32, rows);
        backend.LayerNormForward(x, null, null, shift, scale, y, mean, rstd, rows, dim, group, 1e-6);
        var forward = backend.Calls.Single();
        Assert.That(forward.Bytes, Is.EqualTo((rows * dim + 2 * (rows / group * dim) + rows * dim) * 2 + 2 * rows * 4));
        Assert.That(forward.Flops, Is.EqualTo(8.0 * rows * dim));

        // Affine backward without modulation: the input kernel, the parameter kernel into [chunks, dim] fp32 partials
        // (dim 16 is one column tile, so min(8 x 132, rows) = 8 chunks of one row), then one column sum per gradient.
        backend.Clear();
        var dy = backend.Allocate(DType.BF16, rows * dim);
        var dx = backend.Allocate(DType.BF16, rows * dim);
        var dweight = backend.Allocate(DType.F32, dim);
        var dbias = backend.Allocate(DType.F32, dim);
        backend.LayerNormBackward(x, weight, bias, null, mean, rstd, dy, dx, dweight, dbias, null, null, rows, dim, 1);
        var calls = backend.Calls;
        Assert.That(calls.Select(c => c.Kind), Is.EqualTo(new[] { "LayerNormBackward input", "LayerNormBackward params", "LayerNormBackward fold", "LayerNormBackward fold" }));
        Assert.That(calls.Sum(c => c.Launches), Is.EqualTo(4));
        long n = rows * dim;
        Assert.That(calls[0].Bytes, Is.EqualTo((n + n + 2 * n) * 2 + dim * 4 + 2 * rows * 4), "x, dy read; dx read and written; weight; mean, rstd");
        Assert.That(calls[1].Bytes, Is.EqualTo((n + n) * 2 + dim * 4 + 2 * rows * 4 + 2 * (8 * dim) * 4), "x, dy, weight, mean, rstd read; two fp32 partials written");
        Assert.That(calls[2].Bytes, Is.EqualTo(8 * dim * 4 + 2 * dim * 4), "the partials read, dweight read and written");
    }

    [Test]
    public void AttentionCountsCudaCoreFlopsAndTheBackwardsRecompute()
    {
        const int batch = 2, tokens = 8, heads = 2, headDim = 4, width = heads * headDim;
        var (forward, backward) = TraceAttention(DType.F32, batch, tokens, heads, headDim);
        double scores = (double)batch * heads * tokens * tokens * headDim;
        Assert.That(forward.Unit, Is.EqualTo(ComputeUnit.CudaCores));
        Assert.That(forward.Flops, Is.EqualTo(4 * scores), "QK^T and PV: 2 T^2 hd each per (n, h)");
        Assert.That(forward.Bytes, Is.EqualTo((batch * tokens * 3 * width + batch * tokens * width + batch * heads * tokens) * 4));
        Assert.That(backward.Flops, Is.EqualTo(14 * scores), "S and dP in both passes, dV, dQ, dK");
        Assert.That(backward.Launches, Is.EqualTo(2));
        long rows3 = batch * tokens * 3 * width, rows1 = batch * tokens * width, stats = batch * heads * tokens;
        // qkv, dO, lse read by both passes; O once; Di written then read; dQkv read and written.
        Assert.That(backward.Bytes, Is.EqualTo((2 * rows3 + rows1 + 2 * rows1 + 2 * stats + 2 * stats + 2 * rows3) * 4));
    }

    /// <summary>The forward and backward calls of one attention of the given shape, all buffers of one dtype.</summary>
    private static (KernelCall Forward, KernelCall Backward) TraceAttention(DType dtype, int batch, int tokens, int heads, int headDim)
    {
        using var backend = new CostBackend();
        int width = heads * headDim;
        var qkv = backend.Allocate(dtype, batch * tokens * 3 * width);
        var output = backend.Allocate(dtype, batch * tokens * width);
        var lse = backend.Allocate(dtype, batch * heads * tokens);
        var dOutput = backend.Allocate(dtype, batch * tokens * width);
        var dQkv = backend.Allocate(dtype, batch * tokens * 3 * width);
        backend.AttentionForward(qkv, output, lse, batch, tokens, heads, headDim, 0.5);
        backend.AttentionBackward(qkv, output, dOutput, lse, dQkv, batch, tokens, heads, headDim, 0.5);
        return (backend.Calls[0], backend.Calls[1]);
    }

    /// <summary>bf16 attention at SiT's head_dim 72 takes the tensor-core kernels (CudaBackend's rule): executed FLOPs
    /// with the inner size padded to 80 and n to 72, priced at 25% (forward) / 20% (backward) of 800 TFLOP/s; bf16 at
    /// head_dim 96 keeps the tensor-core forward but the CUDA-core backward.</summary>
    [Test]
    public void Bf16AttentionRunsOnTensorCoresWithPaddedHeads()
    {
        const int batch = 2, tokens = 64, heads = 3, headDim = 72;
        var (forward, backward) = TraceAttention(DType.BF16, batch, tokens, heads, headDim);
        double scores = (double)batch * heads * tokens * tokens; // 24576
        Assert.That((forward.Unit, backward.Unit), Is.EqualTo((ComputeUnit.TensorCores, ComputeUnit.TensorCores)));
        Assert.That(forward.Flops, Is.EqualTo(2 * scores * (80 + 72)), "S with k = 80, PV with n = 72");
        Assert.That(backward.Flops, Is.EqualTo(2 * scores * (4 * 80 + 3 * 72)), "S and dP in both passes at k = 80; dQ, dV, dK at n = 72");
        Assert.That(forward.Flops, Is.EqualTo(7_471_104));
        var model = new StepCostModel();
        // 7.47 MFLOP at 200 TFLOP/s = 37.4 ns, under the 3 µs floor; scaled up it is the FLOP term that counts.
        Assert.That(model.Seconds(forward), Is.EqualTo(3e-6));
        var big = forward with { Flops = 2e12, Bytes = 0, Launches = 1 };
        Assert.That(model.Seconds(big), Is.EqualTo(2e12 / (0.25 * 800e12)).Within(1e-9).Percent);
        Assert.That(model.Seconds(big with { Kind = backward.Kind }), Is.EqualTo(2e12 / (0.20 * 800e12)).Within(1e-9).Percent);

        const int wide = 96;
        var (forward96, backward96) = TraceAttention(DType.BF16, batch, tokens, heads, wide);
        Assert.That((forward96.Unit, backward96.Unit), Is.EqualTo((ComputeUnit.TensorCores, ComputeUnit.CudaCores)),
            $"the tensor-core backward stops at head_dim {Repa.Kernels.Cuda.CudaBackend.AttentionMmaBackwardMaxHeadDim}");
        Assert.That(backward96.Flops, Is.EqualTo(14 * scores * wide));
    }

    /// <summary>The device-scalar optimiser members cost what kernels/optim.cu does: AdamW reads grad and the four
    /// float64 scalars and updates param, m and v; the squared norm is two kernels and no read-back.</summary>
    [Test]
    public void DeviceAdamWAndSquaredNormCostTheirKernels()
    {
        using var backend = new CostBackend();
        const long n = 3000;
        var (param, grad, m, v) = (backend.Allocate(DType.F32, n), backend.Allocate(DType.F32, n), backend.Allocate(DType.F32, n), backend.Allocate(DType.F32, n));
        var scalars = backend.Allocate(DType.F64, 4);
        backend.SumOfSquares(grad, n, scalars, accumulate: true);
        backend.AdamWStep(param, grad, m, v, n, 0.9, 0.999, 1e-8, 1.0, scalars);
        backend.AccumulateScalar(backend.Allocate(DType.F32, 1), scalars, 2, 1);
        var (norm, adamw, accumulate) = (backend.Calls[0], backend.Calls[1], backend.Calls[2]);
        Assert.That((norm.Launches, norm.Synchronizations), Is.EqualTo((2, 0)));
        // x read, 3 float64 partials written and read, the total read and written.
        Assert.That(norm.Bytes, Is.EqualTo(n * 4 + 2 * 3 * 8 + 2 * 8));
        Assert.That((adamw.Launches, adamw.Synchronizations), Is.EqualTo((1, 0)));
        Assert.That(adamw.Bytes, Is.EqualTo((2 * n + n + 2 * n + 2 * n) * 4 + 4 * 8), "param, m, v read and written; grad read; the scalars");
        Assert.That((accumulate.Launches, accumulate.Bytes), Is.EqualTo((1, 4 + 2 * 8)));
        // 84 KB at 2.4 TB/s is 35 ns: the launch floor decides, 3 µs eagerly.
        Assert.That(new StepCostModel().Seconds(adamw), Is.EqualTo(3e-6));
    }

    /// <summary>A capture records nothing in the trace and refuses host transfers; each launch records one
    /// cuGraphLaunch (the eager floor) and the body's calls as graph nodes, priced at the node floor.</summary>
    [Test]
    public void CaptureRecordsTheBodyOnceAndEveryLaunchReplaysIt()
    {
        using var backend = new CostBackend();
        var x = backend.Allocate(DType.F32, 8);
        int runs = 0;
        using var graph = backend.Capture(() =>
        {
            runs++;
            backend.Fill(x, 0, 8, 1);
            backend.EmaUpdate(x, x, 8, 0.5);
        });
        Assert.That((runs, backend.Calls.Count), Is.EqualTo((1, 0)), "the body's host code runs once, at capture, and records into the graph");
        graph.Launch();
        graph.Launch();
        Assert.That(runs, Is.EqualTo(1));
        Assert.That(backend.Calls.Select(c => (c.Kind, c.InGraph)), Is.EqualTo(new[]
        {
            ("cuGraphLaunch", false), ("Fill", true), ("EmaUpdate", true),
            ("cuGraphLaunch", false), ("Fill", true), ("EmaUpdate", true),
        }));
        var model = new StepCostModel();
        Assert.That(backend.Calls.Sum(model.Seconds), Is.EqualTo(2 * (3e-6 + 2 * 1e-6)).Within(1e-9).Percent, "nodes at 1 µs, the launch at 3 µs");
        Assert.That(backend.Calls.Sum(c => model.Seconds(c, eager: true)), Is.EqualTo(2 * 3 * 3e-6).Within(1e-9).Percent);
        Assert.Throws<InvalidOperationException>(() => backend.Capture(() => backend.Upload<float>([1f], x)));
        Assert.Throws<InvalidOperationException>(() => backend.Capture(() => backend.SumOfSquares(x, 8)));
        Assert.That(backend.Calls, Has.Count.EqualTo(6), "a refused capture leaves nothing behind");
    }

    [Test]
    public void FlowStepReadsTheStateAndBothGuidedHalves()
    {
        using var backend = new CostBackend();
        const int n = 10;
        var x = backend.Allocate(DType.F64, n);
        var output = backend.Allocate(DType.BF16, 2 * n);
        var direction = backend.Allocate(DType.F64, n);
        backend.FlowStep(new FlowStepCoefficients(FlowUpdate.Euler, 0.1) { GuidanceScale = 1.5 }, x, output, direction, x, n);
        var call = backend.Calls.Single();
        Assert.That((call.Family, call.Launches), Is.EqualTo(("sampler", 1)));
        Assert.That(call.Bytes, Is.EqualTo(n * 8 + 2 * n * 2 + n * 8 + n * 8), "x and both halves read, the direction and the destination written");
    }

    [Test]
    public void DownloadsAreZerosAndNothingIsComputed()
    {
        using var backend = new CostBackend();
        var x = backend.Allocate(DType.F32, 5);
        backend.Upload<float>([1, 2, 3, 4, 5], x);
        var back = new float[] { 9, 9, 9, 9, 9 };
        backend.Download<float>(x, back);
        Assert.That(back, Is.All.EqualTo(0f));
        Assert.That(backend.SumOfSquares(x, 5), Is.EqualTo(0));
        Assert.That(backend.Calls.Select(c => (c.Family, c.Kind)), Is.EqualTo(new[] { ("host", "upload"), ("host", "download"), ("optim", "SumOfSquares") }));
        Assert.That(backend.Calls[0].Bytes, Is.EqualTo(20));
    }

    /// <summary>
    /// The GEMM FLOPs of the traced step are Trainer.FlopsPerImage x batch less exactly two things: attention, which
    /// the formula counts (3 x 4 T^2 D per block) but which runs in its own kernel, and the input gradients of the
    /// patch embedding and of the timestep MLP's first layer, which the formula's "3 x forward" includes but autograd
    /// skips (their inputs need no gradient). So the GEMMs are ~96.5% of the model FLOPs for SiT-XL/2 at 256 tokens,
    /// in either precision, with or without the graph.
    /// </summary>
    [Test]
    public void StepGemmFlopsMatchTheTrainersFormula()
    {
        var e = Estimate;
        var config = SiTConfig.Preset("SiT-XL/2");
        double d = config.HiddenSize, t = config.Tokens, batch = e.Options.Batch;
        double attention = 3 * config.Depth * 4 * t * t * d;
        double skippedInputGradients = 2 * t * d * (config.PatchSize * config.PatchSize * e.Channels) + 2 * SiTConfig.FrequencyEmbeddingSize * d;
        double expected = (e.FlopsPerImage - attention - skippedInputGradients) * batch;
        Assert.That(e.Traces.Select(t => (t.Name, t.Graph)), Is.EqualTo(new[] { ("bf16", true), ("bf16 eager", false), ("fp32", true) }));
        foreach (var trace in e.Traces)
        {
            Assert.That(StepEstimate.GemmFlops(trace), Is.EqualTo(expected).Within(1e-12).Percent, trace.Name);
            Assert.That(StepEstimate.GemmFlops(trace) / (e.FlopsPerImage * batch), Is.InRange(0.96, 0.97), trace.Name);
            // Attention as executed: CUDA cores (fp32) 4 forward + 14 backward against the formula's 12 (3 x 4) per T^2 D;
            // tensor cores (bf16, head_dim 72) 2 (80 + 72) + 2 (4 x 80 + 3 x 72) = 1376 per T^2 head against 12 x 72 = 864.
            double executed = trace.ActivationType == DType.BF16 ? 1376.0 / 864 : 18.0 / 12;
            Assert.That(StepEstimate.AttentionFlops(trace), Is.EqualTo(attention * batch * executed).Within(1e-12).Percent, trace.Name);
            int parameters = trace.Calls.Count(c => c.Kind == "EmaUpdate");
            Assert.That(trace.Calls.Count(c => c.Kind == "AdamWStep (device scalars)"), Is.EqualTo(parameters), "one AdamW and one EMA update per parameter");
            Assert.That(trace.Calls.Count(c => c.Kind == "SumOfSquares (device)"), Is.EqualTo(parameters), "a squared norm per gradient, summed on the device");
            // The read-backs: the four figures and the squared norm after the step, plus, eagerly, the embedding's bad-id flag.
            Assert.That(trace.Calls.Sum(c => c.Synchronizations), Is.EqualTo(trace.Graph ? 2 : 3), trace.Name);
            var device = trace.Calls.Where(c => c.Unit != ComputeUnit.Host && c.Family != "graph").ToList();
            // Outside the graph only the encoder targets' copy into the step's input tensor (before the launch).
            Assert.That(device.Where(c => c.InGraph != trace.Graph).Select(c => c.Family + " " + c.Kind).Distinct(),
                Is.EqualTo(trace.Graph ? new[] { "memory Copy" } : []), trace.Name);
        }
    }

    /// <summary>The trainer's default on a device that computes in bf16 (as CUDA does) is bf16 mixed precision: every
    /// GEMM takes bf16 operands, the weights are cast on use, and the step moves much less than the fp32 one.</summary>
    [Test]
    public void TheDefaultTraceIsBf16MixedPrecisionOnTensorCores()
    {
        var (bf16, fp32) = (Estimate.Default, Estimate.Traces[2]);
        Assert.That((bf16.ActivationType, bf16.Setting, fp32.ActivationType, fp32.Setting), Is.EqualTo((DType.BF16, "auto", DType.F32, "no")));
        Assert.That(bf16.Calls.Where(c => c.Unit == ComputeUnit.Gemm).Select(c => c.InputType).Distinct(), Is.EqualTo(new DType?[] { DType.BF16 }));
        Assert.That(fp32.Calls.Where(c => c.Unit == ComputeUnit.Gemm).Select(c => c.InputType).Distinct(), Is.EqualTo(new DType?[] { DType.F32 }));
        Assert.That(bf16.Calls.Count(c => c.Kind == "Convert"), Is.GreaterThan(fp32.Calls.Count(c => c.Kind == "Convert")));
        long bytes16 = bf16.Calls.Sum(c => c.Bytes), bytes32 = fp32.Calls.Sum(c => c.Bytes);
        Assert.That(bytes16, Is.LessThan(0.7 * bytes32));
        Assert.That(Estimate.StepSeconds(bf16), Is.LessThan(Estimate.StepSeconds(fp32) / 3), "fp32 GEMMs run on CUDA cores");
        Assert.That(Estimate.Mfu(bf16), Is.InRange(0.0, 1.0));
        var eager = Estimate.Traces[1];
        Assert.That(Estimate.StepSeconds(eager), Is.GreaterThan(Estimate.StepSeconds(bf16)), "the graph's nodes cost less than launches from C#");
        Assert.That(bf16.Calls.Where(c => c.Family == "attention").Select(c => c.Unit).Distinct(), Is.EqualTo(new[] { ComputeUnit.TensorCores }));
        Assert.That(fp32.Calls.Where(c => c.Family == "attention").Select(c => c.Unit).Distinct(), Is.EqualTo(new[] { ComputeUnit.CudaCores }));
    }

    [Test]
    public void EstimateTableIsCurrent()
    {
        string table = Estimate.Markdown();
        string path = Path.Combine(NvrtcTests.RepositoryRoot(), StepEstimate.TablePath);
        Assert.That(File.Exists(path), Is.True, $"{StepEstimate.TablePath} is missing; generate it with `{StepEstimate.Command}`");
        Assert.That(File.ReadAllText(path), Is.EqualTo(table), $"{StepEstimate.TablePath} is stale; regenerate it with `{StepEstimate.Command}`");
    }
}
