namespace Repa.Runtime.Models;

/// <summary>
/// Hyper-parameters of REPA's SiT (models/sit.py), with the paper's presets "SiT-{S,B,L,XL}/{2,4,8}" and a small CPU
/// config "SiT-T/2", and their DiT twins "DiT-..." (facebookresearch/DiT models.py: the same network with a learned
/// variance, <see cref="LearnSigma"/>). Immutable; derive variants with <c>with { ... }</c> and check them with
/// <see cref="Validate"/>.
/// </summary>
public sealed record SiTConfig
{
    /// <summary>Preset name ("SiT-XL/2", ...) or a free label.</summary>
    public string Name { get; init; } = "SiT";

    /// <summary>Height = width of the input latent/image (ImageNet latents: 32).</summary>
    public int InputSize { get; init; } = 32;

    public int PatchSize { get; init; } = 2;

    /// <summary>Channels of the input, and of the output (SiT predicts a velocity of the input's shape).</summary>
    public int InChannels { get; init; } = 4;

    /// <summary>
    /// DiT's learn_sigma: the final layer outputs 2C channels, the first C the prediction (eps for DiT) and the last C
    /// the raw variance values of the learned-range variance. False for SiT: REPA's models/sit.py has no such option
    /// (out_channels = in_channels); willisma/SiT has it on by default but discards the extra channels in forward.
    /// </summary>
    public bool LearnSigma { get; init; }

    public int HiddenSize { get; init; } = 1152;

    public int Depth { get; init; } = 28;

    public int NumHeads { get; init; } = 16;

    /// <summary>MLP hidden width = (int)(HiddenSize * MlpRatio), as in the reference.</summary>
    public double MlpRatio { get; init; } = 4.0;

    /// <summary>Real classes; the label table has NumClasses + 1 rows, the last being the null (CFG) class.</summary>
    public int NumClasses { get; init; } = 1000;

    /// <summary>The projectors read the residual stream right after this block (1-based).</summary>
    public int EncoderDepth { get; init; } = 8;

    /// <summary>One projector per target encoder, with these output widths (DINOv2-B: 768).</summary>
    public IReadOnlyList<int> ZDims { get; init; } = [768];

    /// <summary>Hidden width of the projector MLPs (2048 in REPA).</summary>
    public int ProjectorDim { get; init; } = 2048;

    /// <summary>timm's per-head LayerNorm (affine, eps 1e-5) on q and k after the qkv split; off in the reference's presets.</summary>
    public bool QkNorm { get; init; }

    /// <summary>Width of the timestep frequency embedding (fixed by the reference).</summary>
    public const int FrequencyEmbeddingSize = 256;

    /// <summary>Channels of the model's output: 2C with <see cref="LearnSigma"/>, else C.</summary>
    public int OutChannels => LearnSigma ? 2 * InChannels : InChannels;

    public int HeadDim => HiddenSize / NumHeads;
    public int GridSize => InputSize / PatchSize;
    public int Tokens => GridSize * GridSize;
    public int MlpHidden => (int)(HiddenSize * MlpRatio);

    /// <summary>Throws <see cref="ArgumentException"/> with a one-sentence reason when the config cannot build a model.</summary>
    public SiTConfig Validate()
    {
        void Check(bool ok, string message)
        {
            if (!ok) throw new ArgumentException($"{Name}: {message}");
        }
        Check(InputSize > 0, $"input_size must be positive, got {InputSize}.");
        Check(PatchSize > 0, $"patch_size must be positive, got {PatchSize}.");
        Check(InputSize % PatchSize == 0, $"input_size {InputSize} is not a multiple of patch_size {PatchSize}.");
        Check(InChannels > 0, $"in_channels must be positive, got {InChannels}.");
        Check(HiddenSize > 0, $"hidden_size must be positive, got {HiddenSize}.");
        Check(NumHeads > 0, $"num_heads must be positive, got {NumHeads}.");
        Check(HiddenSize % NumHeads == 0, $"hidden_size {HiddenSize} is not divisible by num_heads {NumHeads}.");
        Check(HiddenSize % 4 == 0, $"hidden_size {HiddenSize} must be a multiple of 4 for the 2-D sin-cos position embedding.");
        Check(Depth > 0, $"depth must be positive, got {Depth}.");
        Check(double.IsFinite(MlpRatio) && MlpHidden > 0, $"mlp_ratio {MlpRatio} must give a positive MLP width.");
        Check(NumClasses > 0, $"num_classes must be positive, got {NumClasses}.");
        Check(EncoderDepth >= 1 && EncoderDepth <= Depth, $"encoder_depth {EncoderDepth} must be in 1..depth ({Depth}).");
        Check(ZDims != null && ZDims.All(z => z > 0), "every z_dim must be positive.");
        Check(ProjectorDim > 0, $"projector_dim must be positive, got {ProjectorDim}.");
        return this;
    }

    /// <summary>The reference's model names plus "SiT-T/2", then DiT's names plus "DiT-T/2".</summary>
    public static IReadOnlyList<string> PresetNames { get; } =
    [
        "SiT-S/2", "SiT-S/4", "SiT-S/8", "SiT-B/2", "SiT-B/4", "SiT-B/8",
        "SiT-L/2", "SiT-L/4", "SiT-L/8", "SiT-XL/2", "SiT-XL/4", "SiT-XL/8", "SiT-T/2", "SiT-T/4",
        "DiT-S/2", "DiT-S/4", "DiT-S/8", "DiT-B/2", "DiT-B/4", "DiT-B/8",
        "DiT-L/2", "DiT-L/4", "DiT-L/8", "DiT-XL/2", "DiT-XL/4", "DiT-XL/8", "DiT-T/2", "DiT-T/4",
    ];

    /// <summary>
    /// A named preset. S/B/L/XL (depth/hidden/heads 12/384/6, 12/768/12, 24/1024/16, 28/1152/16) are set up for ImageNet
    /// 256 latents: input 32, 4 channels, 1000 classes, one DINOv2-B projector (z 768, width 2048), encoder_depth 8
    /// (4 for B, as the paper aligns SiT-B/2 at layer 4). "SiT-T/2" is <see cref="Tiny"/>. "DiT-X/p" is "SiT-X/p" with
    /// <see cref="LearnSigma"/> and no projector (DiT has none; a REPA run adds one).
    /// </summary>
    public static SiTConfig Preset(string name)
    {
        if (name.StartsWith("DiT-", StringComparison.Ordinal) && PresetNames.Contains(name))
            return Preset("SiT-" + name[4..]) with { Name = name, LearnSigma = true, ZDims = [] };
        if (name == "SiT-T/2") return Tiny;
        if (name == "SiT-T/4") return Tiny with { Name = "SiT-T/4", PatchSize = 4 };
        var parts = name.StartsWith("SiT-", StringComparison.Ordinal) ? name[4..].Split('/') : [];
        if (parts.Length != 2 || !int.TryParse(parts[1], out int patch) || patch is not (2 or 4 or 8))
            throw new ArgumentException($"Unknown SiT preset '{name}'; known: {string.Join(", ", PresetNames)}.", nameof(name));
        (int depth, int hidden, int heads, int encoderDepth) = parts[0] switch
        {
            "S" => (12, 384, 6, 8),
            "B" => (12, 768, 12, 4),
            "L" => (24, 1024, 16, 8),
            "XL" => (28, 1152, 16, 8),
            _ => throw new ArgumentException($"Unknown SiT preset '{name}'; known: {string.Join(", ", PresetNames)}.", nameof(name)),
        };
        return new SiTConfig
        {
            Name = name, PatchSize = patch, Depth = depth, HiddenSize = hidden, NumHeads = heads, EncoderDepth = encoderDepth,
        };
    }

    /// <summary>
    /// "SiT-T/2", our CPU-sized model (not in the reference) for 1-channel 32x32 images with 10 classes (use
    /// <c>with { InputSize = 28 }</c> for 28x28): depth 6, hidden 192, 3 heads of 64, patch 2 (256 tokens), encoder_depth 2
    /// (a third of the depth, as 4 of 12 for SiT-B), projector width 512 (2048 would dwarf the 2.7M-parameter backbone);
    /// z_dims [768] is a placeholder for the target encoder's width.
    /// </summary>
    public static SiTConfig Tiny { get; } = new()
    {
        Name = "SiT-T/2", InputSize = 32, PatchSize = 2, InChannels = 1, HiddenSize = 192, Depth = 6, NumHeads = 3,
        NumClasses = 10, EncoderDepth = 2, ZDims = [768], ProjectorDim = 512,
    };
}
