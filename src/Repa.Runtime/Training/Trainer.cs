using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cuda;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Data;
using Repa.Runtime.Models;
using Repa.Runtime.Optim;

namespace Repa.Runtime.Training;

/// <summary>Encoder targets for a batch of dataset indices: [N, Tokens, Dim], one per projector.</summary>
public interface ITargetProvider
{
    int Tokens { get; }
    int Dim { get; }
    string Description { get; }
    Tensor Targets(ReadOnlySpan<int> indices, IBackend backend, DType dtype);
}

/// <summary>What a run trains and how (the `train` command's flags, REPA train.py names in the saved config).</summary>
public sealed record TrainOptions
{
    public string Model { get; init; } = "SiT-T/4";
    public int Steps { get; init; } = 1000;
    public int Batch { get; init; } = 32;
    public double LearningRate { get; init; } = 1e-4;
    public ulong Seed { get; init; }
    public string OutputFolder { get; init; } = Path.Combine("runs", "latest");
    public string DataFolder { get; init; } = IdxDataset.DefaultFashionMnistFolder;
    public int ImageSize { get; init; } = 32;
    public int EncoderDepth { get; init; }

    /// <summary>timm qk-norm in every attention block (REPA's --qk-norm).</summary>
    public bool QkNorm { get; init; }
    public ObjectiveConfig Objective { get; init; } = new();
    public double MaxGradNorm { get; init; } = 1.0;
    public double EmaDecay { get; init; } = 0.9999;

    /// <summary>Micro-batches per optimiser step (REPA's gradient_accumulation_steps); must divide Batch.</summary>
    public int GradientAccumulation { get; init; } = 1;

    /// <summary>Save a checkpoint every this many steps (0: only at the end).</summary>
    public int CheckpointEvery { get; init; }

    /// <summary>A checkpoint (.safetensors file or its run folder) to continue exactly from.</summary>
    public string? Resume { get; init; }

    /// <summary>"sit" (REPA's SILoss; SiT presets) or "ddpm" (DiT's eps + learned-variance hybrid loss; DiT presets).</summary>
    public string ObjectiveKind { get; init; } = "sit";

    /// <summary>
    /// REPA's --mixed-precision: "no" (float32 throughout) or "bf16" (bfloat16 activations and GEMM inputs; float32
    /// master weights, optimiser state, norm/softmax statistics and losses); null picks bf16 where the backend computes
    /// in it (CUDA) and no elsewhere (the CPU). fp16 (which needs loss scaling) is not offered.
    /// </summary>
    public string? MixedPrecision { get; init; }

    /// <summary>
    /// Capture the step's device work (forward, backward, grad norm, clip, AdamW, EMA) as a CUDA graph after the run's
    /// first step and replay it (`--cuda-graph`); the CPU backend runs the same steps either way.
    /// </summary>
    public bool CudaGraph { get; init; } = true;
}

/// <summary>One step's figures, as printed and as written to metrics.jsonl.</summary>
public sealed record StepMetrics(int Step, double Loss, double Denoise, double Proj, double GradNorm, double ImagesPerSecond, double Seconds)
{
    /// <summary>The DDPM objective's variational-bound term (loss = denoise + vb + proj_coeff * proj); 0 for SiT.</summary>
    public double Vb { get; init; }
}

/// <summary>
/// The training loop: data -> objective -> backward -> AdamW (with the global clip) -> EMA, on one tape reset per step
/// so a step allocates nothing after the first. Every random draw comes from Philox keyed by (seed, step, purpose).
/// A step has a host part (draws, uploads into persistent <see cref="StepInputs"/>, the optimiser's step scalars) and
/// a device part that reads nothing back (zero grads, per micro-batch forward + backward with the loss figures summed
/// into device memory, grad norm, clip, AdamW, EMA); the figures are read after it. The run's first step runs the
/// device part eagerly (warming the buffer pool); with <see cref="TrainOptions.CudaGraph"/> the later steps launch it
/// as one captured graph (<see cref="IBackend.Capture"/>: a CUDA graph, or the same code again on the CPU).
/// </summary>
public sealed class Trainer : IDisposable
{
    public const ulong DataPurpose = 4;

    private readonly TrainOptions options;
    private readonly TrainingData data;
    private readonly ITargetProvider? targets;
    private readonly Objective objective;
    private readonly DdpmObjective? ddpm; // set for --objective ddpm; labels and noise still come from `objective`
    private readonly AdamW optimizer;
    private readonly Ema ema;
    private readonly StepInputs[] inputs; // one per micro-batch
    private readonly Tensor figures; // float64 {loss, denoise, proj, vb} of the last step, summed on the device
    private IDeviceGraph? graph;
    private Tape? graphTape, warmTape; // the tape the graph was captured with; the tape of the last eager step

    public Trainer(IBackend backend, TrainOptions options, TrainingData data, ITargetProvider? targets)
    {
        this.options = options;
        this.data = data;
        this.targets = targets;
        if (options.Steps < 1) throw new ArgumentException($"--steps must be at least 1, got {options.Steps}.");
        if (options.Batch < 1) throw new ArgumentException($"--batch must be at least 1, got {options.Batch}.");
        if (options.GradientAccumulation < 1 || options.Batch % options.GradientAccumulation != 0)
            throw new ArgumentException($"--grad-accum {options.GradientAccumulation} must be at least 1 and divide --batch {options.Batch}.");
        objective = new Objective(options.Objective);
        bool repa = options.Objective.ProjCoeff > 0;
        if (repa && targets == null)
            throw new ArgumentException("proj_coeff > 0 needs encoder targets; give an encoder or use --proj-coeff 0 for vanilla SiT.");
        if (options.ImageSize != data.Size)
            throw new ArgumentException($"--image-size {options.ImageSize} does not match the dataset's model input size {data.Size}; open the data with the same size.");
        var config = SiTConfig.Preset(options.Model) with
        {
            InputSize = options.ImageSize,
            InChannels = data.Channels,
            NumClasses = data.NumClasses,
            ZDims = repa ? [targets!.Dim] : [],
            QkNorm = options.QkNorm,
        };
        if (options.EncoderDepth > 0) config = config with { EncoderDepth = options.EncoderDepth };
        Config = config.Validate();
        if (repa && targets!.Tokens != Config.Tokens)
            throw new ArgumentException($"the encoder gives {targets.Tokens} target tokens per image but {Config.Name} at {Config.InputSize} px has {Config.Tokens} patches; choose an encoder layer/input size whose grid matches.");
        if (options.ObjectiveKind is not ("sit" or "ddpm"))
            throw new ArgumentException($"--objective must be sit or ddpm, got '{options.ObjectiveKind}'.");
        if (options.ObjectiveKind == "ddpm" && !Config.LearnSigma)
            throw new ArgumentException($"--objective ddpm needs a DiT preset (learned variance), e.g. --config DiT-T/2; {Config.Name} has none.");
        if (options.ObjectiveKind == "sit" && Config.LearnSigma)
            throw new ArgumentException($"{Config.Name} learns a variance (2C output channels); train it with --objective ddpm, or pick a SiT preset.");
        if (options.ObjectiveKind == "ddpm") ddpm = new DdpmObjective(options.Objective);
        Model = new SiT(backend, DType.F32, Config, options.Seed) { ComputeDType = ComputeType(options.MixedPrecision, backend) };
        optimizer = new AdamW(Model.NamedParameters(), options.LearningRate, maxGradNorm: options.MaxGradNorm);
        ema = new Ema(Model.NamedParameters(), options.EmaDecay);
        (int, int)[] targetShapes = repa ? [(targets!.Tokens, targets.Dim)] : [];
        int micro = options.Batch / options.GradientAccumulation;
        inputs = Enumerable.Range(0, options.GradientAccumulation).Select(_ => new StepInputs(backend, DType.F32, micro, data.Channels,
            options.ImageSize, ddpm != null ? DdpmObjective.CoefficientCount : Objective.CoefficientCount, ddpm != null, targetShapes)).ToArray();
        figures = Tensor.Zeros(backend, DType.F64, 4).Persistent();
    }

    public SiTConfig Config { get; }
    public SiT Model { get; }

    /// <summary>The activations' dtype for a --mixed-precision value on <paramref name="backend"/> (null: bf16 where supported).</summary>
    public static DType ComputeType(string? mixedPrecision, IBackend backend) => mixedPrecision switch
    {
        null => backend.Supports(DType.BF16) ? DType.BF16 : DType.F32,
        "no" => DType.F32,
        "bf16" when backend.Supports(DType.BF16) => DType.BF16,
        "bf16" => throw new ArgumentException($"--mixed-precision bf16 needs a backend that computes in bfloat16 (cuda); the {backend.Name} backend computes in float32, so use --mixed-precision no."),
        "fp16" => throw new ArgumentException("--mixed-precision fp16 needs loss scaling, which Repa does not implement; use bf16 (same range as float32) or no."),
        _ => throw new ArgumentException($"--mixed-precision must be no or bf16, got '{mixedPrecision}'."),
    };

    /// <summary>The last completed step (0 for a fresh run, the checkpoint's step after a resume).</summary>
    public int CompletedSteps { get; private set; }

    /// <summary>The device's fp32 peak in GFLOP/s for the MFU column (0: not printed).</summary>
    public double PeakGflops { get; set; }

    /// <summary>Called after every step (its metrics logged), e.g. to evaluate the model at chosen steps (`study`).</summary>
    public Action<StepMetrics>? AfterStep { get; set; }

    /// <summary>The EMA of the parameters (its tensors by state_dict name), e.g. to evaluate them in place of the raw weights.</summary>
    public Ema Ema => ema;

    /// <summary>Set (e.g. from Ctrl-C) to stop after the current step; the run then saves its checkpoint and returns.</summary>
    public CancellationToken Stop { get; set; }

    public const string CheckpointFile = "checkpoint.safetensors";

    /// <summary>A checkpoint path from a .safetensors file or a run folder holding checkpoint.safetensors.</summary>
    public static string ResolveCheckpoint(string path)
    {
        string file = Directory.Exists(path) ? Path.Combine(path, CheckpointFile) : path;
        if (!File.Exists(file))
            throw new FileNotFoundException($"checkpoint '{file}' does not exist; pass a run folder or its {CheckpointFile}.");
        return file;
    }

    /// <summary>Loads model, EMA and optimiser state; the run continues at the next step with the same random draws.</summary>
    public void LoadCheckpoint(string path)
    {
        string file = ResolveCheckpoint(path);
        using var state = SafeTensors.Read(file, Model.Backend);
        if (!state.Metadata.TryGetValue(AdamW.StepKey, out var stepText) || !int.TryParse(stepText, CultureInfo.InvariantCulture, out int step))
            throw new InvalidDataException($"checkpoint '{file}' has no {AdamW.StepKey} metadata; it was not written by `train`.");
        try
        {
            Model.LoadStateDict(state.Tensors, strict: false);
            ema.LoadState(state.Tensors);
            optimizer.LoadState(state.Tensors, step);
        }
        catch (Exception e) when (e is KeyNotFoundException or ArgumentException)
        {
            throw new InvalidDataException($"checkpoint '{file}' does not fit {Config.Name} with these options: {e.Message}");
        }
        CompletedSteps = step;
    }

    /// <summary>
    /// Training FLOPs per image (3 x forward: forward + two products per weight in backward; recompute not counted).
    /// Per-token matrices (qkv, proj, MLP, patch, final linear, projectors) run T times per image; the adaLN and
    /// timestep MLPs once per image; attention adds 4 T^2 D per block.
    /// </summary>
    public double FlopsPerImage
    {
        get
        {
            double d = Config.HiddenSize, t = Config.Tokens, pp = Config.PatchSize * Config.PatchSize * Config.OutChannels;
            double perToken = Config.Depth * (4 + 2 * Config.MlpRatio) * d * d + 2 * pp * d;
            foreach (int z in Config.ZDims)
                perToken += d * Config.ProjectorDim + (double)Config.ProjectorDim * Config.ProjectorDim + (double)Config.ProjectorDim * z;
            double perImage = Config.Depth * 6 * d * d + 2 * d * d + SiTConfig.FrequencyEmbeddingSize * d + d * d;
            double forward = 2 * (perToken * t + perImage) + Config.Depth * 4 * t * t * d;
            return 3 * forward;
        }
    }

    /// <summary>The dataset images of a step (drawn with replacement from the step's Philox stream).</summary>
    public int[] Indices(int step)
    {
        var u = new double[options.Batch];
        Philox.Uniform(options.Seed, Objective.Stream((ulong)step, DataPurpose), 0, u);
        return u.Select(v => Math.Min((int)(v * data.Count), data.Count - 1)).ToArray();
    }

    /// <summary>Runs one step (1-based) and returns its metrics.</summary>
    public StepMetrics Step(int step, Tape tape)
    {
        ArgumentNullException.ThrowIfNull(tape);
        var sw = Stopwatch.StartNew();
        var backend = Model.Backend;
        int n = options.Batch, size = options.ImageSize, accum = options.GradientAccumulation, micro = n / accum;
        int perImage = data.Channels * size * size;
        // Draw the whole step's randomness first, then cut it into micro-batches: an accumulated step sees exactly the
        // images, labels, times and noise of the unaccumulated one (Philox fills can start at any element).
        var indices = Indices(step);
        var images = new float[n * perImage];
        var labels = new int[n];
        data.FillBatch(indices, images, labels, options.Seed, (ulong)step);
        var dropped = objective.DropLabels(labels, data.NumClasses, options.Seed, (ulong)step);
        // The device cannot report a bad label from inside a captured step, so check here (the null class is NumClasses).
        foreach (int label in dropped)
            if (label < 0 || label > data.NumClasses)
                throw new InvalidDataException($"the data gave label {label} at step {step}, outside 0..{data.NumClasses - 1}; check the dataset's labels.");
        var t = ddpm != null ? ddpm.SampleTimes(options.Seed, (ulong)step, n) : objective.SampleTimes(options.Seed, (ulong)step, n);
        for (int k = 0; k < accum; k++)
        {
            var input = inputs[k];
            int first = k * micro;
            backend.Upload<float>(images.AsSpan(first * perImage, micro * perImage), input.X0.Buffer);
            StepInputs.Upload(input.Noise, Objective.NoiseValues(input.Noise.Count, options.Seed, (ulong)step, (ulong)(first * perImage)));
            backend.Upload<int>(dropped.AsSpan(first, micro), input.Labels.Buffer);
            if (input.Targets.Length > 0)
            {
                // Off the tape: a replayed step never resets it, so it must not collect the step's temporaries.
                using var computed = targets!.Targets(indices.AsSpan(first, micro), backend, input.Targets[0].DType).Persistent();
                if (!computed.Shape.AsSpan().SequenceEqual(input.Targets[0].Shape))
                    throw new InvalidDataException($"the encoder gave targets {computed.ShapeString} for a micro-batch of {micro}; expected {input.Targets[0].ShapeString}.");
                backend.Copy(computed.Buffer, 0, input.Targets[0].Buffer, 0, computed.Count);
            }
            var microT = t.AsSpan(first, micro).ToArray();
            if (ddpm != null) ddpm.SetTimes(input, microT);
            else objective.SetTimes(input, microT);
        }
        optimizer.Prepare();
        RunDeviceStep(tape);
        Span<double> f = stackalloc double[4];
        backend.Download(figures.Buffer, f);
        if (!double.IsFinite(f[0]))
            throw new InvalidOperationException($"the loss became {f[0]} at step {step}; lower --lr or check the data.");
        double gradNorm = optimizer.LastGradNorm();
        double seconds = sw.Elapsed.TotalSeconds;
        return new StepMetrics(step, f[0], f[1], f[2], gradNorm, n / seconds, seconds) { Vb = f[3] };
    }

    /// <summary>Whether the last step launched a captured graph (false for eager steps and after --cuda-graph false).</summary>
    public bool LastStepReplayed { get; private set; }

    /// <summary>Why capturing the step failed (the steps then run eagerly), or null.</summary>
    public string? CaptureFailure { get; private set; }

    // Eager on the first step with this tape (the pool warms up and the shapes settle); captured on the next one when
    // asked, then replayed. A graph belongs to the tape it was captured with: another tape starts over. A capture the
    // device refuses leaves nothing done on it (the work was recorded, not run): the step, and every later one, then
    // runs eagerly, which gives the same results.
    private void RunDeviceStep(Tape tape)
    {
        if (graph != null && !ReferenceEquals(graphTape, tape))
        {
            graph.Dispose();
            graph = null;
            graphTape = null;
        }
        if (graph == null && options.CudaGraph && CaptureFailure == null && ReferenceEquals(warmTape, tape))
        {
            try
            {
                graph = Model.Backend.Capture(() => DeviceStep(tape));
                graphTape = tape;
            }
            catch (Exception e) when (e is CudaException or InvalidOperationException)
            {
                CaptureFailure = e.Message;
            }
        }
        if (graph != null)
        {
            graph.Launch();
            LastStepReplayed = true;
            return;
        }
        DeviceStep(tape);
        warmTape = tape;
        LastStepReplayed = false;
    }

    // The device part of a step: reads its inputs from `inputs` and the optimiser's scalars, writes `figures`.
    private void DeviceStep(Tape tape)
    {
        var backend = Model.Backend;
        int accum = options.GradientAccumulation;
        optimizer.ZeroGrad();
        backend.Fill(figures.Buffer, 0, 4, 0);
        for (int k = 0; k < accum; k++)
        {
            tape.Reset(); // gradients of the parameters survive; the last micro-batch's activations go back to the pool
            var loss = ddpm != null ? ddpm.Compute(Model, inputs[k]) : objective.Compute(Model, inputs[k]);
            backend.AccumulateScalar(loss.Total.Buffer, figures.Buffer, 0, accum);
            backend.AccumulateScalar(loss.Denoise.Buffer, figures.Buffer, 1, accum);
            backend.AccumulateScalar(loss.Proj.Buffer, figures.Buffer, 2, accum);
            if (loss.Vb != null) backend.AccumulateScalar(loss.Vb.Buffer, figures.Buffer, 3, accum);
            tape.Backward(accum == 1 ? loss.Total : Ops.Scale(loss.Total, 1.0 / accum));
        }
        optimizer.Apply();
        ema.Update();
    }

    /// <summary>Trains for the configured steps, printing one line per step and writing metrics and the checkpoint.</summary>
    public IReadOnlyList<StepMetrics> Run(TextWriter log)
    {
        Directory.CreateDirectory(options.OutputFolder);
        if (options.Resume != null) LoadCheckpoint(options.Resume);
        var history = new List<StepMetrics>();
        // A resumed run appends to its log; a fresh one starts it anew.
        using var metrics = new StreamWriter(Path.Combine(options.OutputFolder, "metrics.jsonl"), append: CompletedSteps > 0);
        log.WriteLine($"model: {Config.Name} ({Model.ParameterCount:N0} parameters, {Config.Tokens} tokens), data: {data.Description}, " +
                      (ddpm != null ? $"objective: ddpm ({ddpm.Diffusion.NumTimesteps} steps, linear betas, eps + learned variance)" : $"objective: {options.Objective.PathType} path") + $", proj_coeff {options.Objective.ProjCoeff}" + (targets != null ? $", targets: {targets.Description}" : ""));
        var total = Stopwatch.StartNew();
        using var tape = new Tape();
        if (CompletedSteps > 0) log.WriteLine($"resumed from step {CompletedSteps}");
        string checkpoint = Path.Combine(options.OutputFolder, CheckpointFile);
        for (int step = CompletedSteps + 1; step <= options.Steps; step++)
        {
            bool failedBefore = CaptureFailure != null;
            var m = Step(step, tape);
            if (!failedBefore && CaptureFailure != null)
                log.WriteLine($"cuda graph: capturing the step failed ({CaptureFailure.TrimEnd('.')}); the steps run eagerly (same results, more launches).");
            history.Add(m);
            CompletedSteps = step;
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{ProgressBar.Bar(step, options.Steps)} step {step,5}/{options.Steps} | loss {m.Loss:F4} (denoise {m.Denoise:F4}{(ddpm != null ? ", vb " + m.Vb.ToString("F4", CultureInfo.InvariantCulture) : "")}, proj {m.Proj:F4}) | grad norm {m.GradNorm:F3} | {m.ImagesPerSecond:F1} img/s | {FlopsPerImage * m.ImagesPerSecond / 1e9:F1} GFLOP/s{Mfu(m)} | ETA {ProgressBar.Eta(total.Elapsed, history.Count, options.Steps - CompletedSteps + history.Count)}"));
            metrics.WriteLine(JsonSerializer.Serialize(m));
            metrics.Flush();
            AfterStep?.Invoke(m);
            if (Stop.IsCancellationRequested)
            {
                log.WriteLine($"stopping after step {step} as asked; saving the checkpoint.");
                break;
            }
            if (options.CheckpointEvery > 0 && step % options.CheckpointEvery == 0 && step < options.Steps) SaveCheckpoint(checkpoint);
        }
        tape.Reset();
        graph?.Dispose();
        graph = null;
        SaveCheckpoint(checkpoint);
        metrics.Close();
        Plots.LinePlot.SaveLossCurves(Path.Combine(options.OutputFolder, "metrics.jsonl"), Path.Combine(options.OutputFolder, "loss.png"));
        return history;
    }

    private string Mfu(StepMetrics m) =>
        PeakGflops > 0 ? string.Create(CultureInfo.InvariantCulture, $" | MFU {100 * FlopsPerImage * m.ImagesPerSecond / 1e9 / PeakGflops:F0}%") : "";

    /// <summary>Model state_dict (REPA names) + "ema.*" + optimiser state, and config.json beside it; atomic writes.</summary>
    public void SaveCheckpoint(string path)
    {
        var tensors = new List<(string, Tensor)>(Model.StateDict());
        tensors.AddRange(ema.StateTensors());
        tensors.AddRange(optimizer.StateTensors());
        SafeTensors.Write(path, tensors, new Dictionary<string, string> { [AdamW.StepKey] = optimizer.StepCount.ToString(CultureInfo.InvariantCulture) });
        var config = new Dictionary<string, object>
        {
            ["model"] = Config.Name, ["input_size"] = Config.InputSize, ["patch_size"] = Config.PatchSize,
            ["in_channels"] = Config.InChannels, ["hidden_size"] = Config.HiddenSize, ["depth"] = Config.Depth,
            ["num_heads"] = Config.NumHeads, ["mlp_ratio"] = Config.MlpRatio, ["num_classes"] = Config.NumClasses,
            ["encoder_depth"] = Config.EncoderDepth, ["z_dims"] = Config.ZDims, ["projector_dim"] = Config.ProjectorDim,
            ["qk_norm"] = Config.QkNorm, ["path_type"] = options.Objective.PathType, ["weighting"] = options.Objective.Weighting,
            ["proj_coeff"] = options.Objective.ProjCoeff, ["learning_rate"] = options.LearningRate, ["batch_size"] = options.Batch,
            ["seed"] = options.Seed, ["max_train_steps"] = options.Steps, ["cfg_prob"] = options.Objective.ClassDropout,
            ["objective"] = options.ObjectiveKind, ["learn_sigma"] = Config.LearnSigma,
            ["data_dir"] = Path.GetFullPath(options.DataFolder), ["ema_decay"] = options.EmaDecay,
            ["mixed_precision"] = Model.ComputeDType == DType.BF16 ? "bf16" : "no",
        };
        string json = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "config.json");
        File.WriteAllText(json + ".tmp", JsonSerializer.Serialize(config, new JsonSerializerOptions { WriteIndented = true }));
        File.Move(json + ".tmp", json, overwrite: true);
    }

    public void Dispose()
    {
        graph?.Dispose();
        foreach (var input in inputs) input.Dispose();
        figures.Dispose();
        optimizer.Dispose();
        ema.Dispose();
        Model.Dispose();
    }
}
