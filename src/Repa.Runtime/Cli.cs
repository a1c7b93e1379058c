using System.Diagnostics;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;

namespace Repa.Runtime;

/// <summary>The Repa.Runtime command line: a thin layer over the library. Every user error ends in one sentence and exit code 2.</summary>
public static class Cli
{
    public const string Usage = """
        Repa.Runtime: train and sample diffusion transformers with REPA, without Python.

        Usage: Repa.Runtime <command> [options]

        Commands:
          smoke [--threads N] [--steps N]
                     Checks the engine on this machine: trains a two-layer GELU MLP with plain SGD on the CPU backend
                     (forward, backward, update), printing loss, gradient norm, time per step and GFLOP/s.
          --help     Prints this text.

        Options:
          --threads N  CPU threads (default: all cores).
          --steps N    Steps of the smoke run (default 20).

          train [options]
                     Trains SiT with REPA on the CPU (see TRAIN OPTIONS).

          sample --checkpoint C [options]
                     Draws images from a trained checkpoint (REPA's SDE/ODE samplers for SiT, DDPM/DDIM for DiT) and
                     writes samples.png, a grid with one row per class, and samples.npz (see SAMPLE OPTIONS).

          eval --checkpoint C [options]
                     Frechet distance between generated and real images in ResNet-18's pooled feature space, CKNNA
                     (k 10) between the model's hidden states and those features, and linear-probe accuracy on the
                     hidden states; writes eval.json beside the checkpoint and prints one line (see EVAL OPTIONS).

          study [options]
                     The paper's comparison at our scale: trains vanilla SiT and SiT + REPA with the same seed and
                     budget, evaluates both every --eval-every steps, and writes study.json, study.md (table and the
                     exact command) and study-fd.png (FD against steps) to --out (see STUDY OPTIONS).

          bench [options]
                     Times full training steps (forward, backward, clip, AdamW, EMA, REPA on) on synthetic data and
                     targets: median ms/step, img/s, model TFLOP/s, MFU and peak device memory (see BENCH OPTIONS).

          forward --checkpoint C --input IN.safetensors --output OUT.safetensors
                     Debug state for comparing with another implementation. IN holds x [N,C,H,W], t [N] (float32) and
                     y [N] (int32/int64): OUT gets "v" and "zs.<j>". If IN holds x0, noise, t, y and "target.<j>", the
                     command forms x_t on the configured path and OUT also gets loss, loss_denoise, loss_proj and
                     "grad.<state_dict name>" of every trainable parameter (no class dropout, nothing random).

        TRAIN OPTIONS
          --config NAME        model preset: SiT-T/4 (default: the small CPU model with 4x4 patches), SiT-T/2, SiT-S/2 ...
                               SiT-XL/8, DiT-T/2 ... DiT-XL/8.
          --steps N            optimisation steps (default 1000).
          --batch N            images per step (default 32).
          --grad-accum N       split each step's batch into N micro-batches, accumulating gradients (default 1).
          --lr X               AdamW learning rate (default 1e-4; betas 0.9/0.999, eps 1e-8, no weight decay).
          --seed N             seed of every random draw (init, data order, t, noise, label dropout; default 0).
          --out DIR            run folder for metrics.jsonl, checkpoint.safetensors, config.json (default runs/latest).
          --data DIR           dataset folder (default /usr/share/datasets/fashion-mnist), recognised by its layout:
                                 IDX: train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] (MNIST style);
                                 REPA: images/ (PNGs) + vae-sd/ (.npy posteriors [2C,H,W] = mean, std; labels in
                                   vae-sd/dataset.json): trains on z = (mean + std * eps) * 0.18215, the encoder sees
                                   the PNGs;
                                 PNG folder with EDM2's dataset.json {"labels": [[file, class], ...]} (or images/
                                   without vae-sd/): trains on pixels. "labels": null means unlabelled (one class).
          --image-size N       model input side. IDX: each image is centred on a black N x N square (default 32).
                               PNG folder: centre crop to a square, then area (box) resize to N x N (default: the
                               images' own side). REPA latents: fixed by the .npy shape; N must match it if given.
                               Pixels are scaled to [-1, 1]; grey stays 1 channel, colour is RGB, alpha is dropped.
          --encoder NAME       REPA target encoder: resnet18 (default; stage-3 features) or none.
          --cache-dir DIR      where encoder targets are cached (fp16, memory-mapped; default ~/.cache/repa/targets).
          --encoder-size N     encoder input size in px (default 16 x the model's patch grid, so grids match).
          --encoder-depth N    block after which the projector taps the residual stream (default: the preset's).
          --qk-norm true|false per-head LayerNorm on q and k (timm qk_norm; default false, as REPA).
          --proj-coeff X       REPA loss weight lambda (default 0.5; 0 = vanilla SiT).
          --path linear|cosine interpolant (default linear).
          --weighting uniform|lognormal   t ~ U(0,1) (default) or logit-normal.
          --proj-loss cosine|ntxent       REPA alignment: negative cosine (default) or patch-wise NT-Xent.
          --objective sit|ddpm SiT's velocity loss (default) or DiT's DDPM loss: 1000 linear-beta steps, eps + learned
                               variance, MSE + VLB; ddpm needs a DiT preset (--config DiT-T/2 ... DiT-XL/8).
          --ckpt-every N       also save the checkpoint every N steps (default: only at the end and on Ctrl-C).
          --cuda-graph true|false   on CUDA, capture the step's device work (forward, backward, clip, AdamW, EMA)
                               as a CUDA graph after the first step and replay it (default true; the CPU ignores it).
          --resume PATH        continue exactly from a checkpoint (its run folder or .safetensors file); --steps is the total.
          --sample-grid true|false  at the end, write samples.png (8 samples of every class, of 16 evenly spaced classes
                               when there are more, with the objective's default sampler at 25 steps, --weights auto)
                               and samples.npz into the run folder (default true).
          --device auto|cpu|cuda|ilgpu  compute device (default auto: CUDA when a device of compute capability 8.0+ is
                               found, else ILGPU on a CUDA or OpenCL GPU, else the CPU, the choice and reason printed;
                               the GPU backends are verified on CPU simulators only; ilgpu computes in float32).
          --mixed-precision auto|no|bf16  bf16: bfloat16 activations and GEMM inputs, float32 master weights, AdamW
                               state, LayerNorm/softmax statistics and losses; no: float32 throughout (default auto:
                               bf16 on CUDA, no on the CPU, which computes in float32).
          --threads N          CPU threads (default: all cores).

        SAMPLE OPTIONS
          --checkpoint C       run folder or its checkpoint.safetensors (config.json beside it).
          --weights auto|ema|raw  auto (default): the EMA of the weights (as REPA) unless it is still mostly the
                               initial model, i.e. decay^steps > 0.5 with the run's ema_decay and the checkpoint's step
                               (a run of a few hundred steps at decay 0.9999): then the raw trained weights, with a note.
                               ema and raw force one or the other.
          --labels 0,3,7       classes to draw, one grid row each (default: every class of the model). Rows are labelled
                               with the class names for Fashion-MNIST and MNIST runs, with numbers otherwise.
          --per-class N        samples per class, i.e. per row (default 8).
          --unconditional      sample with the null class instead of labels (no guidance possible).
          --mode M             SiT checkpoints: sde (default; REPA's Euler-Maruyama) or ode (Euler). DiT checkpoints
                               (train --objective ddpm): ddpm (default; ancestral sampling on a respaced schedule, as
                               DiT's sample.py) or ddim (eta 0). A mode of the other objective is refused.
          --steps N            sampling steps: sde/ode/ddim default 50 (enough for our small models; the paper uses 250
                               with the SDE); ddpm: respaced steps of the 1000, default 250 as DiT; ddim: N must be an
                               even stride of the 1000 (e.g. 25, 50, 100, 250).
          --heun               Heun's correction on every ODE step but the last (--mode ode only).
          --cfg X              classifier-free guidance scale, >= 1 (default 1.0 = none; the paper's best is 1.8). SiT:
                               on all channels of the velocity (ODE) or drift (SDE). DiT: as its forward_with_cfg on the
                               first min(3, C) eps channels, never on the learned-variance channels.
          --guidance-low X     SiT only: guidance applies while guidance-low <= t <= guidance-high (defaults 0 and 1, as
          --guidance-high X    REPA's generate.py; the paper's best interval is [0, 0.7]).
          --seed N             seed of the initial noise and of every SDE/DDPM step (default 0); samples do not depend on
                               --batch.
          --batch N            images per model call (default 16; guidance doubles the images, not this limit).
          --out DIR            where samples.png and samples.npz (arr_0: uint8 [N, H, W, C], as ADM's evaluator reads)
                               go (default: the checkpoint's folder). Latent models (4 channels) cannot be decoded
                               without the SD VAE, which Repa does not have: their latents go to samples.safetensors.
          --device auto|cpu|cuda|ilgpu  compute device (default auto: CUDA when usable, else ILGPU on a GPU, else the
                               CPU, the choice and reason printed).
          --threads N          CPU threads (default: all cores).
          REPA's generate.py defaults differ: --mode ode, --cfg 1.5, 50 steps.

        EVAL OPTIONS (eval and study)
          --checkpoint C       (eval) run folder or its checkpoint.safetensors.
          --data DIR           (eval) the dataset (default: the data_dir in the run's config.json). Real images come from
                               its held-out split (IDX t10k) where it has one, else from its training images.
          --weights auto|ema|raw  (eval) as for sample: auto (default) takes the EMA unless it is still mostly the initial
                               model (decay^steps > 1/2), then the raw weights; the study decides the same way.
          --num N              generated images (class-balanced) and real images for FD and CKNNA (default 1000).
          --mode sde|ode|ddpm|ddim, --sample-steps N, --heun, --cfg X, --guidance-low X, --guidance-high X
                               the sampler of the generated images, as for sample (default: the objective's: SDE 50
                               steps for SiT, DDPM 250 for DiT; no guidance).
          --probe-t X          time of the noisy input whose hidden states (after encoder_depth, mean over tokens, null
                               label) feed CKNNA and the probe (default 0.5, our choice).
          --probe-train N      training images of the linear probe (default 2000; tested on the real images).
          --k N                CKNNA neighbours (default 10, as the paper).
          --eval-encoder-size N  ResNet-18 input side for the features (multiple of 32; default 64).
          --model-batch N      images per model call (default 64).
          --eval-seed N        seed of the sampler and of the probe's noise (default 0).
          --out FILE           (eval) the JSON report (default: eval.json beside the checkpoint).
          --device auto|cpu|cuda|ilgpu, --threads N

        STUDY OPTIONS (plus the EVAL OPTIONS above)
          --steps N            training steps of each arm (default 1000).
          --eval-every N       evaluate both arms every N steps and at the end (default 250).
          --proj-coeff X       REPA's lambda for the REPA arm (default 0.5; the other arm is vanilla, 0).
          --config, --batch, --lr, --seed, --data, --image-size, --encoder-depth, --cache-dir  as for train.
          --out DIR            where both runs and the study files go (default runs/study).

        BENCH OPTIONS (defaults: the paper's setting on CUDA, the default CPU run's elsewhere)
          --config NAME        preset (SiT-XL/2 on CUDA, SiT-T/4 on the CPU).
          --batch N            images per step (256 on CUDA, 32 on the CPU).
          --image-size N, --channels N, --classes N   model input side, channels, classes (32; 4 / 1; 1000 / 10).
          --z-dim N            width of the synthetic REPA targets (768 on CUDA, 256 on the CPU).
          --proj-coeff X       REPA weight (default 0.5; 0 times vanilla SiT).
          --steps N            timed steps (default 10), after --warmup N untimed ones (default 2).
          --mixed-precision auto|no|bf16, --qk-norm true|false, --device auto|cpu|cuda, --threads N  as for train.
          --out FILE           also write the figures as JSON.
        """;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        try
        {
            if (args.Length == 0 || args[0] is "--help" or "-h" or "help")
            {
                stdout.WriteLine(Usage);
                return 0;
            }
            var options = Options.Parse(args.AsSpan(1));
            switch (args[0])
            {
                case "smoke":
                    Smoke(options, stdout);
                    return 0;
                case "train":
                    return TrainCommand.Run(options, stdout);
                case "forward":
                    return ForwardCommand.Run(options, stdout);
                case "sample":
                    return SampleCommand.Run(options, stdout);
                case "eval":
                    return EvalCommand.Run(options, stdout);
                case "study":
                    return StudyCommand.Run(options, stdout, args);
                case "bench":
                    return BenchCommand.Run(options, stdout);
                default:
                    throw new UsageException($"unknown command '{args[0]}'; run `Repa.Runtime --help` for the list of commands.");
            }
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is ShapeMismatchException or ArgumentException or InvalidDataException or FileNotFoundException
                                       or DirectoryNotFoundException or NotSupportedException or InvalidOperationException
                                       or Microsoft.ML.OnnxRuntime.OnnxRuntimeException)
        {
            stderr.WriteLine($"error: {e.Message}");
            return 2;
        }
    }

    private static void Smoke(Options options, TextWriter stdout)
    {
        int threads = options.Int("--threads", Environment.ProcessorCount, min: 1);
        int steps = options.Int("--steps", 20, min: 1);
        const double learningRate = 0.5;
        options.RejectUnknown();
        using var backend = new CpuBackend(threads);
        stdout.WriteLine($"device: {backend.Description}");
        const int rows = 1024, dim = 384, hidden = 1536;
        var rng = new Random(0);
        Tensor Param(int o, int i, string name) => Tensor.FromArray(backend,
            Enumerable.Range(0, o * i).Select(_ => (float)((rng.NextDouble() * 2 - 1) * Math.Sqrt(6.0 / (o + i)))).ToArray(), o, i).AsParameter(name);
        var w1 = Param(hidden, dim, "fc1.weight");
        var w2 = Param(dim, hidden, "fc2.weight");
        var x = Tensor.FromArray(backend, Enumerable.Range(0, rows * dim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), rows, dim);
        double flopsPerStep = 3 * 2.0 * 2 * rows * dim * hidden; // two GEMMs forward, twice that backward
        var times = new List<double>();
        long allocationsAfterFirst = 0;
        double firstLoss = 0, lastLoss = 0;
        using var tape = new Tape();
        for (int step = 1; step <= steps; step++)
        {
            var sw = Stopwatch.StartNew();
            tape.Reset();
            w1.ZeroGrad();
            w2.ZeroGrad();
            var y = Ops.Linear(Ops.Gelu(Ops.Linear(x, w1)), w2);
            var loss = Ops.Mean(Ops.Mul(y, y));
            tape.Backward(loss);
            double lossValue = loss.Item();
            if (step == 1) firstLoss = lossValue;
            lastLoss = lossValue;
            double gradNorm = Math.Sqrt(w1.Grad!.ToDoubleArray().Sum(v => v * v) + w2.Grad!.ToDoubleArray().Sum(v => v * v));
            foreach (var w in new[] { w1, w2 }) backend.Axpby(w.Grad!.Buffer, w.Buffer, w.Count, -learningRate, 1); // SGD
            double seconds = sw.Elapsed.TotalSeconds;
            times.Add(seconds);
            if (step == 1) allocationsAfterFirst = backend.AllocationCount;
            stdout.WriteLine($"step {step,3}/{steps} | loss {lossValue:F6} | grad norm {gradNorm:F4} | {seconds * 1e3:F1} ms | {flopsPerStep / seconds / 1e9:F1} GFLOP/s");
        }
        times.Sort();
        double median = times[times.Count / 2];
        stdout.WriteLine($"smoke: loss {firstLoss:F6} -> {lastLoss:F6}; median step {median * 1e3:F1} ms, {flopsPerStep / median / 1e9:F1} GFLOP/s on {threads} thread(s); " +
                         $"buffers allocated: {allocationsAfterFirst} by the first step, {backend.AllocationCount - allocationsAfterFirst} after it.");
    }
}

/// <summary>A bad command line: the message is shown to the user as is.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>--flag value pairs with typed, range-checked lookups and a check that nothing unknown was given.</summary>
public sealed class Options
{
    // A flag given without a value (followed by another flag or the end) maps to null: a switch such as --heun.
    private readonly Dictionary<string, string?> values = new();
    private readonly HashSet<string> used = new();

    public static Options Parse(ReadOnlySpan<string> args)
    {
        var options = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string flag = args[i];
            if (!flag.StartsWith("--")) throw new UsageException($"unexpected argument '{flag}'; options look like --name value.");
            options.values[flag] = i + 1 < args.Length && !args[i + 1].StartsWith("--") ? args[++i] : null;
        }
        return options;
    }

    /// <summary>The value of <paramref name="flag"/>, or false when absent; an option that takes a value must have one.</summary>
    private bool TryGet(string flag, out string text)
    {
        used.Add(flag);
        text = "";
        if (!values.TryGetValue(flag, out var value)) return false;
        text = value ?? throw new UsageException($"option {flag} needs a value.");
        return true;
    }

    /// <summary>A switch that takes no value (e.g. --heun): true when given.</summary>
    public bool Flag(string flag)
    {
        used.Add(flag);
        if (!values.TryGetValue(flag, out var value)) return false;
        if (value != null) throw new UsageException($"option {flag} takes no value, got '{value}'.");
        return true;
    }

    public int Int(string flag, int fallback, int min = int.MinValue)
    {
        if (!TryGet(flag, out var text)) return fallback;
        if (!int.TryParse(text, out int v) || v < min)
            throw new UsageException($"{flag} must be an integer >= {min}, got '{text}'.");
        return v;
    }

    public double Double(string flag, double fallback, double min = double.MinValue)
    {
        if (!TryGet(flag, out var text)) return fallback;
        if (!double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v) || v < min)
            throw new UsageException($"{flag} must be a number >= {min}, got '{text}'.");
        return v;
    }

    public string String(string flag, string fallback, params string[] allowed)
    {
        if (!TryGet(flag, out var text)) return fallback;
        if (allowed.Length > 0 && !allowed.Contains(text))
            throw new UsageException($"{flag} must be one of {string.Join(", ", allowed)}, got '{text}'.");
        return text;
    }

    public void RejectUnknown()
    {
        foreach (var flag in values.Keys)
            if (!used.Contains(flag)) throw new UsageException($"unknown option {flag}; run `Repa.Runtime --help` for the options.");
    }
}
