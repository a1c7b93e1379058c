using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Data;
using Repa.Runtime.Encoders;

namespace Repa.Runtime.Training;

/// <summary>
/// REPA targets from a frozen ONNX encoder, computed once per dataset image on first use and kept in memory (the
/// encoder sees the clean image at its own input size; its feature map grid must equal the model's patch grid).
/// </summary>
public sealed class EncoderTargets : ITargetProvider
{
    private readonly IdxDataset data;
    private readonly OnnxEncoder encoder;
    private readonly int imageSize;
    private readonly Dictionary<int, float[]> cache = new();

    public EncoderTargets(IdxDataset data, OnnxEncoder encoder, int imageSize, string name)
    {
        this.data = data;
        this.encoder = encoder;
        this.imageSize = imageSize;
        var probe = Encode([0]);
        Tokens = probe.tokens;
        Dim = probe.dim;
        cache[0] = probe.features;
        Description = $"{name} at {encoder.InputSize} px, {Tokens} tokens x {Dim}";
    }

    public int Tokens { get; }
    public int Dim { get; }
    public string Description { get; }
    public int Cached => cache.Count;

    private (float[] features, int tokens, int dim) Encode(int[] indices)
    {
        var images = new float[indices.Length * data.Channels * imageSize * imageSize];
        data.FillBatch(indices, images, new int[indices.Length], imageSize);
        var features = encoder.Encode(images, indices.Length, data.Channels, imageSize, imageSize, out int tokens, out int dim);
        return (features, tokens, dim);
    }

    public Tensor Targets(ReadOnlySpan<int> indices, IBackend backend, DType dtype)
    {
        var missing = indices.ToArray().Distinct().Where(i => !cache.ContainsKey(i)).ToArray();
        if (missing.Length > 0)
        {
            var (features, _, _) = Encode(missing);
            int per = Tokens * Dim;
            for (int j = 0; j < missing.Length; j++) cache[missing[j]] = features.AsSpan(j * per, per).ToArray();
        }
        var batch = new float[indices.Length * Tokens * Dim];
        for (int j = 0; j < indices.Length; j++) cache[indices[j]].CopyTo(batch, j * Tokens * Dim);
        return Tensor.FromArray(backend, batch, indices.Length, Tokens, Dim);
    }
}
