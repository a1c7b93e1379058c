using System.Globalization;
using System.Text;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Profiling;
using Repa.Runtime.Data;

namespace Repa.Runtime.Training;

/// <summary>
/// The on-paper speed of one training step on an H100: the real <see cref="Trainer"/> (model, objective, backward,
/// AdamW with the norm clip, EMA) runs a step on the <see cref="CostBackend"/>, and <see cref="StepCostModel"/> prices
/// the recorded calls. <see cref="Markdown"/> is docs/notes/cuda-estimate.md (`estimate` in Repa.Bench writes it; a
/// test compares the checked-in file).
/// </summary>
public sealed class StepEstimate
{
    /// <summary>Where the table is checked in, relative to the repository root.</summary>
    public const string TablePath = "docs/notes/cuda-estimate.md";

    /// <summary>The command that regenerates <see cref="TablePath"/>.</summary>
    public const string Command = "dotnet run --project src/Repa.Bench -c Release -- estimate " + TablePath;

    /// <summary>
    /// One traced step: the calls of a steady-state step for a --mixed-precision setting, the activation dtype the trainer
    /// chose for it, whether the step was a replayed CUDA graph (--cuda-graph, the default) and a name for the tables' columns.
    /// </summary>
    public sealed record Trace(string Name, string Setting, DType ActivationType, bool Graph, IReadOnlyList<KernelCall> Calls);

    private StepEstimate(TrainOptions options, int channels, int zDim, IReadOnlyList<Trace> traces, double flopsPerImage,
        long parameters, StepCostModel model)
    {
        Options = options;
        Channels = channels;
        ZDim = zDim;
        Traces = traces;
        FlopsPerImage = flopsPerImage;
        ParameterCount = parameters;
        Model = model;
    }

    public TrainOptions Options { get; }
    public int Channels { get; }
    public int ZDim { get; }

    /// <summary>
    /// The traced steps: first the one the trainer runs by default on a CUDA device (--mixed-precision auto: bf16, a
    /// replayed graph), then the same launched kernel by kernel (--cuda-graph false), then fp32 (--mixed-precision no,
    /// graph) when the default is not already fp32.
    /// </summary>
    public IReadOnlyList<Trace> Traces { get; }

    /// <summary>The trace of what `train` runs by default on a GPU (<see cref="Traces"/>[0]).</summary>
    public Trace Default => Traces[0];

    /// <summary><see cref="Trainer.FlopsPerImage"/> of the configuration (what `train` divides by for MFU).</summary>
    public double FlopsPerImage { get; }

    public long ParameterCount { get; }

    public StepCostModel Model { get; }

    /// <summary>
    /// Traces SiT-XL/2 + REPA (one projector of width 2048 onto z_dim 768 after block 8) at 256x256 px (32x32x4 SD-VAE
    /// latents, 1000 classes), batch 256, on a <see cref="CostBackend"/>, recording a steady-state step: the third with
    /// the CUDA graph (the first runs eagerly, the second captures, the third replays), the second without (gradients
    /// exist and are zeroed, as in every later step); with the trainer's own precision choice, the same without the
    /// graph, and --mixed-precision no. <paramref name="options"/> overrides the configuration.
    /// </summary>
    public static StepEstimate Run(TrainOptions? options = null, int channels = 4, int numClasses = 1000, int zDim = 768,
        StepCostModel? model = null)
    {
        options ??= new TrainOptions { Model = "SiT-XL/2", Batch = 256, ImageSize = 32, EncoderDepth = 8, Steps = 3 };
        var data = new SyntheticTrainingData(Math.Max(options.Batch, 1024), channels, options.ImageSize, numClasses);
        int tokens = (Models.SiTConfig.Preset(options.Model) with { InputSize = options.ImageSize }).Tokens;
        var targets = options.Objective.ProjCoeff > 0 ? new SyntheticTargets(tokens, zDim) : null;
        var traces = new List<Trace>();
        var (first, flops, parameters) = TraceStep(options, data, targets);
        traces.Add(first);
        if (first.Graph)
            traces.Add(TraceStep(options with { CudaGraph = false }, data, targets).Trace with { Name = first.Name + " eager" });
        if (first.ActivationType != DType.F32)
            traces.Add(TraceStep(options with { MixedPrecision = "no" }, data, targets).Trace);
        return new StepEstimate(options, channels, zDim, traces, flops, parameters, model ?? new StepCostModel());
    }

    private static (Trace Trace, double FlopsPerImage, long Parameters) TraceStep(TrainOptions options, TrainingData data, ITargetProvider? targets)
    {
        using var backend = new CostBackend();
        using var trainer = new Trainer(backend, options, data, targets);
        using var tape = new Tape();
        int steps = options.CudaGraph ? 3 : 2;
        for (int step = 1; step < steps; step++) trainer.Step(step, tape);
        backend.Clear();
        trainer.Step(steps, tape);
        tape.Reset();
        if (trainer.LastStepReplayed != options.CudaGraph)
            throw new InvalidOperationException($"estimate: the traced step {(options.CudaGraph ? "did not replay a graph" : "replayed a graph")} " +
                                                $"({trainer.CaptureFailure ?? "no capture failure"}).");
        var type = trainer.Model.ComputeDType;
        string setting = options.MixedPrecision ?? "auto";
        var trace = new Trace(type == DType.F32 ? "fp32" : type == DType.BF16 ? "bf16" : type.Name(), setting, type, options.CudaGraph,
            backend.Calls.ToList());
        return (trace, trainer.FlopsPerImage, trainer.Model.ParameterCount);
    }

    /// <summary>Seconds of a trace's whole step.</summary>
    public double StepSeconds(Trace trace) => trace.Calls.Sum(Model.Seconds);

    /// <summary>Model FLOP utilisation: FlopsPerImage x batch / (step time x <see cref="StepCostModel.TensorPeak"/>).</summary>
    public double Mfu(Trace trace) => FlopsPerImage * Options.Batch / (StepSeconds(trace) * Model.TensorPeak);

    /// <summary>FLOPs of a trace's GEMM calls.</summary>
    public static double GemmFlops(Trace trace) => trace.Calls.Where(c => c.Unit == ComputeUnit.Gemm).Sum(c => c.Flops);

    /// <summary>FLOPs of a trace's attention calls (as executed: the backward recomputes).</summary>
    public static double AttentionFlops(Trace trace) => trace.Calls.Where(c => c.Family == "attention").Sum(c => c.Flops);

    /// <summary>docs/notes/cuda-estimate.md.</summary>
    public string Markdown()
    {
        var inv = CultureInfo.InvariantCulture;
        var m = Model;
        var main = Default;
        var sb = new StringBuilder();
        void Line(string s = "") => sb.Append(s).Append('\n');
        string F(double v, int digits) => v.ToString("F" + digits, inv);
        string N(double v) => v.ToString("N0", inv);
        double batch = Options.Batch;
        double modelFlops = FlopsPerImage * batch;
        double step = StepSeconds(main);
        var config = Models.SiTConfig.Preset(Options.Model);
        IEnumerable<KernelCall> OnDevice(Trace t) => t.Calls.Where(c => c.Unit != ComputeUnit.Host);

        Line($"# Training-step estimate: {Options.Model} + REPA, batch {Options.Batch}, on an {m.Device} (on paper)");
        Line();
        Line("Generated from the code, not written by hand: `StepEstimate` (src/Repa.Runtime/Training/StepEstimate.cs) runs the real");
        Line("`Trainer` (model, objective, backward, AdamW with the norm clip, EMA) on `CostBackend` (src/Repa.Kernels/Profiling/CostBackend.cs:");
        Line("no memory, no arithmetic; every call recorded with the CUDA backend's launches, FLOPs and DRAM bytes, a captured graph's");
        Line("calls again at each replay) and prices a steady-state step with `StepCostModel`: the third with the CUDA graph (eager,");
        Line("captured, replayed), the second without. Regenerate with");
        Line();
        Line($"    {Command}");
        Line();
        Line("(`CostEstimateTests` fails when this file is stale). No GPU has measured any of it.");
        Line();
        Line("## Setup");
        Line($"- {Options.Model}: depth {config.Depth}, hidden {config.HiddenSize}, {config.NumHeads} heads; {Options.ImageSize}x{Options.ImageSize}x{Channels} latents " +
             $"(256x256 images through the SD-VAE), {(config with { InputSize = Options.ImageSize }).Tokens} tokens; {N(ParameterCount)} parameters.");
        Line($"- REPA: one projector (width {config.ProjectorDim}) onto z_dim {ZDim} after block {Options.EncoderDepth}, cosine loss, proj_coeff {F(Options.Objective.ProjCoeff, 1)}; " +
             $"linear path, batch {Options.Batch}, AdamW with the global norm clip, EMA. Encoder targets are uploaded as fp32 (the encoder itself is not part of the step).");
        Line($"- Activation dtype the Trainer uses (`train --mixed-precision {main.Setting}`, the default, on a CUDA device): **{main.ActivationType.Name()}**.");
        Line($"- Model FLOPs (`Trainer.FlopsPerImage`, what `train` divides by): {F(FlopsPerImage / 1e9, 1)} GFLOP per image, {F(modelFlops / 1e12, 1)} TFLOP per step.");
        int headDim = config.HiddenSize / config.NumHeads, hd16 = (headDim + 15) / 16 * 16, hd8 = (headDim + 7) / 8 * 8;
        bool mma = main.Calls.Any(c => c.Unit == ComputeUnit.TensorCores);
        Line($"- Recorded: {F(GemmFlops(main) / 1e12, 1)} TFLOP in GEMMs, {F(AttentionFlops(main) / 1e12, 1)} TFLOP in attention as executed " +
             (mma
                 ? $"(tensor-core kernels: a product's inner size head_dim {headDim} padded to {hd16}, its n to {hd8}, S and dP recomputed in both backward passes: " +
                   $"2 N H T^2 (5 x {hd16} + 4 x {hd8}) in all, against the 12 N H T^2 x {headDim} of `FlopsPerImage`)."
                 : "(the backward recomputes S and dP in both passes: 18 N H T^2 hd in all, against the 12 of `FlopsPerImage`)."));
        Line();
        Line("Columns:");
        foreach (var t in Traces)
            Line($"- **{t.Name}**: `--mixed-precision {t.Setting}`, " +
                 (t.Graph ? "the step a replayed CUDA graph (`--cuda-graph true`, the default), " : "`--cuda-graph false` (every kernel launched from C#), ") +
                 $"{t.ActivationType.Name()} activations" +
                 (t.ActivationType == DType.F32 ? "; GEMMs are cuBLAS fp32 with CUBLAS_COMPUTE_32F, i.e. CUDA cores, no TF32."
                     : $"; GEMMs on {t.ActivationType.Name()} tensor cores; fp32 master weights cast on use, fp32 statistics and losses."));
        Line();
        Line("## Cost model (stated assumptions)");
        Line($"- Per call: max(bytes / ({F(m.MemoryBandwidth / 1e12, 1)} TB/s x {F(m.MemoryEfficiency, 2)}), FLOPs / rate, launches x floor) " +
             $"+ {F(m.SynchronizationCost * 1e6, 0)} µs per synchronisation (a read-back drains the stream); calls run back to back (one stream, no overlap). " +
             "Launches count kernels, memsets and device-to-device copies.");
        Line($"- Launch floor: {F(m.LaunchFloor * 1e6, 0)} µs per kernel launched from C# (the eager column, and the one cuGraphLaunch per step); " +
             $"{F(m.GraphNodeFloor * 1e6, 0)} µs per node of a replayed graph: no host work per kernel, but each grid still starts after the previous " +
             "one drains (NVIDIA's \"Getting Started with CUDA Graphs\" measured ~2.9 µs kernels at 3.4 µs each from a graph against 3.8 µs from a stream, " +
             "so under 1 µs of overhead per node; 1 µs is a cautious round figure).");
        Line($"- GEMM rate: bf16 tensor cores at {F(m.GemmEfficiency, 2)} x {F(m.TensorPeak / 1e12, 0)} TFLOP/s = {F(m.TensorPeak * m.GemmEfficiency / 1e12, 0)} TFLOP/s; " +
             $"fp32 (CUBLAS_COMPUTE_32F, no TF32) on CUDA cores at {F(m.Fp32GemmEfficiency, 2)} x {F(m.Fp32Peak / 1e12, 0)} TFLOP/s = {F(m.Fp32Peak * m.Fp32GemmEfficiency / 1e12, 1)} TFLOP/s.");
        Line($"- Attention (kernels/attention.cu), the kernels `CudaBackend.AttentionUsesTensorCores` picks: bf16 on the tensor-core kernels " +
             $"(`attention_*_mma_bf16*`, mma.sync) at {F(100 * m.AttentionMmaForwardEfficiency, 0)}% (forward) and {F(100 * m.AttentionMmaBackwardEfficiency, 0)}% (backward) " +
             $"of {F(m.TensorPeak / 1e12, 0)} TFLOP/s = {F(m.TensorPeak * m.AttentionMmaForwardEfficiency / 1e12, 0)} / {F(m.TensorPeak * m.AttentionMmaBackwardEfficiency / 1e12, 0)} TFLOP/s " +
             "(docs/notes/cuda.md's assumption: FlashAttention-2's tuned mma.sync kernels reach ~35% of an H100's dense bf16 peak; ours have no ldmatrix or cp.async); " +
             $"fp32 (and a bf16 backward with head_dim above 80) on CUDA cores in fp32: {F(m.AttentionEfficiency, 2)} x the " +
             $"{F(m.Fp32Peak / 1e12, 0)} TFLOP/s fp32 non-tensor peak = {F(m.Fp32Peak * m.AttentionEfficiency / 1e12, 1)} TFLOP/s.");
        Line("- Bytes are DRAM traffic: each element a kernel reads or writes once at its buffer's element size, accumulated gradients read " +
             "and written, re-reads inside a kernel (LayerNorm's passes over a row, attention's K/V tiles, broadcast operands) from cache.");
        Line($"- Host transfers (batch, noise, labels, times, encoder targets and the optimiser's step scalars up before the step; the four loss figures " +
             $"and the squared gradient norm down after it) at {F(m.HostBandwidth / 1e9, 0)} GB/s, not overlapped.");
        Line($"- MFU = model FLOPs / (step time x {F(m.TensorPeak / 1e12, 0)} TFLOP/s), the dense bf16 rate measured on an H100, for every column.");
        Line();

        Line("## Headline");
        Line("| | " + string.Join(" | ", Traces.Select(t => t.Name)) + " |");
        Line("| --- |" + string.Concat(Traces.Select(_ => " ---: |")));
        Line("| step time (ms) | " + string.Join(" | ", Traces.Select(t => F(1e3 * StepSeconds(t), 1))) + " |");
        Line("| images/s | " + string.Join(" | ", Traces.Select(t => F(batch / StepSeconds(t), 0))) + " |");
        Line("| MFU | " + string.Join(" | ", Traces.Select(t => F(100 * Mfu(t), 1) + "%")) + " |");
        Line("| launches | " + string.Join(" | ", Traces.Select(t => N(OnDevice(t).Sum(c => c.Launches)))) + " |");
        Line("| synchronisations | " + string.Join(" | ", Traces.Select(t => N(t.Calls.Sum(c => c.Synchronizations)))) + " |");
        Line("| device DRAM traffic (GB) | " + string.Join(" | ", Traces.Select(t => F(OnDevice(t).Sum(c => c.Bytes) / 1e9, 1))) + " |");
        Line();

        Line("## Per op family");
        Table("family", c => [c.Family], withCalls: false);
        Line("## Per kind of call");
        Table("family | kind", c => [c.Family, c.Kind], withCalls: true);
        Line("## GEMM shapes (row-major C[m, n] = op(A) op(B), k the inner size)");
        Table("shape", c => c.Unit == ComputeUnit.Gemm ? [c.Shape] : null, withCalls: true);

        Line("## What dominates, and what 50% MFU needs");
        var families = main.Calls.GroupBy(c => c.Family).Select(g => (g.Key, Seconds: g.Sum(m.Seconds))).OrderByDescending(f => f.Seconds).ToList();
        Line($"In the **{main.Name}** column the step takes {F(1e3 * step, 1)} ms ({F(100 * Mfu(main), 1)}% MFU); the three largest costs:");
        foreach (var (family, seconds) in families.Take(3))
            Line($"- {family}: {F(1e3 * seconds, 1)} ms ({F(100 * seconds / step, 0)}%)");
        double target = modelFlops / (0.5 * m.TensorPeak);
        double gemm = main.Calls.Where(c => c.Unit == ComputeUnit.Gemm).Sum(m.Seconds);
        double attention = main.Calls.Where(c => c.Family == "attention").Sum(m.Seconds);
        double rest = step - gemm - attention;
        string MfuAt(double seconds, StepCostModel model) => F(100 * modelFlops / (seconds * model.TensorPeak), 1) + "%";
        Line();
        Line($"50% MFU means a step of at most {F(1e3 * target, 1)} ms. The GEMMs alone take {F(1e3 * gemm, 1)} ms, leaving {F(1e3 * (target - gemm), 1)} ms " +
             $"for everything else, which costs {F(1e3 * (step - gemm), 1)} ms here (attention {F(1e3 * attention, 1)} ms, the rest {F(1e3 * rest, 1)} ms)" +
             (step <= target ? ": the estimate meets it." : ". What it would take:"));
        if (Traces.FirstOrDefault(t => !t.Graph && t.ActivationType == main.ActivationType) is { } eager && main.Graph)
            Line($"- The CUDA graph is already in: launched kernel by kernel (`--cuda-graph false`) the same step takes {F(1e3 * StepSeconds(eager), 1)} ms " +
                 $"({F(100 * Mfu(eager), 1)}% MFU); the {F(1e3 * (StepSeconds(eager) - step), 1)} ms between the two are launch floors " +
                 $"({N(OnDevice(eager).Sum(c => c.Launches))} launches at {F(m.LaunchFloor * 1e6, 0)} µs against graph nodes at {F(m.GraphNodeFloor * 1e6, 0)} µs) " +
                 "and the eager step's read-backs.");
        if (mma)
        {
            var flashAttention2 = m with { AttentionMmaForwardEfficiency = 0.35, AttentionMmaBackwardEfficiency = 0.35 };
            double tuned = main.Calls.Where(c => c.Family == "attention").Sum(flashAttention2.Seconds);
            Line($"- Attention on tensor cores: {F(1e3 * attention, 1)} ms at the assumed {F(100 * m.AttentionMmaForwardEfficiency, 0)}% / " +
                 $"{F(100 * m.AttentionMmaBackwardEfficiency, 0)}%; at FlashAttention-2's ~35% for both passes (ldmatrix, cp.async double buffering) " +
                 $"{F(1e3 * tuned, 1)} ms, step {F(1e3 * (step - attention + tuned), 1)} ms, {MfuAt(step - attention + tuned, m)} MFU.");
        }
        double restBudget = target - gemm - attention;
        var optimLaunches = main.Calls.Where(c => c.Family == "optim").Sum(c => c.Launches);
        Line($"- The bandwidth-bound rest ({F(1e3 * rest, 1)} ms) must fit in {F(1e3 * restBudget, 1)} ms" +
             (restBudget < rest
                 ? $": {F(100 * (1 - Math.Max(restBudget, 0) / rest), 0)}% less traffic and launches. Candidates, by the rows above: gradients written instead of " +
                   "zero-filled and then accumulated into (`Fill`), GELU's backward in the input-gradient GEMM's epilogue (cuBLASLt DGELU; `GeluBackward`), " +
                   "LayerNorm and the gated residual fused with their neighbours (the norm family), a bf16 weight copy written by AdamW instead of casts on " +
                   $"use (`Convert`, `Axpby`), AdamW/EMA/the squared norm over one parameter arena (a few launches instead of {N(optimLaunches)}), " +
                   "and the host uploads overlapped with compute."
                 : ": it already does."));
        Line($"- GEMMs at {F(100 * m.GemmEfficiency, 0)}% of {F(m.TensorPeak / 1e12, 0)} TFLOP/s cap MFU at {F(100 * modelFlops / (gemm * m.TensorPeak), 0)}% even with everything else free.");
        // How much the figure hangs on the guessed efficiencies.
        string With(StepCostModel variant) => MfuAt(main.Calls.Sum(variant.Seconds), variant);
        Line($"- Sensitivity of the {main.Name} MFU ({F(100 * Mfu(main), 1)}%) to the guesses: GEMMs at 70% / 90% of {F(m.TensorPeak / 1e12, 0)} TFLOP/s give " +
             $"{With(m with { GemmEfficiency = 0.7 })} / {With(m with { GemmEfficiency = 0.9 })}; the bandwidth-bound kernels at 60% / 100% of " +
             $"{F(m.MemoryBandwidth / 1e12, 1)} TB/s give {With(m with { MemoryEfficiency = 0.6 })} / {With(m with { MemoryEfficiency = 1.0 })}; " +
             $"tensor-core attention at half / 1.5x its assumed efficiency gives " +
             $"{With(m with { AttentionMmaForwardEfficiency = m.AttentionMmaForwardEfficiency / 2, AttentionMmaBackwardEfficiency = m.AttentionMmaBackwardEfficiency / 2 })} / " +
             $"{With(m with { AttentionMmaForwardEfficiency = m.AttentionMmaForwardEfficiency * 1.5, AttentionMmaBackwardEfficiency = m.AttentionMmaBackwardEfficiency * 1.5 })}; " +
             $"graph nodes at {F(m.GraphNodeFloor * 2e6, 0)} µs give {With(m with { GraphNodeFloor = 2 * m.GraphNodeFloor })}.");
        Line();
        Line("## Limits of this estimate");
        Line("- Nothing here is measured. The efficiencies above are guesses to be replaced by timings on a GPU.");
        Line("- One GEMM efficiency for every shape (the small adaLN GEMMs, M = batch, come out bandwidth-bound by the roofline anyway); " +
             "no L2 reuse between kernels (the activations, 75.5 M elements each, exceed the 50 MB L2); no overlap of transfers and compute.");
        Line("- Host work is not counted: the batch, noise and time draws (Philox on the CPU), the data loading, the C# side of each eager launch " +
             "beyond the launch floor (assumed hidden behind running kernels except at synchronisations), the graph's one-time capture and instantiation, " +
             "and the REPA encoder (its targets are cached, as `EncoderTargets` does).");
        return sb.ToString();

        // One row per key (null: not in this table), columns per trace; sorted by the default trace's time.
        void Table(string keys, Func<KernelCall, string[]?> key, bool withCalls)
        {
            var rows = new Dictionary<string, (string[] Key, List<KernelCall>[] PerTrace)>(StringComparer.Ordinal);
            for (int i = 0; i < Traces.Count; i++)
                foreach (var call in Traces[i].Calls)
                {
                    if (key(call) is not { } k) continue;
                    string id = string.Join("\u0001", k);
                    if (!rows.TryGetValue(id, out var row))
                        rows[id] = row = (k, Enumerable.Range(0, Traces.Count).Select(_ => new List<KernelCall>()).ToArray());
                    row.PerTrace[i].Add(call);
                }
            var header = new List<string>(keys.Split(" | "));
            if (withCalls) header.AddRange(Traces.Select(t => $"calls {t.Name}"));
            header.AddRange(Traces.Select(t => $"launches {t.Name}"));
            header.Add("GFLOP");
            header.AddRange(Traces.Select(t => $"GB {t.Name}"));
            header.AddRange(Traces.Select(t => $"ms {t.Name}"));
            header.Add($"% of {main.Name} step");
            int keyColumns = keys.Split(" | ").Length;
            Line("| " + string.Join(" | ", header) + " |");
            Line("|" + string.Concat(header.Select((_, i) => i < keyColumns ? " --- |" : " ---: |")));
            var ordered = rows.Values
                .OrderByDescending(r => r.PerTrace[0].Sum(m.Seconds))
                .ThenByDescending(r => r.PerTrace.Sum(list => list.Sum(m.Seconds)))
                .ThenBy(r => string.Join(" ", r.Key), StringComparer.Ordinal);
            void Row(string[] k, List<KernelCall>[] perTrace)
            {
                var cells = new List<string>(k);
                if (withCalls) cells.AddRange(perTrace.Select(list => N(list.Count)));
                cells.AddRange(perTrace.Select(list => N(list.Sum(c => c.Launches))));
                cells.Add(F(perTrace[0].Sum(c => c.Flops) / 1e9, 1));
                cells.AddRange(perTrace.Select(list => F(list.Sum(c => c.Bytes) / 1e9, 2)));
                cells.AddRange(perTrace.Select(list => F(1e3 * list.Sum(m.Seconds), 2)));
                cells.Add(F(100 * perTrace[0].Sum(m.Seconds) / step, 1));
                Line("| " + string.Join(" | ", cells) + " |");
            }
            foreach (var (k, perTrace) in ordered) Row(k, perTrace);
            if (!withCalls)
            {
                var all = Enumerable.Range(0, Traces.Count).Select(i => Traces[i].Calls.Where(c => key(c) != null).ToList()).ToArray();
                Row(["**total**"], all);
            }
            Line();
        }
    }
}
