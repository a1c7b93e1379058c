using System.Text.Json;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Models;
using Repa.Runtime.Training;

namespace Repa.Runtime;

/// <summary>
/// `Repa.Runtime forward`: the debug state that lets another implementation (PyTorch included) be compared with ours
/// tensor by tensor. Inference form: IN holds x, t, y; OUT gets "v" and "zs.j". Loss form (IN also holds x0, noise and
/// "target.j"): OUT also gets loss, loss_denoise, loss_proj and "grad.NAME" of every trainable parameter. No randomness.
/// </summary>
internal static class ForwardCommand
{
    public static int Run(Options o, TextWriter stdout)
    {
        string checkpoint = o.String("--checkpoint", "");
        string input = o.String("--input", "");
        string output = o.String("--output", "");
        int threads = o.Int("--threads", Environment.ProcessorCount, min: 1);
        o.RejectUnknown();
        if (checkpoint.Length == 0 || input.Length == 0 || output.Length == 0)
            throw new UsageException("forward needs --checkpoint, --input and --output.");
        string file = Trainer.ResolveCheckpoint(checkpoint);
        var (config, objective) = LoadConfig(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(file))!, "config.json"));
        using var backend = new CpuBackend(threads);
        using var model = new SiT(backend, DType.F32, config, 0);
        using (var state = SafeTensors.Read(file, backend)) model.LoadStateDict(state.Tensors, strict: false);
        using var inputs = SafeTensors.Read(input, backend);
        Tensor Need(string name) => inputs.Tensors.TryGetValue(name, out var t) ? Float(t)
            : throw new InvalidDataException($"input '{input}' has no tensor '{name}'.");
        Tensor Float(Tensor t) => t.DType == DType.F32 ? t : t.To(DType.F32).Persistent();
        var labels = inputs.Tensors.TryGetValue("y", out var y) ? y : throw new InvalidDataException($"input '{input}' has no tensor 'y'.");
        if (labels.DType != DType.I32) throw new InvalidDataException($"input '{input}': y must be int32 or int64 class labels.");
        var results = new List<(string, Tensor)>();
        using var tape = new Tape();
        if (inputs.Tensors.ContainsKey("x0"))
        {
            var targets = Enumerable.Range(0, config.ZDims.Count).Select(j => Need($"target.{j}")).ToArray();
            var loss = new Objective(objective with { ClassDropout = 0 }).Compute(model, Need("x0"), Need("noise"), Need("t"), labels, targets);
            tape.Backward(loss.Total);
            results.Add(("v", loss.Output));
            for (int j = 0; j < loss.Projections.Length; j++) results.Add(($"zs.{j}", loss.Projections[j]));
            results.Add(("loss", loss.Total));
            results.Add(("loss_denoise", loss.Denoise));
            results.Add(("loss_proj", loss.Proj));
            foreach (var (name, p) in model.NamedParameters())
                if (p.Grad != null) results.Add(($"grad.{name}", p.Grad));
        }
        else
        {
            using var _ = Tape.NoGrad();
            var (v, zs) = model.Forward(Need("x"), Need("t"), labels);
            results.Add(("v", v));
            for (int j = 0; j < zs.Length; j++) results.Add(($"zs.{j}", zs[j]));
        }
        SafeTensors.Write(output, results);
        stdout.WriteLine($"forward: wrote {results.Count} tensors to {output}");
        return 0;
    }

    /// <summary>What else a run's config.json records: the objective ("sit" or "ddpm"), the data folder and the EMA decay.</summary>
    /// <param name="Objective">"sit" (REPA's SILoss) or "ddpm" (DiT's diffusion).</param>
    /// <param name="DataDir">The training data folder, or null in configs written before it was recorded.</param>
    /// <param name="EmaDecay">The EMA decay (REPA's 0.9999 when not recorded).</param>
    public sealed record RunSettings(string Objective, string? DataDir, double EmaDecay);

    /// <summary>Reads the <see cref="RunSettings"/> of a config.json that `train` wrote.</summary>
    public static RunSettings LoadRunSettings(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"'{path}' is missing; a checkpoint needs the config.json that `train` writes beside it.");
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            var r = doc.RootElement;
            return new RunSettings(
                r.TryGetProperty("objective", out var objective) ? objective.GetString() ?? "sit" : "sit",
                r.TryGetProperty("data_dir", out var data) ? data.GetString() : null,
                r.TryGetProperty("ema_decay", out var decay) ? decay.GetDouble() : 0.9999);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"'{path}' is not a Repa config.json: {e.Message}");
        }
    }

    /// <summary>Reads the config.json that `train` writes beside a checkpoint (REPA's argument names).</summary>
    public static (SiTConfig model, ObjectiveConfig objective) LoadConfig(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"'{path}' is missing; a checkpoint needs the config.json that `train` writes beside it.");
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            var r = doc.RootElement;
            int Int(string name) => r.GetProperty(name).GetInt32();
            var model = new SiTConfig
            {
                Name = r.GetProperty("model").GetString() ?? "SiT",
                InputSize = Int("input_size"), PatchSize = Int("patch_size"), InChannels = Int("in_channels"),
                HiddenSize = Int("hidden_size"), Depth = Int("depth"), NumHeads = Int("num_heads"),
                MlpRatio = r.GetProperty("mlp_ratio").GetDouble(), NumClasses = Int("num_classes"),
                EncoderDepth = Int("encoder_depth"), ZDims = [.. r.GetProperty("z_dims").EnumerateArray().Select(e => e.GetInt32())],
                ProjectorDim = Int("projector_dim"), QkNorm = r.GetProperty("qk_norm").GetBoolean(),
                LearnSigma = r.TryGetProperty("learn_sigma", out var learnSigma) && learnSigma.GetBoolean(), // absent before DiT
            };
            var objective = new ObjectiveConfig(PathType: r.GetProperty("path_type").GetString() ?? "linear",
                Weighting: r.GetProperty("weighting").GetString() ?? "uniform", ProjCoeff: r.GetProperty("proj_coeff").GetDouble());
            return (model.Validate(), objective.Validate());
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"'{path}' is not a Repa config.json: {e.Message}");
        }
    }
}
