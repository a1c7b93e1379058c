using System.Security.Cryptography;
using System.Text;
using Microsoft.ML.OnnxRuntime;

namespace Repa.Runtime.Encoders;

/// <summary>
/// A frozen pretrained image encoder run through ONNX Runtime on the CPU: produces the REPA target features (patch
/// tokens) for our images. The model file is rewritten once (see <see cref="OnnxGraph"/>) so the requested layer is
/// the graph output and batch/height/width are symbolic, and the rewritten copy is cached under the temp folder keyed
/// by a hash of the file and the names. <see cref="ResNet18"/> uses the ResNet-18 that ships in the NuGet package
/// Microsoft.ML.DnnImageFeaturizer.ResNet18; the public constructor takes a user's own export (DINOv2, CLIP, ...).
/// Encode may be called from several threads at once (InferenceSession.Run is thread-safe).
/// </summary>
public sealed class OnnxEncoder : IDisposable
{
    /// <summary>The NuGet package whose tools/ folder holds ResNet18.onnx.</summary>
    public const string ResNet18Package = "Microsoft.ML.DnnImageFeaturizer.ResNet18";
    public const string ResNet18Version = "0.23.1";
    private const string ResNet18RelativePath = "DnnImageModels/ResNet18Onnx/ResNet18.onnx";

    // Images per Run: large enough to keep the CPU kernels busy, small enough to bound the input/output buffers.
    private const int ChunkSize = 16;

    private readonly InferenceSession _session;
    private readonly string _inputName, _outputName;
    private readonly float[] _scale = new float[3], _shift = new float[3];
    private readonly bool _bgr;
    private readonly int _skipTokens;

    /// <summary>Side of the square image the model is fed (our images are resized to it).</summary>
    public int InputSize { get; }

    /// <summary>Everything that determines the features: model file (path, size, time), layer, size, preprocessing.</summary>
    public string Identity { get; }

    /// <summary>
    /// Opens a user-supplied ONNX image encoder whose input is float [N, 3, H, W].
    /// The preprocessing maps our pixels x in [-1, 1] to v = (x + 1) / 2 * <paramref name="pixelScale"/> (so 0..1 or
    /// 0..255), then (v - mean[c]) / std[c] with mean and std given in RGB order, then feeds channels as RGB or, with
    /// <paramref name="bgr"/>, as BGR. E.g. DINOv2/CLIP exports: pixelScale 1, the ImageNet or CLIP mean/std.
    /// The output may be [N, D, h, w] (a feature map, returned as h*w tokens), [N, T, D] (tokens; the first
    /// <paramref name="skipTokens"/> are dropped, e.g. 1 for a ViT's CLS token) or [N, D] (one token).
    /// </summary>
    public OnnxEncoder(string modelPath, string inputName, string outputName, int inputSize,
        ReadOnlySpan<float> mean, ReadOnlySpan<float> std, bool bgr = false, float pixelScale = 1f, int skipTokens = 0)
    {
        if (!File.Exists(modelPath))
            throw new FileNotFoundException($"ONNX encoder model file not found: '{modelPath}'.", modelPath);
        if (inputSize < 1) throw new ArgumentOutOfRangeException(nameof(inputSize), inputSize, "Input size must be positive.");
        if (mean.Length != 3 || std.Length != 3)
            throw new ArgumentException($"OnnxEncoder needs 3 means and 3 stds (RGB), got {mean.Length} and {std.Length}.");
        if (skipTokens < 0) throw new ArgumentOutOfRangeException(nameof(skipTokens), skipTokens, "Must be non-negative.");
        for (int c = 0; c < 3; c++)
        {
            if (!(std[c] > 0)) throw new ArgumentException($"OnnxEncoder std[{c}] = {std[c]} must be positive.");
            // (x + 1) / 2 * pixelScale - mean) / std folded into one multiply-add per pixel.
            _scale[c] = pixelScale / 2f / std[c];
            _shift[c] = (pixelScale / 2f - mean[c]) / std[c];
        }
        _inputName = inputName;
        _outputName = outputName;
        _bgr = bgr;
        _skipTokens = skipTokens;
        InputSize = inputSize;
        var file = new FileInfo(modelPath);
        Identity = string.Join("|", file.FullName, file.Length, file.LastWriteTimeUtc.Ticks, inputName, outputName, inputSize,
            string.Join(",", _scale), string.Join(",", _shift), bgr, skipTokens);

        string prepared = PrepareModel(modelPath, inputName, outputName);
        using var options = new SessionOptions
        {
            IntraOpNumThreads = Environment.ProcessorCount,
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
        };
        _session = new InferenceSession(prepared, options);
    }

    /// <summary>
    /// The ImageNet ResNet-18 from the NuGet package <see cref="ResNet18Package"/> (a CNTK export: BGR input in
    /// 0..255 minus the per-channel mean, no std). The default layer <c>ReLU347_Output_0</c> is the end of stage 3,
    /// 256 channels at 1/16 resolution (14 x 14 = 196 tokens at 224 px); <c>ReLU393_Output_0</c> is stage 4, 512 at
    /// 1/32. Use an input size that is a multiple of 32 (the file's stage-4 adds fail otherwise, e.g. at 112).
    /// </summary>
    public static OnnxEncoder ResNet18(string layer = "ReLU347_Output_0", int inputSize = 224) =>
        new(FindResNet18(), "Input247", layer, inputSize, [123.15f, 115.90f, 103.06f], [1f, 1f, 1f],
            bgr: true, pixelScale: 255f);

    /// <summary>The packaged ResNet18.onnx: next to the application (the package's build props copy it there), else in
    /// the NuGet global packages folder.</summary>
    public static string FindResNet18()
    {
        var candidates = new List<string> { Path.Combine(AppContext.BaseDirectory, ResNet18RelativePath) };
        string? nugetRoot = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        if (string.IsNullOrEmpty(nugetRoot))
            nugetRoot = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        candidates.Add(Path.Combine(nugetRoot, ResNet18Package.ToLowerInvariant(), ResNet18Version, "tools", ResNet18RelativePath));
        foreach (var c in candidates)
            if (File.Exists(c)) return c;
        throw new FileNotFoundException(
            $"ResNet18.onnx not found (looked in {string.Join(" and ", candidates)}): restore the NuGet package " +
            $"{ResNet18Package} {ResNet18Version} (dotnet restore of Repa.Runtime does it).");
    }

    /// <summary>
    /// Encodes <paramref name="n"/> images [N, C, H, W] with pixels in [-1, 1] (C = 1 grey is replicated to RGB, C = 3 is
    /// RGB): bilinear resize to <see cref="InputSize"/> (half-pixel centres, no antialiasing), the model's
    /// preprocessing, one Run per chunk of images. Returns patch tokens [N, T, D] row-major, features last; a feature
    /// map [N, D, h, w] gives T = h*w tokens in row-major (y, x) order.
    /// </summary>
    public float[] Encode(ReadOnlySpan<float> images, int n, int channels, int height, int width, out int tokens, out int dim)
    {
        if (n < 1 || height < 1 || width < 1)
            throw new ArgumentException($"OnnxEncoder.Encode needs positive sizes, got n={n}, {height}x{width}.");
        if (channels is not (1 or 3))
            throw new ArgumentException($"OnnxEncoder.Encode takes 1 (grey) or 3 (RGB) channels, got {channels}.");
        long perImage = (long)channels * height * width;
        if (images.Length != n * perImage)
            throw new ArgumentException(
                $"OnnxEncoder.Encode: {images.Length} values do not match [{n}, {channels}, {height}, {width}].");

        int s = InputSize, plane = s * s;
        float[]? result = null;
        tokens = 0;
        dim = 0;
        var input = new float[Math.Min(n, ChunkSize) * 3 * plane];
        using var runOptions = new RunOptions();
        for (int start = 0; start < n; start += ChunkSize)
        {
            int m = Math.Min(ChunkSize, n - start);
            // ORT takes the whole array as the tensor, so the last, shorter chunk gets an exactly sized buffer.
            var buffer = m * 3 * plane == input.Length ? input : new float[m * 3 * plane];
            Preprocess(images.Slice((int)(start * perImage), (int)(m * perImage)), m, channels, height, width, buffer);
            using var value = OrtValue.CreateTensorValueFromMemory(buffer, [m, 3, s, s]);
            Run(runOptions, value, start, m, n, ref result, ref tokens, ref dim);
        }
        return result!;
    }

    /// <summary>
    /// Encodes clean images given as bytes [N, C, H, W], 0 black to 255 white (C = 1 grey, replicated to RGB; C = 3 RGB,
    /// fed to ResNet-18 as BGR): exactly <see cref="Encode(ReadOnlySpan{float}, int, int, int, int, out int, out int)"/>
    /// of b / 127.5 - 1, the scaling the training inputs use.
    /// </summary>
    public float[] Encode(ReadOnlySpan<byte> images, int n, int channels, int height, int width, out int tokens, out int dim)
    {
        var unit = Data.TrainingData.PixelToUnit;
        var x = new float[images.Length];
        for (int i = 0; i < x.Length; i++) x[i] = unit[images[i]];
        return Encode(x, n, channels, height, width, out tokens, out dim);
    }

    private void Run(RunOptions runOptions, OrtValue value, int start, int m, int n, ref float[]? result,
        ref int tokens, ref int dim)
    {
        using var outputs = _session.Run(runOptions, [_inputName], [value], [_outputName]);
        var output = outputs[0];
        long[] shape = output.GetTensorTypeAndShape().Shape;
        var data = output.GetTensorDataAsSpan<float>();
        int t, d;
        bool map = shape.Length == 4;
        switch (shape.Length)
        {
            case 4: d = (int)shape[1]; t = (int)(shape[2] * shape[3]); break;
            case 3: t = (int)shape[1] - _skipTokens; d = (int)shape[2]; break;
            case 2: t = 1; d = (int)shape[1]; break;
            default:
                throw new InvalidOperationException(
                    $"OnnxEncoder: output '{_outputName}' has rank {shape.Length}; expected [N,D,h,w], [N,T,D] or [N,D].");
        }
        if (shape[0] != m || t < 1)
            throw new InvalidOperationException(
                $"OnnxEncoder: output '{_outputName}' has shape [{string.Join(", ", shape)}] for a batch of {m}.");
        if (result is null)
        {
            tokens = t;
            dim = d;
            result = new float[(long)n * t * d];
        }
        var dst = result.AsSpan(start * t * d, m * t * d);
        if (map)
        {
            // [m, D, T] -> [m, T, D]: a transpose per image.
            for (int i = 0; i < m; i++)
            {
                var src = data.Slice(i * d * t, d * t);
                var o = dst.Slice(i * t * d, t * d);
                for (int c = 0; c < d; c++)
                for (int p = 0; p < t; p++)
                    o[p * d + c] = src[c * t + p];
            }
        }
        else if (shape.Length == 3)
        {
            int full = t + _skipTokens;
            for (int i = 0; i < m; i++)
                data.Slice((i * full + _skipTokens) * d, t * d).CopyTo(dst.Slice(i * t * d, t * d));
        }
        else data.Slice(0, m * d).CopyTo(dst);
    }

    /// <summary>Resize and normalise m images into <paramref name="input"/> as [m, 3, S, S] in the model's channel order.</summary>
    private void Preprocess(ReadOnlySpan<float> images, int m, int channels, int height, int width, float[] input)
    {
        int s = InputSize, plane = s * s, srcPlane = height * width;
        // Half-pixel-centre bilinear weights, computed once per axis (PyTorch align_corners=False).
        var (y0, y1, wy) = Axis(height, s);
        var (x0, x1, wx) = Axis(width, s);
        var resized = new float[plane];
        for (int i = 0; i < m; i++)
        {
            for (int c = 0; c < 3; c++)
            {
                int srcC = channels == 1 ? 0 : c;
                var src = images.Slice((i * channels + srcC) * srcPlane, srcPlane);
                // Grey is replicated: channels 1 and 2 reuse the resized plane, only the normalisation differs.
                if (channels == 3 || c == 0)
                {
                    for (int y = 0; y < s; y++)
                    {
                        var r0 = src.Slice(y0[y] * width, width);
                        var r1 = src.Slice(y1[y] * width, width);
                        float fy = wy[y];
                        for (int x = 0; x < s; x++)
                        {
                            float a = r0[x0[x]] + (r0[x1[x]] - r0[x0[x]]) * wx[x];
                            float b = r1[x0[x]] + (r1[x1[x]] - r1[x0[x]]) * wx[x];
                            resized[y * s + x] = a + (b - a) * fy;
                        }
                    }
                }
                int dstC = _bgr ? 2 - c : c;
                var dst = input.AsSpan((i * 3 + dstC) * plane, plane);
                float scale = _scale[c], shift = _shift[c];
                for (int p = 0; p < plane; p++) dst[p] = resized[p] * scale + shift;
            }
        }
    }

    private static (int[] lo, int[] hi, float[] w) Axis(int inSize, int outSize)
    {
        var lo = new int[outSize];
        var hi = new int[outSize];
        var w = new float[outSize];
        double ratio = (double)inSize / outSize;
        for (int o = 0; o < outSize; o++)
        {
            double src = Math.Max((o + 0.5) * ratio - 0.5, 0);
            int l = Math.Min((int)src, inSize - 1);
            lo[o] = l;
            hi[o] = Math.Min(l + 1, inSize - 1);
            w[o] = (float)(src - l);
        }
        return (lo, hi, w);
    }

    /// <summary>The rewritten model's path in the cache, writing it on first use.</summary>
    private static string PrepareModel(string modelPath, string inputName, string outputName)
    {
        byte[] original = File.ReadAllBytes(modelPath);
        if (!OnnxGraph.HasTensor(original, outputName))
            throw new ArgumentException($"ONNX model '{modelPath}' has no tensor named '{outputName}'.");
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(original);
        sha.AppendData(Encoding.UTF8.GetBytes($"\0{inputName}\0{outputName}\0v2"));
        string key = Convert.ToHexString(sha.GetHashAndReset(), 0, 16).ToLowerInvariant();
        string folder = Path.Combine(Path.GetTempPath(), "repa-onnx-cache");
        string path = Path.Combine(folder, $"{Path.GetFileNameWithoutExtension(modelPath)}-{key}.onnx");
        if (File.Exists(path)) return path;
        Directory.CreateDirectory(folder);
        byte[] rewritten = OnnxGraph.Rewrite(original, inputName, outputName);
        // Write then rename, so a concurrent process never opens a half-written file.
        string temp = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        File.WriteAllBytes(temp, rewritten);
        File.Move(temp, path, overwrite: true);
        return path;
    }

    public void Dispose() => _session.Dispose();
}
