using System.Globalization;
using System.Text;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Encoders;
using Repa.Runtime.Eval;
using Repa.Runtime.Models;
using Repa.Runtime.Plots;
using Repa.Runtime.Sampling;
using Repa.Runtime.Training;

namespace Repa.Runtime;

/// <summary>
/// `Repa.Runtime study`: the paper's comparison at our scale. Trains vanilla SiT (proj_coeff 0) and SiT + REPA with the
/// same seed, data order, noise and budget, evaluates both at the same step counts with one shared evaluator (same real
/// features, same sampler seed), and writes study.json, study.md (table + the exact command) and study-fd.png.
/// </summary>
internal static class StudyCommand
{
    /// <summary>One evaluation of one arm.</summary>
    public sealed record StudyPoint(string Arm, int Step, string Weights, double Loss, EvalReport Report);

    public static int Run(Options o, TextWriter stdout, string[] args)
    {
        int steps = o.Int("--steps", 1000, min: 1);
        int evalEvery = o.Int("--eval-every", 250, min: 1);
        double projCoeff = o.Double("--proj-coeff", 0.5, min: 0);
        if (projCoeff == 0) throw new UsageException("--proj-coeff must be above 0: the study compares it with vanilla SiT (proj_coeff 0).");
        string outFolder = o.String("--out", Path.Combine("runs", "study"));
        var baseOptions = new TrainOptions
        {
            Model = o.String("--config", "SiT-T/2", [.. SiTConfig.PresetNames.Where(n => n.StartsWith("SiT-", StringComparison.Ordinal))]),
            Steps = steps,
            Batch = o.Int("--batch", 32, min: 1),
            LearningRate = o.Double("--lr", 1e-4, min: 0),
            Seed = (ulong)o.Int("--seed", 0, min: 0),
            DataFolder = o.String("--data", Data.IdxDataset.DefaultFashionMnistFolder),
            ImageSize = o.Int("--image-size", 32, min: 1),
            EncoderDepth = o.Int("--encoder-depth", 0, min: 1),
        };
        string cacheFolder = o.String("--cache-dir", TrainCommand.DefaultCacheFolder);
        var evalOptions = EvalCommand.ReadEvalOptions(o);
        o.String("--device", "auto", "auto", "cpu");
        int threads = o.Int("--threads", Environment.ProcessorCount, min: 1);
        o.RejectUnknown();
        evalOptions.Validate();
        var evalSteps = Enumerable.Range(1, steps / evalEvery).Select(k => k * evalEvery).Append(steps).Distinct().ToArray();

        using var backend = new CpuBackend(threads);
        double peak = FmaPeak.Measure(threads, 0.1);
        stdout.WriteLine($"study: vanilla SiT vs SiT + REPA (proj_coeff {projCoeff}), {baseOptions.Model}, {steps} steps of {baseOptions.Batch}, seed {baseOptions.Seed}, evaluated at steps {string.Join(", ", evalSteps)}; device: {backend.Description}");
        var data = Data.TrainingData.Open(baseOptions.DataFolder, baseOptions.ImageSize);
        using var evaluator = EvalCommand.CreateEvaluator(baseOptions.DataFolder, data.Size, evalOptions, stdout);
        var points = new List<StudyPoint>();
        foreach (var (arm, coeff) in new[] { ("vanilla", 0.0), ("repa", projCoeff) })
        {
            var options = baseOptions with
            {
                OutputFolder = Path.Combine(outFolder, arm),
                Objective = new ObjectiveConfig(ProjCoeff: coeff),
            };
            stdout.WriteLine($"study: training {arm} -> {options.OutputFolder}");
            using var encoder = coeff > 0 ? OnnxEncoder.ResNet18(inputSize: 16 * (options.ImageSize / SiTConfig.Preset(options.Model).PatchSize)) : null;
            using var targets = encoder != null ? new EncoderTargets(data, encoder, "ResNet-18 stage 3 (ReLU347)", cacheFolder) : null;
            using var trainer = new Trainer(backend, options, data, targets) { PeakGflops = peak };
            targets?.Precompute(Enumerable.Range(1, steps).SelectMany(trainer.Indices), stdout);
            using var evalModel = new SiT(backend, DType.F32, trainer.Config, 0);
            trainer.AfterStep = m =>
            {
                int step = m.Step;
                if (!evalSteps.Contains(step)) return;
                bool ema = !SiTSampling.EmaIsMostlyInitial(options.EmaDecay, step);
                LoadWeights(evalModel, trainer, ema);
                using var generator = ImageGenerator.ForModel(evalModel, "sit", options.Objective.PathType);
                var report = evaluator.Evaluate(generator);
                var point = new StudyPoint(arm, step, ema ? "ema" : "raw", m.Loss, report);
                points.Add(point);
                stdout.WriteLine($"study: {arm} step {step} ({point.Weights} weights): {report.Summary()}");
                Write(outFolder, points, args);
            };
            trainer.Run(stdout);
        }
        Write(outFolder, points, args);
        stdout.WriteLine($"study: done -> {Path.Combine(outFolder, "study.md")}, {Path.Combine(outFolder, "study-fd.png")}");
        return 0;
    }

    /// <summary>The raw weights, or the EMA averages (trainable tensors) with the frozen ones from the model.</summary>
    private static void LoadWeights(SiT target, Trainer trainer, bool ema)
    {
        var state = trainer.Model.StateDict().ToDictionary(e => e.Name, e => e.Tensor);
        if (ema)
            foreach (var (name, _) in trainer.Model.NamedParameters()) state[name] = trainer.Ema[name];
        target.LoadStateDict(state);
    }

    /// <summary>Writes study.json, study.md and study-fd.png (rewritten after every evaluation, so a stopped study keeps its results).</summary>
    private static void Write(string folder, IReadOnlyList<StudyPoint> points, string[] args)
    {
        Directory.CreateDirectory(folder);
        string command = "Repa.Runtime " + string.Join(' ', args.Select(a => a.Contains(' ') ? $"\"{a}\"" : a));
        EvalCommand.WriteReport(Path.Combine(folder, "study.json"), new Dictionary<string, object?> { ["command"] = command, ["points"] = points });

        var md = new StringBuilder();
        md.AppendLine("| steps | arm | weights | loss | FD | CKNNA | linear probe |");
        md.AppendLine("|---:|---|---|---:|---:|---:|---:|");
        foreach (var p in points.OrderBy(p => p.Step).ThenBy(p => p.Arm))
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {p.Step} | {(p.Arm == "repa" ? "SiT + REPA" : "SiT")} | {p.Weights} | {p.Loss:F4} | {p.Report.Fd:F2} | {p.Report.Cknna:F4} | {100 * p.Report.ProbeAccuracy:F1}% |"));
        var first = points.FirstOrDefault()?.Report;
        if (first != null)
        {
            md.AppendLine();
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"FD: {first.FdEncoder}, {first.Generated} generated (class-balanced, {first.Sampler}) vs {first.RealImages} real images from {first.RealSplit}; as many training images score {first.FdTrainVsReal:F2} against them (the floor)."));
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"CKNNA (k {first.CknnaK}) and linear probe: mean-pooled hidden states after block {first.Layer} at t = {first.ProbeTime} with the null label; the probe trains on {first.ProbeTrainImages} training images and is tested on the real images. Loss: the training loss of the step (REPA's includes 0.5 x its negative-cosine term)."));
        }
        md.AppendLine();
        md.AppendLine("Command:");
        md.AppendLine();
        md.AppendLine("```");
        md.AppendLine(command);
        md.AppendLine("```");
        File.WriteAllText(Path.Combine(folder, "study.md"), md.ToString());

        var plot = new LinePlot { Title = "Frechet distance (ResNet-18 features) vs training steps", XLabel = "training steps", YLabel = "FD (lower is better)" };
        foreach (var (arm, name, color) in new[] { ("vanilla", "SiT", ((byte)200, (byte)60, (byte)40)), ("repa", "SiT + REPA", ((byte)30, (byte)90, (byte)200)) })
        {
            var series = points.Where(p => p.Arm == arm && p.Report.Fd is not null).Select(p => ((double)p.Step, p.Report.Fd!.Value)).ToList();
            if (series.Count > 0) plot.AddSeries(name, series, color);
        }
        if (points.Count > 0) plot.Save(Path.Combine(folder, "study-fd.png"));
    }
}
