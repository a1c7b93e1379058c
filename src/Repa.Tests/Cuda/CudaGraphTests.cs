using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Kernels.Cuda;
using Repa.Kernels.Cuda.Native;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Data;
using Repa.Runtime.Training;

namespace Repa.Tests.Cuda;

/// <summary>
/// CUDA graphs on the emulated device: while the backend's stream captures, kernels, async copies and fills and cuBLAS
/// GEMMs are recorded (not run) and a launch replays them; the calls CUDA refuses during a capture fail with CUDA's codes
/// and invalidate it; buffers the capture rented stay reserved for the graph. Then the training step: N steps with the
/// step captured after the first are bitwise the same N steps run eagerly on the emulated device (the same kernels),
/// close to the CPU backend, and stay so across a resume and with gradient accumulation.
/// </summary>
[TestFixture, Category("EmulatedCuda"), NonParallelizable]
public sealed unsafe class CudaGraphTests
{
    private static float[] Read(IBackend backend, DeviceBuffer buffer)
    {
        var values = new float[buffer.Length];
        backend.Download<float>(buffer, values);
        return values;
    }

    [Test]
    public void CapturedWorkIsRecordedNotRunAndEveryLaunchReplaysIt()
    {
        using var cuda = EmulatedCuda.Open();
        const int n = 6;
        using var x = cuda.Allocate(DType.F32, n);
        using var y = cuda.Allocate(DType.F32, n);
        using var a = cuda.Allocate(DType.F32, 4); // [2, 2]
        using var c = cuda.Allocate(DType.F32, 4);
        cuda.Upload<float>([1, 2, 3, 4, 5, 6], x);
        cuda.Fill(y, 0, n, -1);
        cuda.Upload<float>([1, 2, 3, 4], a);
        cuda.Fill(c, 0, 4, -1);
        int capturing = -1;
        using var graph = cuda.Capture(() =>
        {
            cuda.Fill(y, 0, n, 10); // cuMemsetD32Async
            cuda.Axpby(x, y, n, 2, 1); // a kernel: y = 2 x + y
            cuda.Copy(y, 0, y, 3, 3); // overlapping: two DtoD copies through a pooled scratch buffer
            cuda.Gemm(false, false, 2, 2, 2, 1, a, 0, 2, 0, a, 0, 2, 0, 0, c, 0, 2, 0); // cuBLAS: c = a a
            int status;
            CudaDriver.Check(CudaDriver.cuStreamIsCapturing(cuda.Stream, &status));
            capturing = status;
        });
        Assert.That(capturing, Is.EqualTo(1), "the stream reports an active capture inside the body");
        int after;
        CudaDriver.Check(CudaDriver.cuStreamIsCapturing(cuda.Stream, &after));
        Assert.That(after, Is.Zero, "and none after it");
        Assert.That(Read(cuda, y), Is.All.EqualTo(-1f), "nothing ran at capture");
        Assert.That(Read(cuda, c), Is.All.EqualTo(-1f), "the GEMM did not run at capture");

        graph.Launch();
        Assert.That(Read(cuda, y), Is.EqualTo(new float[] { 12, 14, 16, 12, 14, 16 }));
        Assert.That(Read(cuda, c), Is.EqualTo(new float[] { 7, 10, 15, 22 }), "row-major [[1, 2], [3, 4]]^2");

        // A replay reads the buffers as they are now, with the arguments of the capture.
        cuda.Upload<float>([0, 0, 1, 0, 0, 0], x);
        cuda.Upload<float>([2, 0, 0, 2], a);
        graph.Launch();
        Assert.That(Read(cuda, y), Is.EqualTo(new float[] { 10, 10, 12, 10, 10, 12 }));
        Assert.That(Read(cuda, c), Is.EqualTo(new float[] { 4, 0, 0, 4 }));
    }

    [Test]
    public void CallsCudaRefusesDuringACaptureFailWithItsCodesAndInvalidateTheCapture()
    {
        using var cuda = EmulatedCuda.Open();
        using var x = cuda.Allocate(DType.F32, 4);
        cuda.Fill(x, 0, 4, 1);

        // The backend refuses host transfers and synchronisation itself, with a sentence.
        var upload = Assert.Throws<InvalidOperationException>(() => cuda.Capture(() => cuda.Upload<float>([1, 2, 3, 4], x)));
        Assert.That(upload!.Message, Does.Contain("Upload during a graph capture"));
        Assert.Throws<InvalidOperationException>(() => cuda.Capture(() => cuda.Download(x, new float[4])));
        Assert.Throws<InvalidOperationException>(() => cuda.Capture(cuda.Synchronize));
        Assert.That(cuda.IsCapturing, Is.False, "a failed body ends the capture");

        // The driver's own rules (what a GPU would answer), and the capture is invalidated by each refusal.
        var codes = new List<CudaResult>();
        float* value = (float*)System.Runtime.InteropServices.NativeMemory.Alloc(4);
        *value = 5;
        ulong pointer = 0;
        foreach (Func<CudaResult> refused in new Func<CudaResult>[]
        {
            () => CudaDriver.cuMemcpyHtoD_v2(cuda.Address(x), value, 4), // synchronous: the legacy stream
            () => CudaDriver.cuMemsetD32_v2(cuda.Address(x), 0, 4),
            () => CudaDriver.cuCtxSynchronize(),
            () => CudaDriver.cuStreamSynchronize(cuda.Stream),
            () => { ulong p; return CudaDriver.cuMemAlloc_v2(&p, 256); }, // this thread may not allocate
            () => CudaDriver.cuMemcpyHtoDAsync_v2(cuda.Address(x), value, 4, cuda.Stream), // pageable host memory
        })
        {
            var e = Assert.Throws<CudaException>(() => cuda.Capture(() =>
            {
                codes.Add(refused());
                cuda.Fill(x, 0, 4, 7); // after the refusal: work on the invalidated capture fails too
            }));
            Assert.That(e!.Message, Does.Contain("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"));
        }
        Assert.That(codes, Is.EqualTo(new[]
        {
            CudaResult.StreamCaptureImplicit, CudaResult.StreamCaptureImplicit, CudaResult.StreamCaptureUnsupported,
            CudaResult.StreamCaptureUnsupported, CudaResult.StreamCaptureUnsupported, CudaResult.StreamCaptureUnsupported,
        }));
        Assert.That(Read(cuda, x), Is.All.EqualTo(1f), "nothing of the failed captures ran");

        // The capture is thread-local: another thread may free memory meanwhile (as a CudaBuffer finalizer does).
        var elsewhere = cuda.Allocate(DType.F32, 4);
        using (var g = cuda.Capture(() => Task.Run(elsewhere.Dispose).Wait())) g.Launch();

        // Outside a capture the same calls work, and relaxed mode allows allocation.
        CudaDriver.Check(CudaDriver.cuMemcpyHtoD_v2(cuda.Address(x), value, 4));
        System.Runtime.InteropServices.NativeMemory.Free(value);
        CudaDriver.Check(CudaDriver.cuCtxSynchronize());
        nint stream, graph;
        CudaDriver.Check(CudaDriver.cuStreamCreate(&stream, 0));
        try
        {
            CudaDriver.Check(CudaDriver.cuStreamBeginCapture_v2(stream, CudaDriver.StreamCaptureModeRelaxed));
            Assert.That(CudaDriver.cuStreamBeginCapture_v2(stream, CudaDriver.StreamCaptureModeRelaxed), Is.EqualTo(CudaResult.IllegalState));
            CudaDriver.Check(CudaDriver.cuMemAlloc_v2(&pointer, 256));
            CudaDriver.Check(CudaDriver.cuStreamEndCapture(stream, &graph));
            CudaDriver.Check(CudaDriver.cuGraphDestroy(graph));
            CudaDriver.Check(CudaDriver.cuMemFree_v2(pointer));
            Assert.That(CudaDriver.cuStreamEndCapture(stream, &graph), Is.EqualTo(CudaResult.IllegalState), "not capturing");
        }
        finally
        {
            CudaDriver.cuStreamDestroy_v2(stream);
        }
        Assert.That(Read(cuda, x), Is.EqualTo(new float[] { 5, 1, 1, 1 }));
    }

    [Test]
    public void BuffersRentedByACaptureStayWithTheGraphUntilItIsDisposed()
    {
        using var cuda = EmulatedCuda.Open();
        using var x = cuda.Allocate(DType.F32, 8);
        cuda.Fill(x, 0, 8, 3);
        var warm = cuda.Pool.Rent(DType.F32, 8);
        cuda.Pool.Return(warm);
        DeviceBuffer? scratch = null;
        var graph = cuda.Capture(() =>
        {
            scratch = cuda.Pool.Rent(DType.F32, 8); // the warm buffer, from the free list
            cuda.Copy(x, 0, scratch, 0, 8);
            cuda.Axpby(scratch, x, 8, 1, 1); // x += scratch
            cuda.Pool.Return(scratch);
        });
        Assert.That(scratch, Is.SameAs(warm));
        var other = cuda.Pool.Rent(DType.F32, 8);
        Assert.That(other, Is.Not.SameAs(warm), "the graph's scratch buffer is not handed out while the graph lives");
        cuda.Fill(other, 0, 8, -5); // someone else's writes cannot reach the graph's buffer
        graph.Launch();
        Assert.That(Read(cuda, x), Is.All.EqualTo(6f));
        graph.Launch();
        Assert.That(Read(cuda, x), Is.All.EqualTo(12f));
        cuda.Pool.Return(other);
        graph.Dispose();
        Assert.That(cuda.Pool.ReservedCount, Is.Zero);
        var again = cuda.Pool.Rent(DType.F32, 8);
        var second = cuda.Pool.Rent(DType.F32, 8);
        Assert.That(new[] { again, second }, Does.Contain(warm), "back in the pool once the graph is gone");
        cuda.Pool.Return(again);
        cuda.Pool.Return(second);
    }

    // ---- the training step ----

    /// <summary>SiT-T/4 + REPA; mixed precision as `train` picks it (bf16 on CUDA) unless given.</summary>
    private static TrainOptions Options(int steps, bool graph, int accumulation = 1, string? mixedPrecision = null) => new()
    {
        Model = "SiT-T/4", Steps = steps, Batch = 4, LearningRate = 1e-3, Seed = 5, GradientAccumulation = accumulation,
        Objective = new ObjectiveConfig(ProjCoeff: 0.5), CudaGraph = graph, MixedPrecision = mixedPrecision,
    };

    private sealed record Run(List<StepMetrics> Metrics, List<bool> Replayed, Dictionary<string, float[]> State);

    private static Run Train(IBackend backend, TrainOptions options, Action<Trainer>? afterFirstStep = null)
    {
        var data = new IdxTrainingData(TrainerTests.Data(), 32);
        var targets = options.Objective.ProjCoeff > 0 ? new CudaTrainingTests.FixedTargets(64, 24) : null;
        using var trainer = new Trainer(backend, options, data, targets);
        using var tape = new Tape();
        var metrics = new List<StepMetrics>();
        var replayed = new List<bool>();
        for (int step = 1; step <= options.Steps; step++)
        {
            metrics.Add(trainer.Step(step, tape));
            replayed.Add(trainer.LastStepReplayed);
            if (step == 1) afterFirstStep?.Invoke(trainer);
        }
        tape.Reset();
        var state = trainer.Model.StateDict().Concat(trainer.Ema.StateTensors()).ToDictionary(e => e.Item1, e => e.Item2.ToFloatArray());
        return new Run(metrics, replayed, state);
    }

    private static void AssertBitwise(Run graph, Run eager)
    {
        Assert.That(graph.Metrics.Select(m => (m.Loss, m.Denoise, m.Proj, m.GradNorm)),
            Is.EqualTo(eager.Metrics.Select(m => (m.Loss, m.Denoise, m.Proj, m.GradNorm))), "the figures of every step");
        Assert.That(graph.State.Keys, Is.EqualTo(eager.State.Keys));
        foreach (var (name, values) in eager.State) Assert.That(graph.State[name], Is.EqualTo(values), name);
    }

    [Test]
    public void GraphStepsAreBitwiseTheEagerStepsAndCloseToTheCpu([Values("no", "bf16")] string mixedPrecision)
    {
        using var cuda = EmulatedCuda.Open();
        var graph = Train(cuda, Options(3, graph: true, mixedPrecision: mixedPrecision));
        var eager = Train(cuda, Options(3, graph: false, mixedPrecision: mixedPrecision));
        Assert.That(graph.Replayed, Is.EqualTo(new[] { false, true, true }), "eager first step, then the captured graph");
        Assert.That(eager.Replayed, Is.All.False);
        AssertBitwise(graph, eager);
        TestContext.Out.WriteLine($"emulated step seconds, graph: {string.Join(", ", graph.Metrics.Select(m => m.Seconds.ToString("F3")))}; eager: {string.Join(", ", eager.Metrics.Select(m => m.Seconds.ToString("F3")))}");

        if (mixedPrecision == "bf16") return; // bf16 against the CPU's fp32: MixedPrecisionTests
        using var cpu = new CpuBackend(2);
        var onCpu = Train(cpu, Options(3, graph: true, mixedPrecision: "no"));
        for (int i = 0; i < 3; i++)
        {
            Assert.That(graph.Metrics[i].Denoise, Is.EqualTo(onCpu.Metrics[i].Denoise).Within(1e-3).Percent, $"step {i + 1} denoise");
            Assert.That(graph.Metrics[i].Proj, Is.EqualTo(onCpu.Metrics[i].Proj).Within(1e-6), $"step {i + 1} proj");
            Assert.That(graph.Metrics[i].GradNorm, Is.EqualTo(onCpu.Metrics[i].GradNorm).Within(1e-2).Percent, $"step {i + 1} grad norm");
        }
    }

    [Test]
    public void ACaptureTheDeviceRefusesFallsBackToEagerStepsWithTheSameResults()
    {
        using var cuda = EmulatedCuda.Open();
        Trainer? trained = null;
        // Emptying the pool after the warm-up step makes the capture allocate, which the driver refuses mid-capture.
        var cold = Train(cuda, Options(3, graph: true), trainer =>
        {
            cuda.Pool.Trim();
            trained = trainer;
        });
        Assert.That(trained!.CaptureFailure, Does.Contain("CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"));
        Assert.That(cold.Replayed, Is.All.False);
        AssertBitwise(cold, Train(cuda, Options(3, graph: false)));
    }

    [Test]
    public void GraphStepsWithGradientAccumulationAreBitwiseTheEagerOnes()
    {
        using var cuda = EmulatedCuda.Open();
        var graph = Train(cuda, Options(3, graph: true, accumulation: 2));
        var eager = Train(cuda, Options(3, graph: false, accumulation: 2));
        Assert.That(graph.Replayed, Is.EqualTo(new[] { false, true, true }));
        AssertBitwise(graph, eager);
    }

    [Test]
    public void DdpmGraphStepsAreBitwiseTheEagerOnes()
    {
        using var cuda = EmulatedCuda.Open();
        Run Ddpm(bool graph) => Train(cuda, new TrainOptions
        {
            Model = "DiT-T/4", Steps = 3, Batch = 4, LearningRate = 1e-3, Seed = 7, ObjectiveKind = "ddpm",
            Objective = new ObjectiveConfig(ProjCoeff: 0), CudaGraph = graph,
        });
        var withGraph = Ddpm(graph: true);
        var eager = Ddpm(graph: false);
        Assert.That(withGraph.Replayed, Is.EqualTo(new[] { false, true, true }));
        AssertBitwise(withGraph, eager);
        Assert.That(withGraph.Metrics.Select(m => m.Vb), Is.EqualTo(eager.Metrics.Select(m => m.Vb)), "the VLB term");
        Assert.That(withGraph.Metrics.Select(m => m.Vb), Is.All.GreaterThan(0));
    }

    [Test]
    public void AResumedRunWithGraphsContinuesTheEagerRunExactly()
    {
        using var cuda = EmulatedCuda.Open();
        var data = new IdxTrainingData(TrainerTests.Data(), 32);
        string a = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        string b = Path.Combine(Path.GetTempPath(), "repa-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            bool lastReplayed = false;
            IReadOnlyList<StepMetrics> RunTo(TrainOptions options)
            {
                using var trainer = new Trainer(cuda, options, data, new CudaTrainingTests.FixedTargets(64, 24));
                var history = trainer.Run(TextWriter.Null);
                lastReplayed = trainer.LastStepReplayed;
                return history;
            }
            // The resumed run's first step (3) is eager again (a fresh pool and tape), step 4 replays its graph.
            var straight = RunTo(Options(4, graph: false) with { OutputFolder = a });
            var firstHalf = RunTo(Options(2, graph: true) with { OutputFolder = b });
            var secondHalf = RunTo(Options(4, graph: true) with { OutputFolder = b, Resume = b });
            Assert.That(lastReplayed, "the resumed run's last step replayed a graph");
            Assert.That(firstHalf.Concat(secondHalf).Select(m => (m.Step, m.Loss, m.GradNorm)),
                Is.EqualTo(straight.Select(m => (m.Step, m.Loss, m.GradNorm))));
            using var x = SafeTensors.Read(Path.Combine(a, Trainer.CheckpointFile), cuda);
            using var y = SafeTensors.Read(Path.Combine(b, Trainer.CheckpointFile), cuda);
            Assert.That(y.Tensors.Keys, Is.EqualTo(x.Tensors.Keys));
            foreach (var name in x.Tensors.Keys) Assert.That(y[name].ToFloatArray(), Is.EqualTo(x[name].ToFloatArray()), name);
        }
        finally
        {
            foreach (var d in new[] { a, b }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }
}
