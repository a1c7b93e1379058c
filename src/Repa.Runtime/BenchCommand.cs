using System.Globalization;
using System.Text.Json;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cuda;
using Repa.Runtime.Data;
using Repa.Runtime.Models;
using Repa.Runtime.Training;

namespace Repa.Runtime;

/// <summary>
/// `Repa.Runtime bench`: times full training steps (forward, backward, clip, AdamW, EMA; REPA on) of any preset on
/// the chosen device with synthetic data and targets, so a GPU can be measured without a dataset or an encoder. The
/// defaults are the paper's setting on CUDA (SiT-XL/2 on 4 x 32 x 32 latents, 1000 classes, one 768-wide projector,
/// batch 256) and the default CPU run's elsewhere (SiT-T/4, 1 x 32 x 32, 10 classes, batch 32). Reports the median step
/// time, images/s, model TFLOP/s (the formula `train` prints), MFU against the device's peak and the pool's
/// device-memory high-water mark; --out writes the same as JSON.
/// </summary>
internal static class BenchCommand
{
    /// <summary>What a bench run measured (bench.json).</summary>
    public sealed record BenchReport(string Device, string Model, long Parameters, int Batch, string Precision, int Warmup,
        double[] StepSeconds, double MedianSeconds, double ImagesPerSecond, double ModelTflops, double PeakGflops, double? Mfu,
        long PeakMemoryBytes, long DeviceAllocations);

    public static int Run(Options o, TextWriter stdout)
    {
        string device = o.String("--device", "auto", ComputeDevice.Names);
        int threads = o.Int("--threads", Environment.ProcessorCount, min: 1);
        string mixedPrecision = o.String("--mixed-precision", "auto", "auto", "no", "bf16", "fp16");
        string configName = o.String("--config", "", [.. SiTConfig.PresetNames, ""]);
        int batch = o.Int("--batch", 0, min: 1);
        int size = o.Int("--image-size", 0, min: 1);
        int channels = o.Int("--channels", 0, min: 1);
        int classes = o.Int("--classes", 0, min: 1);
        int zDim = o.Int("--z-dim", 0, min: 1);
        double projCoeff = o.Double("--proj-coeff", 0.5, min: 0);
        int steps = o.Int("--steps", 10, min: 1);
        int warmup = o.Int("--warmup", 2, min: 0);
        bool qkNorm = o.String("--qk-norm", "false", "true", "false") == "true";
        string output = o.String("--out", "");
        o.RejectUnknown();
        ComputeDevice.Check(device);

        using var backend = ComputeDevice.Open(device, threads, out string? deviceNote);
        bool gpu = backend is CudaBackend;
        // Unset flags take the paper's setting on a GPU and the default CPU run's elsewhere.
        configName = configName.Length > 0 ? configName : gpu ? "SiT-XL/2" : "SiT-T/4";
        batch = batch > 0 ? batch : gpu ? 256 : 32;
        size = size > 0 ? size : 32;
        channels = channels > 0 ? channels : gpu ? 4 : 1;
        classes = classes > 0 ? classes : gpu ? 1000 : 10;
        zDim = zDim > 0 ? zDim : gpu ? 768 : 256;
        var computeType = Trainer.ComputeType(mixedPrecision == "auto" ? null : mixedPrecision, backend);
        var (peak, peakText) = ComputeDevice.Peak(backend, computeType, threads);
        stdout.WriteLine($"device: {backend.Description}, {peakText}{(deviceNote != null ? $" ({deviceNote})" : "")}");

        var preset = SiTConfig.Preset(configName);
        int tokens = (size / preset.PatchSize) * (size / preset.PatchSize);
        var data = new SyntheticTrainingData(Math.Max(batch, 1024), channels, size, classes);
        var targets = projCoeff > 0 ? new SyntheticTargets(tokens, zDim) : null;
        var options = new TrainOptions
        {
            Model = configName, Steps = warmup + steps, Batch = batch, ImageSize = size, QkNorm = qkNorm,
            Objective = new ObjectiveConfig(ProjCoeff: projCoeff), MixedPrecision = computeType == DType.BF16 ? "bf16" : "no",
        };
        using var trainer = new Trainer(backend, options, data, targets);
        string precision = computeType == DType.BF16 ? "bf16" : "fp32";
        stdout.WriteLine($"model: {trainer.Config.Name} ({trainer.Model.ParameterCount:N0} parameters, {trainer.Config.Tokens} tokens), batch {batch}, " +
                         $"{precision}, {data.Description}{(targets != null ? $", REPA on {targets.Description}" : ", no REPA")}; {warmup} warm-up + {steps} timed steps");
        var times = new List<double>();
        using (var tape = new Tape())
        {
            for (int step = 1; step <= warmup + steps; step++)
            {
                var m = trainer.Step(step, tape);
                bool timed = step > warmup;
                if (timed) times.Add(m.Seconds);
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{ProgressBar.Bar(step, warmup + steps)} step {step,3}/{warmup + steps} {(timed ? "" : "(warm-up) ")}{m.Seconds * 1000:F1} ms | loss {m.Loss:F4} | {m.ImagesPerSecond:F1} img/s"));
            }
            tape.Reset();
        }
        var sorted = times.Order().ToArray();
        double median = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : 0.5 * (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]);
        double imagesPerSecond = batch / median;
        double tflops = trainer.FlopsPerImage * imagesPerSecond / 1e12;
        double? mfu = peak > 0 ? tflops * 1000 / peak : null;
        var pool = backend.Pool;
        var report = new BenchReport(backend.Description, trainer.Config.Name, trainer.Model.ParameterCount, batch, precision, warmup,
            [.. times], median, imagesPerSecond, tflops, peak, mfu, pool.PeakHeldBytes, backend.AllocationCount);
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"median {median * 1000:F1} ms/step (min {sorted[0] * 1000:F1}, max {sorted[^1] * 1000:F1}) | {imagesPerSecond:F1} img/s | {tflops:F3} TFLOP/s model" +
            $"{(mfu is { } u ? $" | MFU {100 * u:F1}%" : "")} | peak memory {pool.PeakHeldBytes / (double)(1L << 30):F2} GiB through the pool, {backend.AllocationCount} device allocations"));
        if (output.Length > 0)
        {
            string full = Path.GetFullPath(output);
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            File.WriteAllText(full + ".tmp", JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }));
            File.Move(full + ".tmp", full, overwrite: true);
            stdout.WriteLine($"wrote {full}");
        }
        return 0;
    }
}
