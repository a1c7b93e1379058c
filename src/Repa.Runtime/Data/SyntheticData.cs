using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Training;

namespace Repa.Runtime.Data;

/// <summary>
/// Stand-in data for benchmarks: <see cref="Count"/> inputs of standard normal values (Philox by index, so any shape
/// can be timed without a dataset on disk, e.g. SiT-XL/2's 4 x 32 x 32 latents) and labels index mod classes. Its
/// clean images are a fixed grey ramp: benchmarks use <see cref="SyntheticTargets"/>, not an encoder.
/// </summary>
public sealed class SyntheticTrainingData(int count, int channels, int size, int numClasses) : TrainingData
{
    public override int Count { get; } = count > 0 ? count : throw new ArgumentException($"synthetic data needs at least one example, got {count}.");
    public override int Channels { get; } = channels > 0 ? channels : throw new ArgumentException($"--channels must be at least 1, got {channels}.");
    public override int Size { get; } = size > 0 ? size : throw new ArgumentException($"--image-size must be at least 1, got {size}.");
    public override int NumClasses { get; } = numClasses > 0 ? numClasses : throw new ArgumentException($"--classes must be at least 1, got {numClasses}.");
    public override string Identity => $"synthetic:{Count}x{Channels}x{Size}x{Size}:{NumClasses}";
    public override string Description => $"synthetic N(0, 1) inputs [{Channels}, {Size}, {Size}], {NumClasses} classes";
    public override int ImageChannels => 1;
    public override int ImageHeight => Size;
    public override int ImageWidth => Size;

    protected override void FillBatchCore(ReadOnlySpan<int> indices, Span<float> inputs, Span<int> labels, ulong seed, ulong step)
    {
        int per = Channels * Size * Size;
        for (int b = 0; b < indices.Length; b++)
        {
            Philox.Normal(seed, (ulong)indices[b], 0, inputs.Slice(b * per, per));
            labels[b] = indices[b] % NumClasses;
        }
    }

    protected override void FillImagesCore(ReadOnlySpan<int> indices, Span<byte> images)
    {
        int per = Size * Size;
        for (int b = 0; b < indices.Length; b++)
            for (int i = 0; i < per; i++) images[b * per + i] = (byte)(255 * i / Math.Max(1, per - 1));
    }
}

/// <summary>
/// Stand-in REPA targets for benchmarks: one fixed block of standard normal features [batch, tokens, dim], drawn once
/// and uploaded on every call, as a run uploads its cached encoder features every step (the upload is part of the
/// measured step; the drawing is not).
/// </summary>
public sealed class SyntheticTargets(int tokens, int dim) : ITargetProvider
{
    private float[] block = [];

    public int Tokens { get; } = tokens;
    public int Dim { get; } = dim > 0 ? dim : throw new ArgumentException($"--z-dim must be at least 1, got {dim}.");
    public string Description => $"synthetic N(0, 1) features [{Tokens}, {Dim}]";

    public Tensor Targets(ReadOnlySpan<int> indices, IBackend backend, DType dtype)
    {
        long length = (long)indices.Length * Tokens * Dim;
        if (block.Length != length)
        {
            block = new float[checked((int)length)];
            Philox.Normal(0, 0, 0, block);
        }
        return Tensor.FromArray(backend, block, indices.Length, Tokens, Dim);
    }
}
