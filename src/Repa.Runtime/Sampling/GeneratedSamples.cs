using Repa.Autograd;
using Repa.Kernels.Cpu;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Data;
using Repa.Runtime.Plots;

namespace Repa.Runtime.Sampling;

/// <summary>
/// Samples from <see cref="ImageGenerator.Generate"/>: float64 NCHW values with their labels, and the ways out of the
/// program: 8-bit images (uint8 NHWC), a labelled grid PNG, an .npz for ADM's evaluator, or the raw latents.
/// </summary>
public sealed class GeneratedSamples
{
    private readonly Func<int, string> labelName;

    internal GeneratedSamples(double[] values, int[] labels, int channels, int height, int width, Func<int, string> labelName)
    {
        Values = values;
        Labels = labels;
        Channels = channels;
        Height = height;
        Width = width;
        this.labelName = labelName;
    }

    /// <summary>The samples, [Count, Channels, Height, Width] flattened; pixel models give values in about [-1, 1].</summary>
    public double[] Values { get; }

    /// <summary>The label of each sample (the null class for unconditional ones).</summary>
    public int[] Labels { get; }

    /// <summary>Number of samples.</summary>
    public int Count => Labels.Length;

    /// <summary>Channels of a sample.</summary>
    public int Channels { get; }

    /// <summary>Sample height.</summary>
    public int Height { get; }

    /// <summary>Sample width.</summary>
    public int Width { get; }

    /// <summary>Whether the samples are pixel images (1 or 3 channels); otherwise they are latents or other tensors.</summary>
    public bool AreImages => Channels is 1 or 3;

    /// <summary>A label in words (the class name when the dataset is known, else its number; "uncond" for the null class).</summary>
    public string LabelName(int label) => labelName(label);

    /// <summary>
    /// The samples as 8-bit images, uint8 [Count, Height, Width, Channels] (the layout of ADM's .npz arr_0), converted as
    /// REPA's generate.py does (<see cref="SampleImages.ToByte"/>). Throws <see cref="InvalidOperationException"/> for
    /// samples that are not images (latents need the SD VAE to become images).
    /// </summary>
    public byte[] ToImages()
    {
        if (!AreImages) throw new InvalidOperationException(NotImages);
        return SampleImages.ToNhwcBytes(Values, Count, Channels, Height, Width);
    }

    /// <summary>Why samples of this channel count are not images, in one sentence.</summary>
    public string NotImages => Channels == 4
        ? "these are 4-channel SD-VAE latents, not images, and Repa has no VAE decoder (REPA decodes latents / 0.18215 with stabilityai/sd-vae-ft-ema); save them with SaveLatents"
        : $"{Channels}-channel samples are not images; save them with SaveLatents";

    /// <summary>
    /// Writes a grid PNG: <paramref name="columns"/> images a row, rows labelled with <paramref name="rowLabels"/> or, when
    /// null, with the name of each row's first label; an optional <paramref name="title"/> line on top. Images smaller
    /// than 64 px are enlarged by a whole factor.
    /// </summary>
    public void SaveGrid(string path, int columns, string title = "", IReadOnlyList<string>? rowLabels = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (columns < 1) throw new ArgumentException($"a grid needs at least one column, got {columns}.", nameof(columns));
        var images = ToImages();
        rowLabels ??= [.. Enumerable.Range(0, (Count + columns - 1) / columns).Select(r => LabelName(Labels[r * columns]))];
        CreateFolderOf(path);
        SampleGrid.Save(path, images, Count, Height, Width, Channels, columns, rowLabels, title);
    }

    /// <summary>Writes <paramref name="path"/> as numpy.savez would: arr_0 = <see cref="ToImages"/>, uint8 [N, H, W, C], what ADM's evaluator reads.</summary>
    public void SaveNpz(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var images = ToImages();
        using var npz = new NpzWriter(path);
        npz.Add("arr_0", NpyArray.FromBytes(images, Count, Height, Width, Channels));
    }

    /// <summary>
    /// Writes the samples as safetensors: "samples" float32 [N, C, H, W] and "labels" int32 [N], with
    /// <paramref name="metadata"/> (e.g. the sampler) in the header. For latent models this is the output.
    /// </summary>
    public void SaveLatents(string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        CreateFolderOf(path);
        using var cpu = new CpuBackend(1);
        using var tape = new Tape(); // the two tensors go back to the pool when it ends
        var f = new float[Values.Length];
        for (int i = 0; i < f.Length; i++) f[i] = (float)Values[i];
        SafeTensors.Write(path,
            [("samples", Tensor.FromArray(cpu, f, Count, Channels, Height, Width)), ("labels", Tensor.FromArray(cpu, Labels, Count))],
            metadata);
    }

    private static void CreateFolderOf(string path)
    {
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (!string.IsNullOrEmpty(folder)) Directory.CreateDirectory(folder);
    }
}
