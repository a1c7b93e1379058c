using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Models;

namespace Repa.Runtime.Sampling;

/// <summary>
/// Runs a tensor model on the samplers' float64 spans: inputs are rounded to the model's dtype (as REPA casts x and t
/// to the latents' dtype), the batch is cut into chunks of at most <see cref="Chunk"/> samples, each chunk runs under
/// <see cref="Tape.NoGrad"/> on a tape of its own (its activations go back to the pool when it ends), and the outputs
/// are widened back to float64.
/// </summary>
public sealed class BatchedModel
{
    private readonly Func<Tensor, Tensor, Tensor, Tensor> forward;
    private readonly int[] sampleShape;

    /// <param name="backend">Where the model's weights live.</param>
    /// <param name="dtype">The model's dtype (F32 for SiT): x and t are passed in it.</param>
    /// <param name="sampleShape">One sample's shape, e.g. [C, H, W]; x goes in as [m, C, H, W].</param>
    /// <param name="forward">(x [m, ...], t [m], y [m] int32) -> output [m, ...] (any per-sample size).</param>
    /// <param name="chunk">At most this many samples per forward call.</param>
    public BatchedModel(IBackend backend, DType dtype, int[] sampleShape, Func<Tensor, Tensor, Tensor, Tensor> forward, int chunk)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(sampleShape);
        ArgumentNullException.ThrowIfNull(forward);
        if (chunk < 1) throw new ArgumentException($"the model batch (chunk) must be at least 1, got {chunk}.", nameof(chunk));
        if (sampleShape.Length == 0 || sampleShape.Any(s => s < 1))
            throw new ArgumentException($"a sample shape needs positive sizes, got {Shapes.Format(sampleShape)}.", nameof(sampleShape));
        Backend = backend;
        DType = dtype;
        this.sampleShape = (int[])sampleShape.Clone();
        this.forward = forward;
        Chunk = chunk;
        SampleSize = checked((int)Shapes.Count(sampleShape));
    }

    /// <summary>SiT's velocity (its first output; the projections are dropped) in chunks of <paramref name="chunk"/> samples.</summary>
    public static BatchedModel ForSiT(SiT model, int chunk)
    {
        ArgumentNullException.ThrowIfNull(model);
        var c = model.Config;
        return new BatchedModel(model.Backend, model.DType, [c.InChannels, c.InputSize, c.InputSize],
            (x, t, y) => model.Forward(x, t, y).Output, chunk);
    }

    public IBackend Backend { get; }
    public DType DType { get; }
    public int Chunk { get; }

    /// <summary>Values per input sample (the product of the sample shape).</summary>
    public int SampleSize { get; }

    /// <summary>This model as the samplers' delegate.</summary>
    public VelocityModel AsVelocityModel() => Run;

    /// <summary>
    /// output[i] = model(x[i], t, labels[i]) for every sample i; x holds labels.Length samples of <see cref="SampleSize"/>
    /// values and output labels.Length samples of whatever size the model returns (checked).
    /// </summary>
    public void Run(ReadOnlySpan<double> x, double t, ReadOnlySpan<int> labels, Span<double> output)
    {
        int n = labels.Length;
        if (x.Length != (long)n * SampleSize)
            throw new ArgumentException($"model: {x.Length} input values are not {n} samples of {SampleSize}.", nameof(x));
        if (n == 0) return;
        if (output.Length % n != 0)
            throw new ArgumentException($"model: {output.Length} output values do not split into {n} samples.", nameof(output));
        int outSize = output.Length / n;
        for (int first = 0; first < n; first += Chunk)
        {
            int m = Math.Min(Chunk, n - first);
            using var tape = new Tape();
            using var noGrad = Tape.NoGrad();
            var result = Forward(Upload(x.Slice(first * SampleSize, m * SampleSize), [m, .. sampleShape]), t, labels.Slice(first, m), outSize);
            var values = result.ToDoubleArray();
            values.CopyTo(output.Slice(first * outSize, m * outSize));
        }
    }

    /// <summary>
    /// The same on device memory, for a model whose output has the input's shape (a velocity): <paramref name="input"/>
    /// holds labels.Length samples in <see cref="DType"/> and <paramref name="output"/> receives as many, in
    /// <see cref="DType"/> too (a result in another dtype is converted). Nothing goes through the host but the labels
    /// and t, so a sampler's state can stay on the device between model calls.
    /// </summary>
    public void Run(DeviceBuffer input, double t, ReadOnlySpan<int> labels, DeviceBuffer output)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(output);
        long count = (long)labels.Length * SampleSize;
        foreach (var (name, buffer) in new[] { ("input", input), ("output", output) })
        {
            if (buffer.DType != DType || buffer.Length < count)
                throw new ArgumentException($"model: the {name} {buffer} must be {DType.Name()} with room for {labels.Length} samples of {SampleSize} values.");
        }
        for (int first = 0; first < labels.Length; first += Chunk)
        {
            int m = Math.Min(Chunk, labels.Length - first);
            using var tape = new Tape();
            using var noGrad = Tape.NoGrad();
            var xs = Tensor.Empty(Backend, DType, [m, .. sampleShape]);
            Backend.Copy(input, (long)first * SampleSize, xs.Buffer, 0, (long)m * SampleSize);
            var result = Forward(xs, t, labels.Slice(first, m), SampleSize);
            if (result.DType != DType) result = result.To(DType);
            Backend.Copy(result.Buffer, 0, output, (long)first * SampleSize, (long)m * SampleSize);
        }
    }

    /// <summary>One chunk through the network (on the caller's no-grad tape): t in the model's dtype, labels as int32.</summary>
    private Tensor Forward(Tensor xs, double t, ReadOnlySpan<int> labels, int outSize)
    {
        int m = labels.Length;
        var ts = Upload(Enumerable.Repeat(t, m).ToArray(), [m]);
        var ys = Tensor.FromArray(Backend, labels.ToArray(), m);
        var result = forward(xs, ts, ys);
        if (result.Count != (long)m * outSize)
            throw new InvalidOperationException($"model: the output {result.Describe()} does not hold {m} samples of {outSize} values.");
        return result;
    }

    private Tensor Upload(ReadOnlySpan<double> values, int[] shape)
    {
        if (DType == DType.F32)
        {
            var f = new float[values.Length];
            for (int i = 0; i < f.Length; i++) f[i] = (float)values[i];
            return Tensor.FromArray(Backend, f, shape);
        }
        var d = Tensor.FromArray(Backend, values.ToArray(), shape);
        return DType == DType.F64 ? d : d.To(DType);
    }
}
