using System.Text.Json;
using Repa.Runtime.Data;
using Repa.Runtime.Eval;
using Repa.Runtime.Sampling;

namespace Repa.Runtime;

/// <summary>`Repa.Runtime eval`: FD, CKNNA and linear-probe accuracy of a checkpoint, as a JSON report and one line.</summary>
internal static class EvalCommand
{
    public const string ReportFile = "eval.json";

    public static int Run(Options o, TextWriter stdout)
    {
        string checkpoint = o.String("--checkpoint", "");
        string dataFolder = o.String("--data", "");
        var evalOptions = ReadEvalOptions(o);
        var weights = SampleCommand.ReadWeights(o);
        string output = o.String("--out", "");
        string device = o.String("--device", "auto", ComputeDevice.Names);
        int threads = o.Int("--threads", Environment.ProcessorCount, min: 1);
        o.RejectUnknown();
        if (checkpoint.Length == 0) throw new UsageException("eval needs --checkpoint (a run folder or its checkpoint.safetensors).");
        evalOptions.Validate();

        using var generator = ImageGenerator.Load(checkpoint, device, weights, threads);
        if (generator.DeviceNote != null) stdout.WriteLine(generator.DeviceNote);
        if (generator.WeightsNote != null) stdout.WriteLine(generator.WeightsNote);
        string runFolder = Path.GetDirectoryName(Path.GetFullPath(generator.CheckpointFile))!;
        if (dataFolder.Length == 0)
            dataFolder = generator.DataDir ?? throw new UsageException($"'{runFolder}/config.json' does not record the training data; pass --data.");
        string weightsUsed = generator.UsesEma ? "ema" : "raw";
        stdout.WriteLine($"eval: {generator.Config.Name} ({weightsUsed} weights{(generator.Step is { } s ? $" of step {s}" : "")}) from {generator.CheckpointFile}, device: {generator.DeviceDescription}");

        using var evaluator = CreateEvaluator(dataFolder, generator.Size, evalOptions, stdout);
        var report = evaluator.Evaluate(generator);
        string file = output.Length > 0 ? output : Path.Combine(runFolder, ReportFile);
        WriteReport(file, new Dictionary<string, object?>
        {
            ["checkpoint"] = generator.CheckpointFile, ["step"] = generator.Step, ["weights"] = weightsUsed, ["model"] = generator.Config.Name,
            ["objective"] = generator.Objective, ["data"] = dataFolder, ["report"] = report,
        });
        stdout.WriteLine($"eval: {report.Summary()} -> {file}");
        return 0;
    }

    /// <summary>The evaluation flags shared by `eval` and `study`.</summary>
    internal static EvalOptions ReadEvalOptions(Options o) => new()
    {
        Samples = o.Int("--num", 1000, min: 2),
        Generation = new GenerationOptions
        {
            Method = o.String("--mode", "auto", "auto", "sde", "ode", "ddpm", "ddim") switch
            {
                "sde" => SamplingMethod.Sde, "ode" => SamplingMethod.Ode, "ddpm" => SamplingMethod.Ddpm, "ddim" => SamplingMethod.Ddim,
                _ => SamplingMethod.Auto,
            },
            Steps = o.Int("--sample-steps", 0, min: 1),
            Heun = o.Flag("--heun"),
            CfgScale = o.Double("--cfg", 1.0, min: 1),
            GuidanceLow = o.Double("--guidance-low", 0.0),
            GuidanceHigh = o.Double("--guidance-high", 1.0),
            ModelBatch = o.Int("--model-batch", 64, min: 1),
        },
        ProbeTime = o.Double("--probe-t", 0.5, min: 0),
        ProbeTrainImages = o.Int("--probe-train", 2000, min: 2),
        K = o.Int("--k", Cknna.DefaultK, min: 1),
        EncoderSize = o.Int("--eval-encoder-size", 64, min: 32),
        Seed = (ulong)o.Int("--eval-seed", 0, min: 0),
    };

    /// <summary>Opens the data's training split and, where it has one, its held-out split, and encodes the real images.</summary>
    internal static ModelEvaluator CreateEvaluator(string dataFolder, int imageSize, EvalOptions options, TextWriter log)
    {
        var train = TrainingData.Open(dataFolder, imageSize);
        bool heldOut = TrainingData.HasHeldOutSplit(dataFolder);
        var real = heldOut ? TrainingData.Open(dataFolder, imageSize, heldOut: true) : train;
        string split = heldOut ? "the held-out test split" : "the training images (this dataset has no held-out split)";
        log.WriteLine($"eval: real images from {split} of {real.Description}; encoding {options.Samples} of them ...");
        return new ModelEvaluator(train, real, split, options, log);
    }

    /// <summary>Indented JSON, written to a temporary file and renamed, so a report is never half written.</summary>
    internal static void WriteReport(string path, object value)
    {
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder != null) Directory.CreateDirectory(folder);
        File.WriteAllText(path + ".tmp", JsonSerializer.Serialize(value, new JsonSerializerOptions
        {
            WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
            NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
        }));
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
