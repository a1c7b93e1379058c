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

    /// <summary>A pricing of the trace: element sizes per buffer and whether GEMMs run on tensor cores.</summary>
    public sealed record Column(string Name, string Description, Func<DeviceBuffer, int> ElementSize, bool TensorCoreGemms);

    private StepEstimate(TrainOptions options, int channels, int zDim, IReadOnlyList<KernelCall> calls, double flopsPerImage,
        long parameters, DType activations, IReadOnlyList<Column> columns, StepCostModel model)
    {
        Options = options;
        Channels = channels;
        ZDim = zDim;
        Calls = calls;
        FlopsPerImage = flopsPerImage;
        ParameterCount = parameters;
        ActivationType = activations;
        Columns = columns;
        Model = model;
    }

    public TrainOptions Options { get; }
    public int Channels { get; }
    public int ZDim { get; }

    /// <summary>The recorded calls of the measured (second) step.</summary>
    public IReadOnlyList<KernelCall> Calls { get; }

    /// <summary><see cref="Trainer.FlopsPerImage"/> of the configuration (what `train` divides by for MFU).</summary>
    public double FlopsPerImage { get; }

    public long ParameterCount { get; }

    /// <summary>The element type of the step's activations, as the Trainer allocated them.</summary>
    public DType ActivationType { get; }

    /// <summary>The pricings: the trace as recorded, plus a bf16-activation one when the trace is fp32.</summary>
    public IReadOnlyList<Column> Columns { get; }

    public StepCostModel Model { get; }

    /// <summary>
    /// Runs two steps of SiT-XL/2 + REPA (one projector of width 2048 onto z_dim 768 after block 8) at 256x256 px (32x32x4
    /// SD-VAE latents, 1000 classes), batch 256, on a <see cref="CostBackend"/> and records the second (steady state:
    /// gradients exist and are zeroed, as in every later step). Other options override the defaults.
    /// </summary>
    public static StepEstimate Run(TrainOptions? options = null, int channels = 4, int numClasses = 1000, int zDim = 768,
        StepCostModel? model = null)
    {
        options ??= new TrainOptions { Model = "SiT-XL/2", Batch = 256, ImageSize = 32, EncoderDepth = 8, Steps = 2 };
        using var backend = new CostBackend();
        var data = new ShapeOnlyData(channels, options.ImageSize, numClasses);
        int tokens = SiTTokens(options);
        var targets = new ZeroTargets(tokens, zDim);
        using var trainer = new Trainer(backend, options, data, options.Objective.ProjCoeff > 0 ? targets : null);
        long stepStart = backend.AllocationCount; // parameters, moments and EMA exist from here on
        using var tape = new Tape();
        trainer.Step(1, tape);
        backend.Clear();
        trainer.Step(2, tape);
        var calls = backend.Calls.ToList();
        var gradients = trainer.Model.Parameters().Where(p => p.Grad != null).Select(p => p.Grad!.Buffer).ToHashSet();
        tape.Reset();

        // Activations: buffers the step itself rents (not gradients of parameters, not the backends' fp32 scratch).
        bool IsActivation(DeviceBuffer b) => b is CostBackend.CostBuffer c && c.Serial >= stepStart && !c.IsScratch && !gradients.Contains(b);
        var activationType = calls.Where(c => c.Unit != ComputeUnit.Host).SelectMany(c => c.Traffic)
            .Where(t => IsActivation(t.Buffer) && t.Buffer.DType.IsFloatingPoint())
            .GroupBy(t => t.Buffer.DType).OrderByDescending(g => g.Sum(t => t.Elements)).First().Key;
        var columns = new List<Column>
        {
            new(activationType == DType.F32 ? "fp32" : activationType.Name(),
                $"the trace as the code runs today ({activationType.Name()} activations" +
                (activationType == DType.F32 ? "; GEMMs are cuBLAS fp32 with CUBLAS_COMPUTE_32F, i.e. CUDA cores, no TF32)" : ")"),
                b => b.DType.SizeInBytes(), activationType == DType.BF16),
        };
        if (activationType == DType.F32)
            columns.Add(new Column("bf16",
                "the same calls with every fp32 activation buffer's element size halved (parameters, their gradients, AdamW " +
                "moments, EMA and the kernels' fp32 scratch stay fp32) and GEMMs on bf16 tensor cores: mixed precision, not merged yet",
                b => IsActivation(b) && b.DType == DType.F32 ? 2 : b.DType.SizeInBytes(), true));
        return new StepEstimate(options, channels, zDim, calls, trainer.FlopsPerImage, trainer.Model.ParameterCount, activationType,
            columns, model ?? new StepCostModel());
    }

    private static int SiTTokens(TrainOptions options)
    {
        var config = Models.SiTConfig.Preset(options.Model) with { InputSize = options.ImageSize };
        return config.Tokens;
    }

    /// <summary>Seconds of the whole step in a column.</summary>
    public double StepSeconds(Column column) => Calls.Sum(c => Seconds(c, column));

    /// <summary>Seconds of one call in a column.</summary>
    public double Seconds(KernelCall call, Column column) => Model.Seconds(call, call.BytesWith(column.ElementSize), column.TensorCoreGemms);

    /// <summary>Model FLOP utilisation: FlopsPerImage x batch / (step time x <see cref="StepCostModel.TensorPeak"/>).</summary>
    public double Mfu(Column column) => FlopsPerImage * Options.Batch / (StepSeconds(column) * Model.TensorPeak);

    /// <summary>FLOPs of the recorded GEMM calls.</summary>
    public double GemmFlops => Calls.Where(c => c.Unit == ComputeUnit.Gemm).Sum(c => c.Flops);

    /// <summary>FLOPs of the recorded attention calls (as executed: the backward recomputes).</summary>
    public double AttentionFlops => Calls.Where(c => c.Family == "attention").Sum(c => c.Flops);

    /// <summary>docs/notes/cuda-estimate.md.</summary>
    public string Markdown()
    {
        var inv = CultureInfo.InvariantCulture;
        var m = Model;
        var sb = new StringBuilder();
        void Line(string s = "") => sb.Append(s).Append('\n');
        string F(double v, int digits) => v.ToString("F" + digits, inv);
        string Gb(long bytes) => F(bytes / 1e9, 2);
        double batch = Options.Batch;
        double modelFlops = FlopsPerImage * batch;
        var device = Calls.Where(c => c.Unit != ComputeUnit.Host).ToList();

        Line($"# Training-step estimate: {Options.Model} + REPA, batch {Options.Batch}, on an {m.Device} (on paper)");
        Line();
        Line("Generated from the code, not written by hand: `StepEstimate` (src/Repa.Runtime/Training/StepEstimate.cs) runs the real");
        Line("`Trainer` (model, objective, backward, AdamW with the norm clip, EMA) for two steps on `CostBackend`");
        Line("(src/Repa.Kernels/Profiling/CostBackend.cs: no memory, no arithmetic; every call recorded with the CUDA backend's");
        Line("launches, FLOPs and DRAM bytes) and prices the second step with `StepCostModel`. Regenerate with");
        Line();
        Line($"    {Command}");
        Line();
        Line("(`CostEstimateTests` fails when this file is stale). No GPU has measured any of it.");
        Line();
        Line("## Setup");
        var config = Models.SiTConfig.Preset(Options.Model);
        Line($"- {Options.Model}: depth {config.Depth}, hidden {config.HiddenSize}, {config.NumHeads} heads; {Options.ImageSize}x{Options.ImageSize}x{Channels} latents " +
             $"(256x256 images through the SD-VAE), {SiTTokens(Options)} tokens; {ParameterCount.ToString("N0", inv)} parameters.");
        Line($"- REPA: one projector (width {config.ProjectorDim}) onto z_dim {ZDim} after block {Options.EncoderDepth}, cosine loss, proj_coeff {F(Options.Objective.ProjCoeff, 1)}; " +
             $"linear path, batch {Options.Batch}, AdamW with the global norm clip, EMA. Encoder targets are uploaded as fp32 (the encoder itself is not part of the step).");
        Line($"- Activation dtype the Trainer uses: **{ActivationType.Name()}**.");
        Line($"- Model FLOPs (`Trainer.FlopsPerImage`, what `train` divides by): {F(FlopsPerImage / 1e9, 1)} GFLOP per image, {F(modelFlops / 1e12, 1)} TFLOP per step.");
        Line($"- Recorded: {F(GemmFlops / 1e12, 1)} TFLOP in GEMMs, {F(AttentionFlops / 1e12, 1)} TFLOP in attention as executed " +
             $"(the backward recomputes S and dP in both passes: 18 N H T^2 hd in all, against the 12 of `FlopsPerImage`), " +
             $"{device.Sum(c => c.Launches).ToString("N0", inv)} kernel launches.");
        Line();
        Line("Columns:");
        foreach (var col in Columns) Line($"- **{col.Name}**: {col.Description}.");
        Line();
        Line("## Cost model (stated assumptions)");
        Line($"- Per call: max(bytes / ({F(m.MemoryBandwidth / 1e12, 1)} TB/s x {F(m.MemoryEfficiency, 2)}), FLOPs / rate, launches x {F(m.LaunchFloor * 1e6, 0)} µs) " +
             $"+ {F(m.SynchronizationCost * 1e6, 0)} µs per synchronisation (a read-back drains the stream); calls run back to back (one stream, no overlap). " +
             "Launches count kernels, memsets and device-to-device copies.");
        Line($"- GEMM rate: bf16 tensor cores at {F(m.GemmEfficiency, 2)} x {F(m.TensorPeak / 1e12, 0)} TFLOP/s = {F(m.TensorPeak * m.GemmEfficiency / 1e12, 0)} TFLOP/s; " +
             $"fp32 (CUBLAS_COMPUTE_32F, no TF32) on CUDA cores at {F(m.Fp32GemmEfficiency, 2)} x {F(m.Fp32Peak / 1e12, 0)} TFLOP/s = {F(m.Fp32Peak * m.Fp32GemmEfficiency / 1e12, 1)} TFLOP/s.");
        Line($"- Attention (kernels/attention.cu) runs on CUDA cores, not tensor cores, in fp32 whatever the storage type: {F(m.AttentionEfficiency, 2)} x the " +
             $"{F(m.Fp32Peak / 1e12, 0)} TFLOP/s fp32 non-tensor peak = {F(m.Fp32Peak * m.AttentionEfficiency / 1e12, 1)} TFLOP/s.");
        Line("- Bytes are DRAM traffic: each element a kernel reads or writes once at its buffer's element size, accumulated gradients read " +
             "and written, re-reads inside a kernel (LayerNorm's passes over a row, attention's K/V tiles, broadcast operands) from cache.");
        Line($"- Host transfers (batch, noise, labels, times and encoder targets up; the losses down) at {F(m.HostBandwidth / 1e9, 0)} GB/s, not overlapped.");
        Line($"- MFU = model FLOPs / (step time x {F(m.TensorPeak / 1e12, 0)} TFLOP/s), the dense bf16 rate measured on an H100.");
        Line();

        Line("## Headline");
        Line("| | " + string.Join(" | ", Columns.Select(c => c.Name)) + " |");
        Line("| --- |" + string.Concat(Columns.Select(_ => " ---: |")));
        Line("| step time (ms) | " + string.Join(" | ", Columns.Select(c => F(1e3 * StepSeconds(c), 1))) + " |");
        Line("| images/s | " + string.Join(" | ", Columns.Select(c => F(batch / StepSeconds(c), 0))) + " |");
        Line("| MFU | " + string.Join(" | ", Columns.Select(c => F(100 * Mfu(c), 1) + "%")) + " |");
        Line($"| launches | {device.Sum(c => c.Launches).ToString("N0", inv)}" + string.Concat(Columns.Skip(1).Select(_ => " | same")) + " |");
        Line($"| synchronisations | {Calls.Sum(c => c.Synchronizations).ToString("N0", inv)}" + string.Concat(Columns.Skip(1).Select(_ => " | same")) + " |");
        Line("| device DRAM traffic (GB) | " + string.Join(" | ", Columns.Select(c => Gb(device.Sum(k => k.BytesWith(c.ElementSize))))) + " |");
        Line();

        Line("## Per op family");
        TableHeader(sb, "family", "launches");
        foreach (var g in Calls.GroupBy(c => c.Family).OrderByDescending(g => g.Sum(c => Seconds(c, Columns[^1]))))
            Row(sb, [g.Key], g.ToList());
        Row(sb, ["**total**"], Calls.ToList());
        Line();

        Line("## Per kind of call");
        TableHeader(sb, "family | kind", "calls | launches");
        foreach (var g in Calls.GroupBy(c => (c.Family, c.Kind)).OrderByDescending(g => g.Sum(c => Seconds(c, Columns[^1]))).ThenBy(g => g.Key.Family, StringComparer.Ordinal).ThenBy(g => g.Key.Kind, StringComparer.Ordinal))
            Row(sb, [g.Key.Family, g.Key.Kind], g.ToList(), calls: true);
        Line();

        Line("## GEMM shapes (row-major C[m, n] = op(A) op(B), k the inner size)");
        TableHeader(sb, "shape", "calls | launches");
        foreach (var g in Calls.Where(c => c.Unit == ComputeUnit.Gemm).GroupBy(c => c.Shape).OrderByDescending(g => g.Sum(c => Seconds(c, Columns[^1]))).ThenBy(g => g.Key, StringComparer.Ordinal))
            Row(sb, [g.Key], g.ToList(), calls: true);
        Line();

        Line("## What dominates, and what 50% MFU needs");
        var last = Columns[^1];
        double step = StepSeconds(last);
        var families = Calls.GroupBy(c => c.Family).Select(g => (g.Key, Seconds: g.Sum(c => Seconds(c, last)))).OrderByDescending(f => f.Seconds).ToList();
        Line($"In the **{last.Name}** column the step takes {F(1e3 * step, 1)} ms ({F(100 * Mfu(last), 1)}% MFU); the three largest costs:");
        foreach (var (family, seconds) in families.Take(3))
            Line($"- {family}: {F(1e3 * seconds, 1)} ms ({F(100 * seconds / step, 0)}%)");
        double target = modelFlops / (0.5 * m.TensorPeak);
        double gemm = Calls.Where(c => c.Unit == ComputeUnit.Gemm).Sum(c => Seconds(c, last));
        double attention = Calls.Where(c => c.Family == "attention").Sum(c => Seconds(c, last));
        double rest = step - gemm - attention;
        Line();
        Line($"50% MFU means a step of at most {F(1e3 * target, 1)} ms. The GEMMs alone take {F(1e3 * gemm, 1)} ms at " +
             $"{F(m.TensorPeak * m.GemmEfficiency / 1e12, 0)} TFLOP/s, leaving {F(1e3 * (target - gemm), 1)} ms for everything else, which today costs " +
             $"{F(1e3 * (step - gemm), 1)} ms (attention {F(1e3 * attention, 1)} ms, the rest {F(1e3 * rest, 1)} ms). What it would take:");
        double tensorAttention = AttentionFlops / (0.5 * m.TensorPeak);
        double minimalAttention = AttentionFlops * (4.0 + 10.0) / (4.0 + 14.0) / (0.5 * m.TensorPeak);
        double withTc = step - attention + tensorAttention;
        Line($"- Tensor-core flash attention (bf16 `mma.sync`/`wgmma`) at 50% of {F(m.TensorPeak / 1e12, 0)} TFLOP/s: {F(1e3 * tensorAttention, 1)} ms instead of " +
             $"{F(1e3 * attention, 1)} ms (with the minimal 10 N H T^2 hd backward {F(1e3 * minimalAttention, 1)} ms): step {F(1e3 * withTc, 1)} ms, " +
             $"{F(100 * modelFlops / (withTc * m.TensorPeak), 1)}% MFU. This is the one change that matters most.");
        double restBudget = target - gemm - tensorAttention;
        Line($"- Then the bandwidth-bound rest ({F(1e3 * rest, 1)} ms) must fit in {F(1e3 * restBudget, 1)} ms" +
             (restBudget < rest ? $": about {F(rest / Math.Max(restBudget, 1e-9), 1)}x less traffic and launches, e.g. the bias add and GELU fused into the GEMM epilogue " +
                                  "(cuBLASLt), LayerNorm fused with the following GEMM's input, AdamW/EMA/norm over one parameter arena (3 launches instead of ~" +
                                  $"{Calls.Where(c => c.Family == "optim").Sum(c => c.Launches)}), gradients written rather than zero-filled and then accumulated into (the Fill rows), a CUDA graph for the launch floor, and the host uploads overlapped with compute."
                                : ": it already does."));
        Line($"- GEMMs at {F(100 * m.GemmEfficiency, 0)}% of {F(m.TensorPeak / 1e12, 0)} TFLOP/s cap MFU at {F(100 * modelFlops / (gemm * m.TensorPeak), 0)}% even with everything else free.");
        Line();
        Line("## Limits of this estimate");
        Line("- Nothing here is measured. The efficiencies above are guesses to be replaced by timings on a GPU.");
        Line("- One GEMM efficiency for every shape (the small adaLN GEMMs, M = batch, come out bandwidth-bound by the roofline anyway); " +
             "no L2 reuse between kernels (the activations, ~300 MB each in fp32, exceed the 50 MB L2); no overlap of transfers and compute.");
        if (Columns.Count > 1)
            Line("- The bf16 column is a re-pricing, not a trace of mixed-precision code: GEMMs read the fp32 master weights (a real bf16 path " +
                 $"reads a bf16 copy and pays a cast per step: {F(ParameterCount * 6 / 1e9, 1)} GB, " +
                 $"{F(1e3 * ParameterCount * 6 / (m.MemoryBandwidth * m.MemoryEfficiency), 1)} ms), and the few small fp32 statistics the kernels keep " +
                 "(LayerNorm mean/rstd, the attention lse, per-sample losses) are halved with the activations (well under a millisecond).");
        Line("- Host work is not counted: the batch, noise and time draws (Philox on the CPU), the data loading, the C# side of each launch " +
             "(assumed hidden behind running kernels except at synchronisations), and the REPA encoder (its targets are cached, as `EncoderTargets` does).");
        return sb.ToString();

        void TableHeader(StringBuilder s, string keys, string counts)
        {
            s.Append($"| {keys} | {counts} | GFLOP | ").Append(string.Join(" | ", Columns.Select(c => $"GB {c.Name}"))).Append(" | ")
                .Append(string.Join(" | ", Columns.Select(c => $"ms {c.Name}"))).Append($" | % of {Columns[^1].Name} step |\n");
            int cells = keys.Split('|').Length + counts.Split('|').Length + 1 + 2 * Columns.Count + 1;
            s.Append('|').Append(string.Concat(Enumerable.Range(0, cells).Select(i => i < keys.Split('|').Length ? " --- |" : " ---: |"))).Append('\n');
        }

        void Row(StringBuilder s, string[] keys, List<KernelCall> group, bool calls = false)
        {
            s.Append("| ").Append(string.Join(" | ", keys)).Append(" | ");
            if (calls) s.Append(group.Count.ToString(inv)).Append(" | ");
            s.Append(group.Sum(c => c.Launches).ToString(inv)).Append(" | ").Append(F(group.Sum(c => c.Flops) / 1e9, 1)).Append(" | ");
            s.Append(string.Join(" | ", Columns.Select(c => Gb(group.Sum(k => k.BytesWith(c.ElementSize)))))).Append(" | ");
            s.Append(string.Join(" | ", Columns.Select(c => F(1e3 * group.Sum(k => Seconds(k, c)), 2)))).Append(" | ");
            s.Append(F(100 * group.Sum(k => Seconds(k, Columns[^1])) / StepSeconds(Columns[^1]), 1)).Append(" |\n");
        }
    }

    /// <summary>Inputs of the right shape and no content: the trace depends on shapes only.</summary>
    private sealed class ShapeOnlyData(int channels, int size, int classes) : TrainingData
    {
        public override int Count => 1_281_167;
        public override int Channels => channels;
        public override int Size => size;
        public override int NumClasses => classes;
        public override string Identity => "shape-only";
        public override string Description => $"shape-only [{channels}, {size}, {size}] inputs, {classes} classes";
        public override int ImageChannels => 3;
        public override int ImageHeight => 256;
        public override int ImageWidth => 256;
        protected override void FillBatchCore(ReadOnlySpan<int> indices, Span<float> inputs, Span<int> labels, ulong seed, ulong step) { }
        protected override void FillImagesCore(ReadOnlySpan<int> indices, Span<byte> images) { }
    }

    /// <summary>Encoder targets of the right shape, uploaded as fp32 as <see cref="EncoderTargets"/> uploads them.</summary>
    private sealed class ZeroTargets(int tokens, int dim) : ITargetProvider
    {
        public int Tokens => tokens;
        public int Dim => dim;
        public string Description => $"zeros [{tokens}, {dim}]";
        public Tensor Targets(ReadOnlySpan<int> indices, IBackend backend, DType dtype) =>
            Tensor.FromArray(backend, new float[indices.Length * tokens * dim], indices.Length, tokens, dim);
    }
}
