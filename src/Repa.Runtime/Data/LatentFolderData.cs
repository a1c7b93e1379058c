using Repa.Kernels;
using Repa.Runtime.Plots;
using Repa.Runtime.Training;

namespace Repa.Runtime.Data;

/// <summary>
/// REPA's preprocessed layout (sihyun-yu/REPA dataset.py CustomDataset, made by preprocessing/dataset_tools.py):
/// ROOT/images/ holds the PNGs (convert: 00000/img00000000.png ...) and ROOT/vae-sd/ the SD-VAE posteriors
/// (encode: 00000/img-mean-std-00000000.npy, float32 [2C, H, W] = mean and std stacked on channels, [8, 32, 32] for
/// 256 px ImageNet) with vae-sd/dataset.json holding the labels keyed by .npy name. Both folders are listed
/// recursively and sorted, and example i pairs PNG i with .npy i, as REPA does. Each step draws
/// z = (mean + std * eps) * 0.18215 with eps from Philox (computed in float64, rounded once); the model trains on z
/// ([C, H, W], fixed by the files) and the REPA encoder sees the PNG. Files are read when a batch asks for them.
/// </summary>
public sealed class LatentFolderData : TrainingData
{
    /// <summary>The image folder under the root.</summary>
    public const string ImagesFolder = "images";

    /// <summary>The latent folder under the root (REPA's name for SD-VAE ft-MSE posteriors).</summary>
    public const string LatentsFolder = "vae-sd";

    private readonly FolderListing images, latents;
    private readonly int[] labels;
    private readonly int[] fileShape;
    private readonly PngInfo firstImage;

    /// <summary>Opens ROOT; a positive <paramref name="imageSize"/> must equal the latents' side.</summary>
    public LatentFolderData(string root, int imageSize = 0)
    {
        Root = root;
        string imagesDir = Path.Combine(root, ImagesFolder), latentsDir = Path.Combine(root, LatentsFolder);
        if (!Directory.Exists(latentsDir)) throw new DirectoryNotFoundException($"REPA folder '{root}' has no {LatentsFolder}/ folder of latents.");
        if (!Directory.Exists(imagesDir))
            throw new DirectoryNotFoundException(
                $"REPA folder '{root}' has {LatentsFolder}/ but no {ImagesFolder}/; the encoder needs the PNGs the latents were made from (dataset_tools.py convert writes them).");
        latents = FolderListing.List(latentsDir, ".npy");
        if (latents.Files.Length == 0) throw new InvalidDataException($"latent folder '{latentsDir}' holds no .npy files; run REPA's dataset_tools.py encode into it.");
        images = FolderListing.List(imagesDir, ".png");
        if (images.Files.Length != latents.Files.Length)
            throw new InvalidDataException(
                $"REPA folder '{root}' has {images.Files.Length} PNGs in {ImagesFolder}/ but {latents.Files.Length} .npy files in {LatentsFolder}/; they pair by sorted order, so complete or rebuild the shorter one.");
        var read = ImageFolder.ReadLabels(latents, "latent folder");
        Conditional = read != null;
        (NumClasses, labels) = ImageFolder.Classes(read, latents.Files.Length);

        string probe = latents.FullPath(0);
        var (type, shape) = Npy.ReadHeader(probe);
        var dims = shape.Length == 4 && shape[0] == 1 ? shape[1..] : shape; // a saved batch of one is accepted too
        if (type == NpyType.UInt8 || dims.Length != 3 || dims[0] < 2 || dims[0] % 2 != 0 || dims[1] != dims[2] || dims[1] < 1)
            throw new InvalidDataException(
                $"latent file '{probe}' holds {Npy.Describe(type, shape)}, but REPA's {LatentsFolder} files hold the posterior mean and std stacked on channels as floats [2C, H, W] with H = W, e.g. float32 (8, 32, 32).");
        fileShape = shape;
        Channels = dims[0] / 2;
        Size = dims[1];
        if (imageSize > 0 && imageSize != Size)
            throw new ArgumentException(
                $"--image-size {imageSize} contradicts the latents in '{latentsDir}', which fix the model input at {Channels}x{Size}x{Size}; leave --image-size out or pass {Size}.");
        firstImage = Png.ReadInfo(images.FullPath(0));
        ImageChannels = ImageFolder.ChannelsOf(firstImage);
    }

    /// <summary>The folder holding images/ and vae-sd/.</summary>
    public string Root { get; }

    /// <summary>False when vae-sd/dataset.json says "labels": null (every label is then 0 of 1 class).</summary>
    public bool Conditional { get; }

    public override int Count => latents.Files.Length;
    public override int Channels { get; }
    public override int Size { get; }
    public override int NumClasses { get; }

    /// <summary>The encoder sees images/, so the cache key follows the PNGs (names, sizes, times).</summary>
    public override string Identity => string.Join("|", "repa-images", Path.GetFullPath(images.Folder), images.Hash, Count, ImageChannels);

    public override string Description =>
        $"REPA folder {Root} ({Count} SD-VAE latents {Channels}x{Size}x{Size}, z = (mean + std * eps) * {SdVaeScale} drawn each step; " +
        $"the encoder sees {ImagesFolder}/ at {ImageWidth}x{ImageHeight} {(ImageChannels == 1 ? "grey" : "RGB")}; " + (Conditional ? $"{NumClasses} classes)" : "unlabelled)");

    public override int ImageChannels { get; }
    public override int ImageHeight => firstImage.Height;
    public override int ImageWidth => firstImage.Width;

    /// <summary>The .npy file of example <paramref name="i"/>.</summary>
    public string LatentPath(int i) => latents.FullPath(i);

    /// <summary>The PNG of example <paramref name="i"/>.</summary>
    public string ImagePath(int i) => images.FullPath(i);

    protected override void FillBatchCore(ReadOnlySpan<int> indices, Span<float> inputs, Span<int> labelsOut, ulong seed, ulong step)
    {
        int per = Channels * Size * Size;
        var moments = ImageFolder.Map(indices, ReadMoments);
        var eps = new double[indices.Length * per];
        Philox.Normal(seed, Objective.Stream(step, PosteriorPurpose), 0, eps);
        for (int b = 0; b < moments.Length; b++)
        {
            labelsOut[b] = labels[indices[b]];
            var m = moments[b];
            var dst = inputs.Slice(b * per, per);
            for (int k = 0; k < per; k++) dst[k] = (float)((m[k] + m[per + k] * eps[b * per + k]) * SdVaeScale);
        }
    }

    protected override void FillImagesCore(ReadOnlySpan<int> indices, Span<byte> output)
    {
        int w = ImageWidth, h = ImageHeight, c = ImageChannels, per = c * h * w;
        var planes = ImageFolder.Map(indices, i =>
        {
            string file = images.FullPath(i);
            var png = Png.Read(file);
            if (png.Width != w || png.Height != h)
                throw new InvalidDataException(
                    $"'{file}' is {png.Width}x{png.Height} but '{images.FullPath(0)}' is {w}x{h}; the images of a REPA folder must share one size.");
            var result = new byte[per];
            ImageFolder.ToPlanes(ImageFolder.ToChannels(png, c, file), w, h, c, result);
            return result;
        });
        for (int b = 0; b < planes.Length; b++) planes[b].CopyTo(output.Slice(b * per, per));
    }

    // mean then std, Channels * Size * Size values each.
    private double[] ReadMoments(int i)
    {
        string file = latents.FullPath(i);
        var array = Npy.Read(file);
        if (!array.Shape.AsSpan().SequenceEqual(fileShape) || array.Type == NpyType.UInt8)
            throw new InvalidDataException(
                $"latent file '{file}' holds {Npy.Describe(array.Type, array.Shape)} but '{latents.FullPath(0)}' holds ({string.Join(", ", fileShape)}); every {LatentsFolder} file needs that float shape.");
        return array.ToDoubles();
    }
}
