using Repa.Autograd;
using Repa.Kernels;

namespace Repa.Runtime.Training;

/// <summary>
/// One micro-batch's inputs to an objective as persistent device tensors that keep their memory from step to step:
/// the images x0, the noise, the labels (int32, dropout applied), the per-sample times and the coefficients the
/// objective derives from them ([N, 1, 1, 1] each), the DDPM objective's per-sample VLB parameters [N, 4] and one
/// encoder target [N, T, z_j] per projector. A step uploads into them before its device work, so that the work itself
/// (captured as a CUDA graph) reads everything that changes from device memory.
/// </summary>
public sealed class StepInputs : IDisposable
{
    /// <param name="backend">Where the tensors live.</param>
    /// <param name="dtype">The model's input dtype (x0, noise, times, coefficients, targets).</param>
    /// <param name="batch">Samples in the micro-batch.</param>
    /// <param name="channels">Image channels.</param>
    /// <param name="size">Image height and width.</param>
    /// <param name="coefficients">How many [N, 1, 1, 1] coefficient tensors the objective uses.</param>
    /// <param name="stepParameters">Whether the objective has a [N, 4] VLB parameter tensor (DDPM).</param>
    /// <param name="targets">(tokens, dim) of each encoder target.</param>
    public StepInputs(IBackend backend, DType dtype, int batch, int channels, int size, int coefficients, bool stepParameters,
        IReadOnlyList<(int Tokens, int Dim)> targets)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(targets);
        Tensor Make(DType type, params int[] shape) => Tensor.Zeros(backend, type, shape).Persistent();
        X0 = Make(dtype, batch, channels, size, size);
        Noise = Make(dtype, batch, channels, size, size);
        Labels = Make(DType.I32, batch);
        Times = Make(dtype, batch);
        Coefficients = Enumerable.Range(0, coefficients).Select(_ => Make(dtype, batch, 1, 1, 1)).ToArray();
        StepParameters = stepParameters ? Make(dtype, batch, 4) : null;
        Targets = targets.Select(t => Make(dtype, batch, t.Tokens, t.Dim)).ToArray();
    }

    public Tensor X0 { get; }
    public Tensor Noise { get; }
    public Tensor Labels { get; }
    public Tensor Times { get; }
    public Tensor[] Coefficients { get; }
    public Tensor? StepParameters { get; }
    public Tensor[] Targets { get; }

    /// <summary>Samples in the micro-batch.</summary>
    public int Batch => X0.Shape[0];

    /// <summary>Uploads host values (float64, converted to the tensor's dtype as <c>(float)</c> would) into a tensor.</summary>
    public static void Upload(Tensor destination, double[] values)
    {
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(values);
        if (values.Length != destination.Count)
            throw new ShapeMismatchException($"step inputs: {values.Length} values for {destination.Describe()}.");
        switch (destination.DType)
        {
            case DType.F64: destination.Backend.Upload<double>(values, destination.Buffer); break;
            case DType.F32: destination.Backend.Upload<float>(values.Select(x => (float)x).ToArray(), destination.Buffer); break;
            default: throw new ArgumentException($"step inputs: dtype {destination.DType.Name()} is not a floating-point model dtype.");
        }
    }

    public void Dispose()
    {
        X0.Dispose();
        Noise.Dispose();
        Labels.Dispose();
        Times.Dispose();
        foreach (var c in Coefficients) c.Dispose();
        StepParameters?.Dispose();
        foreach (var t in Targets) t.Dispose();
    }
}
