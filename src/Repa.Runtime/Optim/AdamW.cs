using Repa.Autograd;

namespace Repa.Runtime.Optim;

/// <summary>
/// torch.optim.AdamW (bias-corrected, decoupled weight decay) preceded by torch.nn.utils.clip_grad_norm_ over all
/// parameters, as REPA's train.py does: lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0, max norm 1.0 there.
/// The clip is applied through the kernel's gradient scale, so the gradients themselves are left unscaled.
/// Parameters whose Grad is null count as zero in the norm and are not updated (PyTorch skips them too). The step
/// count is shared by all parameters (PyTorch keeps one per parameter; they agree whenever every parameter gets a
/// gradient every step, as in REPA).
/// A step is split so that its device part can be captured into a CUDA graph: <see cref="Prepare"/> (host: the step
/// count and the scalars that depend on it, uploaded), <see cref="Apply"/> (device only: the squared gradient norm summed
/// into device memory, the clip scale and the update computed from it there), <see cref="LastGradNorm"/> (read after).
/// </summary>
public sealed class AdamW : IDisposable
{
    /// <summary>Prefixes of the state tensors' names in checkpoints.</summary>
    public const string MomentPrefix = "optimizer.m.", SecondMomentPrefix = "optimizer.v.";

    /// <summary>Metadata key suggested for the step count in checkpoints.</summary>
    public const string StepKey = "optimizer.step";

    private readonly (string Name, Tensor Parameter, Tensor M, Tensor V)[] entries;

    // float64 {sum of squares of the gradients, -lr / (1 - beta1^step), sqrt(1 - beta2^step), 1 - lr wd}: the step's
    // varying scalars in device memory (IBackend.AdamWStep's device overload); null without parameters.
    private readonly Tensor? scalars;

    public AdamW(IReadOnlyList<(string Name, Tensor Parameter)> parameters, double lr = 1e-4, (double Beta1, double Beta2)? betas = null,
        double eps = 1e-8, double weightDecay = 0, double? maxGradNorm = null)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        var (beta1, beta2) = betas ?? (0.9, 0.999);
        if (!(lr >= 0)) throw new ArgumentOutOfRangeException(nameof(lr), lr, "adamw: lr must be >= 0.");
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(betas), beta1, "adamw: beta1 must be in [0, 1).");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(betas), beta2, "adamw: beta2 must be in [0, 1).");
        if (!(eps >= 0)) throw new ArgumentOutOfRangeException(nameof(eps), eps, "adamw: eps must be >= 0.");
        if (!(weightDecay >= 0)) throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "adamw: weight decay must be >= 0.");
        if (maxGradNorm is { } mg && !(mg >= 0)) throw new ArgumentOutOfRangeException(nameof(maxGradNorm), mg, "adamw: max grad norm must be >= 0 (or null for no clipping).");
        Lr = lr;
        Beta1 = beta1;
        Beta2 = beta2;
        Eps = eps;
        WeightDecay = weightDecay;
        MaxGradNorm = maxGradNorm is > 0 ? maxGradNorm : null;

        var seen = new HashSet<string>(StringComparer.Ordinal);
        entries = new (string, Tensor, Tensor, Tensor)[parameters.Count];
        for (int i = 0; i < parameters.Count; i++)
        {
            var (name, p) = parameters[i];
            if (string.IsNullOrEmpty(name)) throw new ArgumentException($"adamw: parameter {i} has no name.", nameof(parameters));
            ArgumentNullException.ThrowIfNull(p, $"parameters[{name}]");
            if (!seen.Add(name)) throw new ArgumentException($"adamw: the parameter name '{name}' appears twice.", nameof(parameters));
            // PyTorch creates the moments lazily as zeros; eager zeros give the same first step. Off-tape: they live as
            // long as the optimiser.
            entries[i] = (name, p, Tensor.Zeros(p.Backend, p.DType, p.Shape).Persistent(), Tensor.Zeros(p.Backend, p.DType, p.Shape).Persistent());
        }
        if (entries.Length > 0) scalars = Tensor.Zeros(entries[0].Parameter.Backend, Repa.Kernels.DType.F64, 4).Persistent();
    }

    /// <summary>Learning rate; settable for schedules (REPA keeps it constant).</summary>
    public double Lr { get; set; }
    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public double WeightDecay { get; }

    /// <summary>Global grad-norm clip threshold, or null for none.</summary>
    public double? MaxGradNorm { get; }

    /// <summary>Number of updates taken so far (PyTorch's state["step"]).</summary>
    public int StepCount { get; private set; }

    public IEnumerable<(string Name, Tensor Parameter)> Parameters => entries.Select(e => (e.Name, e.Parameter));

    /// <summary>sqrt of the sum of squares over every parameter's gradient (null gradients count as zero), in float64.</summary>
    public double GradNorm()
    {
        double total = 0;
        foreach (var e in entries)
            if (e.Parameter.Grad is { } g) total += g.Backend.SumOfSquares(g.Buffer, g.Count);
        return Math.Sqrt(total);
    }

    /// <summary>
    /// The clip coefficient clip_grad_norm_ would multiply the gradients by for <paramref name="norm"/>:
    /// min(max / (norm + 1e-6), 1), NaN for a NaN norm (torch.clamp propagates it); 1 without clipping.
    /// </summary>
    public double ClipScale(double norm) => MaxGradNorm is { } max ? Math.Min(max / (norm + 1e-6), 1.0) : 1.0;

    /// <summary>Clips (through the gradient scale) and updates every parameter with a gradient; returns the pre-clip norm.
    /// The same as <see cref="Prepare"/>, <see cref="Apply"/>, <see cref="LastGradNorm"/>.</summary>
    public double Step()
    {
        Prepare();
        Apply();
        return LastGradNorm();
    }

    /// <summary>
    /// The host half of a step, before <see cref="Apply"/>: counts the step and uploads the scalars that depend on the
    /// count and the learning rate (formed in float64 as torch does), so that Apply reads them from device memory.
    /// </summary>
    public void Prepare()
    {
        if (StepCount == int.MaxValue) throw new InvalidOperationException("adamw: step count overflow.");
        StepCount++;
        if (scalars == null) return;
        double[] values = [0, -(Lr / (1 - Math.Pow(Beta1, StepCount))), Math.Sqrt(1 - Math.Pow(Beta2, StepCount)), 1 - Lr * WeightDecay];
        scalars.Backend.Upload<double>(values, scalars.Buffer);
    }

    /// <summary>
    /// The device half of a step (no host reads, so it can be captured into a graph): the squared global gradient
    /// norm summed into device memory tensor by tensor, then every parameter with a gradient updated with the clip
    /// scale computed from it on the device. Uses the scalars of the last <see cref="Prepare"/>.
    /// </summary>
    public void Apply()
    {
        if (scalars == null) return;
        bool first = true;
        foreach (var e in entries)
        {
            if (e.Parameter.Grad is not { } g) continue;
            g.Backend.SumOfSquares(g.Buffer, g.Count, scalars.Buffer, accumulate: !first);
            first = false;
        }
        foreach (var (_, p, m, v) in entries)
        {
            if (p.Grad is not { } g) continue;
            p.Backend.AdamWStep(p.Buffer, g.Buffer, m.Buffer, v.Buffer, p.Count, Beta1, Beta2, Eps, MaxGradNorm ?? 0, scalars.Buffer);
        }
    }

    /// <summary>The pre-clip global gradient norm of the last <see cref="Apply"/> (read from device memory; 0 when no
    /// parameter had a gradient).</summary>
    public double LastGradNorm()
    {
        if (scalars == null) return 0;
        Span<double> sum = stackalloc double[1];
        scalars.Backend.Download(scalars.Buffer, sum);
        return Math.Sqrt(sum[0]);
    }

    /// <summary>Zeroes every parameter's gradient (keeping the buffers).</summary>
    public void ZeroGrad()
    {
        foreach (var e in entries) e.Parameter.ZeroGrad();
    }

    /// <summary>The moments as named tensors for a checkpoint: "optimizer.m.&lt;name&gt;", "optimizer.v.&lt;name&gt;" (live, not copies).</summary>
    public IReadOnlyList<(string Name, Tensor Tensor)> StateTensors()
    {
        var result = new List<(string, Tensor)>(2 * entries.Length);
        foreach (var e in entries) result.Add((MomentPrefix + e.Name, e.M));
        foreach (var e in entries) result.Add((SecondMomentPrefix + e.Name, e.V));
        return result;
    }

    /// <summary>
    /// Restores the moments (copied, converted to the parameter's dtype if needed) and the step count. Every parameter's
    /// two tensors must be present with the parameter's shape; extra entries are ignored (a checkpoint holds more).
    /// </summary>
    public void LoadState(IReadOnlyDictionary<string, Tensor> tensors, int step)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        if (step < 0) throw new ArgumentOutOfRangeException(nameof(step), step, "adamw: step must be >= 0.");
        // Validate everything first so a bad checkpoint leaves the optimiser untouched.
        foreach (var e in entries)
        {
            StateLoading.Require("adamw", tensors, MomentPrefix + e.Name, e.M);
            StateLoading.Require("adamw", tensors, SecondMomentPrefix + e.Name, e.V);
        }
        foreach (var e in entries)
        {
            StateLoading.CopyInto(tensors[MomentPrefix + e.Name], e.M);
            StateLoading.CopyInto(tensors[SecondMomentPrefix + e.Name], e.V);
        }
        StepCount = step;
    }

    public void Dispose()
    {
        scalars?.Dispose();
        foreach (var e in entries)
        {
            e.M.Dispose();
            e.V.Dispose();
        }
    }
}

/// <summary>Checks and copies shared by the optimiser and the EMA when restoring state from a checkpoint.</summary>
internal static class StateLoading
{
    public static void Require(string owner, IReadOnlyDictionary<string, Tensor> tensors, string name, Tensor target)
    {
        if (!tensors.TryGetValue(name, out var source))
            throw new KeyNotFoundException($"{owner}: the state tensor '{name}' is missing.");
        if (!source.Shape.AsSpan().SequenceEqual(target.Shape))
            throw new ShapeMismatchException($"{owner}: state tensor '{name}' has shape {source.ShapeString}, expected {target.ShapeString}.");
    }

    public static void CopyInto(Tensor source, Tensor target)
    {
        if (source.Backend == target.Backend)
        {
            if (source.DType == target.DType) target.Backend.Copy(source.Buffer, 0, target.Buffer, 0, target.Count);
            else target.Backend.Convert(source.Buffer, target.Buffer, target.Count);
            return;
        }
        // Across backends: through the host in float64 (exact for fp32 and fp64).
        double[] values = source.ToDoubleArray();
        if (target.DType == Repa.Kernels.DType.F64) target.Backend.Upload<double>(values, target.Buffer);
        else if (target.DType == Repa.Kernels.DType.F32) target.Backend.Upload<float>(values.Select(x => (float)x).ToArray(), target.Buffer);
        else throw new NotSupportedException($"state copy into {target.Describe()} is not supported.");
    }
}
