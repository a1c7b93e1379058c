using System.Diagnostics;
using System.IO.MemoryMappedFiles;
using System.Security.Cryptography;
using System.Text;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Data;
using Repa.Runtime.Encoders;

namespace Repa.Runtime.Training;

/// <summary>
/// REPA targets from a frozen ONNX encoder, computed once per dataset image and cached on disk as fp16 in a
/// memory-mapped file [images, tokens, dim] (sparse: only computed images take space) with a bitmap of the images
/// already done. The encoder sees each example's clean image (<see cref="TrainingData.FillImages"/>: the padded or
/// resized pixels, or for a latent dataset the PNG the latents came from). The file name hashes the encoder's identity
/// (model file, layer, input size, preprocessing) and the dataset's <see cref="TrainingData.Identity"/>, so changing
/// either starts a new cache.
/// </summary>
public sealed class EncoderTargets : ITargetProvider, IDisposable
{
    private const int Chunk = 32;
    private readonly TrainingData data;
    private readonly OnnxEncoder encoder;
    private readonly MemoryMappedFile file;
    private readonly MemoryMappedViewAccessor view;
    private readonly byte[] present;
    private readonly string presentPath;

    public EncoderTargets(TrainingData data, OnnxEncoder encoder, string name, string cacheFolder)
    {
        this.data = data;
        this.encoder = encoder;
        var probe = Encode([0]);
        Tokens = probe.tokens;
        Dim = probe.dim;
        string key = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join("|",
            encoder.Identity, data.Identity, data.Count, Tokens, Dim))))[..16].ToLowerInvariant();
        Directory.CreateDirectory(cacheFolder);
        CachePath = Path.Combine(cacheFolder, $"targets-{key}.f16");
        presentPath = CachePath + ".done";
        long bytes = (long)data.Count * Tokens * Dim * sizeof(ushort);
        file = MemoryMappedFile.CreateFromFile(CachePath, FileMode.OpenOrCreate, null, bytes, MemoryMappedFileAccess.ReadWrite);
        view = file.CreateViewAccessor(0, bytes);
        present = File.Exists(presentPath) && new FileInfo(presentPath).Length == data.Count ? File.ReadAllBytes(presentPath) : new byte[data.Count];
        Store(0, probe.features);
        Description = $"{name} at {encoder.InputSize} px, {Tokens} tokens x {Dim}, cache {CachePath}";
    }

    public int Tokens { get; }
    public int Dim { get; }
    public string Description { get; }
    public string CachePath { get; }

    /// <summary>How many dataset images have their targets on disk.</summary>
    public int Cached => present.Count(b => b != 0);

    private (float[] features, int tokens, int dim) Encode(int[] indices)
    {
        var images = new byte[indices.Length * data.ImageChannels * data.ImageHeight * data.ImageWidth];
        data.FillImages(indices, images);
        var features = encoder.Encode(images, indices.Length, data.ImageChannels, data.ImageHeight, data.ImageWidth, out int tokens, out int dim);
        return (features, tokens, dim);
    }

    private void Store(int index, ReadOnlySpan<float> features)
    {
        var halves = new Half[features.Length];
        for (int i = 0; i < halves.Length; i++) halves[i] = (Half)features[i];
        view.WriteArray((long)index * Tokens * Dim * sizeof(ushort), halves, 0, halves.Length);
        present[index] = 1;
    }

    private void SavePresent()
    {
        view.Flush();
        File.WriteAllBytes(presentPath + ".tmp", present);
        File.Move(presentPath + ".tmp", presentPath, overwrite: true);
    }

    /// <summary>Computes the targets of every listed image not yet cached, with a progress line (images/s, ETA).</summary>
    public void Precompute(IEnumerable<int> indices, TextWriter? progress)
    {
        var todo = indices.Distinct().Where(i => present[i] == 0).ToArray();
        if (todo.Length == 0) return;
        var sw = Stopwatch.StartNew();
        for (int start = 0; start < todo.Length; start += Chunk)
        {
            var chunk = todo.AsSpan(start, Math.Min(Chunk, todo.Length - start)).ToArray();
            var (features, _, _) = Encode(chunk);
            int per = Tokens * Dim;
            for (int j = 0; j < chunk.Length; j++) Store(chunk[j], features.AsSpan(j * per, per));
            SavePresent();
            int done = start + chunk.Length;
            double rate = done / sw.Elapsed.TotalSeconds;
            progress?.Write($"\rencoder targets {ProgressBar.Bar(done, todo.Length)} {done}/{todo.Length} | {rate:F1} img/s | ETA {ProgressBar.Eta(sw.Elapsed, done, todo.Length)}   ");
        }
        progress?.WriteLine();
    }

    public Tensor Targets(ReadOnlySpan<int> indices, IBackend backend, DType dtype)
    {
        Precompute(indices.ToArray(), null);
        int per = Tokens * Dim;
        var halves = new Half[per];
        var batch = new float[indices.Length * per];
        for (int j = 0; j < indices.Length; j++)
        {
            view.ReadArray((long)indices[j] * per * sizeof(ushort), halves, 0, per);
            for (int i = 0; i < per; i++) batch[j * per + i] = (float)halves[i];
        }
        return Tensor.FromArray(backend, batch, indices.Length, Tokens, Dim);
    }

    public void Dispose()
    {
        view.Dispose();
        file.Dispose();
    }
}
