using Repa.Autograd;
using Repa.Kernels;

namespace Repa.Runtime.Models;

/// <summary>
/// REPA's SiT (models/sit.py): patch embedding + frozen 2-D sin-cos positions, timestep and label embedders, adaLN-Zero
/// transformer blocks, per-encoder projector MLPs read after block <see cref="SiTConfig.EncoderDepth"/>, and the adaLN
/// final layer with unpatchify. Tensor names, shapes, state_dict order and initialisation follow the reference, so a
/// <see cref="Module.StateDict"/> loads into PyTorch's model and back.
/// </summary>
/// <remarks>
/// state_dict order is PyTorch's: the model's own parameter pos_embed first, then the submodules in registration order
/// (x_embedder, t_embedder, y_embedder, blocks, projectors, final_layer; inside final_layer linear precedes
/// adaLN_modulation). The final layer uses hidden_size; the reference builds it from decoder_hidden_size, which its
/// S presets leave at 768 (a shape error for hidden 384 there), and equals hidden_size for B/L/XL.
/// </remarks>
public sealed class SiT : Module
{
    private sealed record Block(Tensor QkvW, Tensor QkvB, QkNorm? QkNorm, Tensor ProjW, Tensor ProjB, Tensor Fc1W, Tensor Fc1B, Tensor Fc2W,
        Tensor Fc2B, Tensor AdaW, Tensor AdaB);

    /// <summary>timm's q_norm / k_norm: LayerNorm(head_dim), affine, eps 1e-5, shared by all heads.</summary>
    private sealed record QkNorm(Tensor QW, Tensor QB, Tensor KW, Tensor KB);

    private const double QkNormEps = 1e-5;

    private sealed record Projector(Tensor W0, Tensor B0, Tensor W2, Tensor B2, Tensor W4, Tensor B4);

    private readonly Tensor posEmbed, xW, xB, t0W, t0B, t2W, t2B, labelTable, finalW, finalB, finalAdaW, finalAdaB;
    private readonly Block[] blocks;
    private readonly Projector[] projectors;

    public SiT(IBackend backend, DType dtype, SiTConfig config, ulong seed) : base(backend, dtype, seed)
    {
        Config = (config ?? throw new ArgumentNullException(nameof(config))).Validate();
        computeDType = dtype;
        int d = config.HiddenSize, c = config.InChannels, p = config.PatchSize, g = config.GridSize, f = SiTConfig.FrequencyEmbeddingSize;
        var xavier = Init.XavierUniform;
        var zero = Init.Zeros;

        posEmbed = Frozen("pos_embed", [1, g * g, d], Ops.SinCos2D(d, g, g));
        xW = Parameter("x_embedder.proj.weight", [d, c, p, p], xavier); // bound of its [D, C*p*p] view
        xB = Parameter("x_embedder.proj.bias", [d], zero);
        t0W = Parameter("t_embedder.mlp.0.weight", [d, f], Init.Normal(0.02));
        t0B = Parameter("t_embedder.mlp.0.bias", [d], zero);
        t2W = Parameter("t_embedder.mlp.2.weight", [d, d], Init.Normal(0.02));
        t2B = Parameter("t_embedder.mlp.2.bias", [d], zero);
        labelTable = Parameter("y_embedder.embedding_table.weight", [config.NumClasses + 1, d], Init.Normal(0.02));

        blocks = new Block[config.Depth];
        for (int i = 0; i < config.Depth; i++)
        {
            string b = $"blocks.{i}.";
            int h = config.MlpHidden, hd = config.HeadDim;
            blocks[i] = new Block(
                Parameter(b + "attn.qkv.weight", [3 * d, d], xavier), // one [3D, D] matrix, as the reference
                Parameter(b + "attn.qkv.bias", [3 * d], zero),
                // Registered between qkv and proj, as timm's Attention does (state_dict order).
                config.QkNorm
                    ? new QkNorm(Parameter(b + "attn.q_norm.weight", [hd], Init.Constant(1)), Parameter(b + "attn.q_norm.bias", [hd], zero),
                        Parameter(b + "attn.k_norm.weight", [hd], Init.Constant(1)), Parameter(b + "attn.k_norm.bias", [hd], zero))
                    : null,
                Parameter(b + "attn.proj.weight", [d, d], xavier),
                Parameter(b + "attn.proj.bias", [d], zero),
                Parameter(b + "mlp.fc1.weight", [h, d], xavier),
                Parameter(b + "mlp.fc1.bias", [h], zero),
                Parameter(b + "mlp.fc2.weight", [d, h], xavier),
                Parameter(b + "mlp.fc2.bias", [d], zero),
                Parameter(b + "adaLN_modulation.1.weight", [6 * d, d], zero), // adaLN-Zero
                Parameter(b + "adaLN_modulation.1.bias", [6 * d], zero));
        }

        projectors = new Projector[config.ZDims.Count];
        for (int j = 0; j < projectors.Length; j++)
        {
            string b = $"projectors.{j}.";
            int w = config.ProjectorDim, z = config.ZDims[j];
            projectors[j] = new Projector(
                Parameter(b + "0.weight", [w, d], xavier), Parameter(b + "0.bias", [w], zero),
                Parameter(b + "2.weight", [w, w], xavier), Parameter(b + "2.bias", [w], zero),
                Parameter(b + "4.weight", [z, w], xavier), Parameter(b + "4.bias", [z], zero));
        }

        // Zero final linear and final adaLN: a fresh model outputs exactly 0. DiT (learn_sigma) outputs 2C channels.
        int outC = config.OutChannels;
        finalW = Parameter("final_layer.linear.weight", [p * p * outC, d], zero);
        finalB = Parameter("final_layer.linear.bias", [p * p * outC], zero);
        finalAdaW = Parameter("final_layer.adaLN_modulation.1.weight", [2 * d, d], zero);
        finalAdaB = Parameter("final_layer.adaLN_modulation.1.bias", [2 * d], zero);
    }

    public SiTConfig Config { get; }

    /// <summary>
    /// The dtype the network computes in (mixed precision, like torch.autocast): parameters stay in <see cref="Module.DType"/>
    /// (float32 masters) and are cast to this dtype for every use, activations and GEMM inputs are in it, LayerNorm
    /// statistics/affine and softmax statistics stay float32 (<see cref="Ops.AccumulationType"/>), and the outputs are
    /// cast back to <see cref="Module.DType"/> so losses are computed in float32. Defaults to the parameters' dtype.
    /// </summary>
    public DType ComputeDType
    {
        get => computeDType;
        set
        {
            if (!Backend.Supports(value) || !value.IsFloatingPoint())
                throw new ArgumentException($"{Config.Name} cannot compute in {value.Name()} on the {Backend.Name} backend; use {DType.Name()}.");
            computeDType = value;
        }
    }

    private DType computeDType;

    /// <summary>A parameter (or fixed buffer) as the network uses it: cast to <see cref="ComputeDType"/> (recorded, so
    /// its gradient reaches the master in float32); the tensor itself when the dtypes agree.</summary>
    private Tensor W(Tensor parameter) => Ops.Cast(parameter, computeDType);

    /// <summary>A matmul layer in the compute dtype, with the activation that follows it fused in (GEMM epilogue).</summary>
    private Tensor Linear(Tensor x, Tensor weight, Tensor bias, Activation? activation = null) =>
        Ops.Linear(x, W(weight), W(bias), activation);

    /// <summary>
    /// The velocity prediction [N, C, H, W] for inputs x [N, C, H, W] (H = W = input_size), times t [N] (raw, in [0, 1];
    /// DiT's integer timesteps 0..999 as given) and labels y [N] int32 in 0..num_classes (num_classes is the null class; label dropout is the caller's job),
    /// plus one projection [N, T, z_j] per projector of the residual stream after block encoder_depth. With
    /// <see cref="SiTConfig.LearnSigma"/> (DiT) the output is [N, 2C, H, W]: eps in the first C channels, the raw
    /// variance values in the last C.
    /// </summary>
    public (Tensor Output, Tensor[] Projections) Forward(Tensor x, Tensor t, Tensor y)
    {
        var cfg = Config;
        Tensor[] projections = [];
        var (h, cAct) = Trunk(x, t, y, blocks.Length, (i, hi) =>
        {
            if (i + 1 == cfg.EncoderDepth) projections = projectors.Select(pr => Project(pr, hi)).ToArray();
        });
        var fm = Ops.Chunk(Linear(cAct, finalAdaW, finalAdaB), 2, 1); // shift, scale
        var tokens = Linear(Ops.LayerNormModulate(h, fm[0], fm[1], 1e-6), finalW, finalB); // [N, T, p*p*C_out]
        var output = Ops.Unpatchify(tokens, cfg.OutChannels, cfg.PatchSize, cfg.GridSize, cfg.GridSize);
        return (Ops.Cast(output, DType), projections.Select(z => Ops.Cast(z, DType)).ToArray());
    }

    /// <summary>
    /// The raw residual stream [N, T, D] right after block <paramref name="depth"/> (1-based; default encoder_depth, the
    /// projectors' input): what CKNNA and linear probes read. Later blocks and the final layer are not run.
    /// </summary>
    public Tensor HiddenStates(Tensor x, Tensor t, Tensor y, int? depth = null)
    {
        int k = depth ?? Config.EncoderDepth;
        if (k < 1 || k > blocks.Length)
            throw new ArgumentOutOfRangeException(nameof(depth), k, $"{Config.Name}: the block must be in 1..{blocks.Length}.");
        return Ops.Cast(Trunk(x, t, y, k, null).Hidden, DType);
    }

    /// <summary>Embeddings and the first <paramref name="count"/> blocks; <paramref name="afterBlock"/> sees each block's output.</summary>
    private (Tensor Hidden, Tensor CondAct) Trunk(Tensor x, Tensor t, Tensor y, int count, Action<int, Tensor>? afterBlock)
    {
        var cfg = Config;
        Validate(x, t, y);
        var h = Ops.Add(Ops.PatchEmbed(Ops.Cast(x, computeDType), W(xW), W(xB)), W(posEmbed)); // [N, T, D] + [1, T, D]
        var frequencies = Ops.Cast(Ops.TimestepEmbedding(t, SiTConfig.FrequencyEmbeddingSize), computeDType);
        var tEmb = Linear(Linear(frequencies, t0W, t0B, Activation.Silu), t2W, t2B);
        // The gather runs on the float32 table (its scatter-add gradient stays float32); only the rows are cast.
        var c = Ops.Add(tEmb, Ops.Cast(Ops.Embedding(labelTable, y), computeDType)); // [N, D]
        // Every adaLN_modulation starts with SiLU(c): the same value, computed once.
        var cAct = Ops.Silu(c);
        for (int i = 0; i < count; i++)
        {
            var blk = blocks[i];
            var mod = Ops.Chunk(Linear(cAct, blk.AdaW, blk.AdaB), 6, 1);
            // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
            var a = Ops.LayerNormModulate(h, mod[0], mod[1], 1e-6);
            var qkv = Linear(a, blk.QkvW, blk.QkvB);
            if (blk.QkNorm != null) qkv = NormalizeQk(qkv, blk.QkNorm);
            var attn = Linear(Ops.Attention(qkv, cfg.NumHeads), blk.ProjW, blk.ProjB);
            h = Ops.GatedResidual(h, mod[2], attn);
            var m = Ops.LayerNormModulate(h, mod[3], mod[4], 1e-6);
            var mlp = Linear(Linear(m, blk.Fc1W, blk.Fc1B, Activation.Gelu), blk.Fc2W, blk.Fc2B);
            h = Ops.GatedResidual(h, mod[5], mlp);
            afterBlock?.Invoke(i, h);
        }
        return (h, cAct);
    }

    /// <summary>qk-norm on the packed qkv [N, T, 3D] (features ordered [3, heads, head_dim]): LayerNorm over head_dim of q and k.</summary>
    private Tensor NormalizeQk(Tensor qkv, QkNorm norm)
    {
        int n = qkv.Shape[0], t = qkv.Shape[1], heads = Config.NumHeads, hd = Config.HeadDim;
        var qkvParts = Ops.Chunk(Ops.Reshape(qkv, n, t, 3, heads, hd), 3, 2);
        var q = Ops.LayerNorm(qkvParts[0], norm.QW, norm.QB, QkNormEps);
        var k = Ops.LayerNorm(qkvParts[1], norm.KW, norm.KB, QkNormEps);
        return Ops.Reshape(Ops.Concat([q, k, qkvParts[2]], 2), n, t, 3 * heads * hd);
    }

    /// <summary>Linear(D, W) -> SiLU -> Linear(W, W) -> SiLU -> Linear(W, z), per token: [N, T, D] -> [N, T, z].</summary>
    private Tensor Project(Projector p, Tensor h) =>
        Linear(Linear(Linear(h, p.W0, p.B0, Activation.Silu), p.W2, p.B2, Activation.Silu), p.W4, p.B4);

    private void Validate(Tensor x, Tensor t, Tensor y)
    {
        var cfg = Config;
        const string op = "SiT.forward";
        if (x.Rank != 4 || x.Shape[1] != cfg.InChannels || x.Shape[2] != cfg.InputSize || x.Shape[3] != cfg.InputSize)
            throw new ShapeMismatchException($"{op}: x {x.Describe()} must be [N, {cfg.InChannels}, {cfg.InputSize}, {cfg.InputSize}] for {cfg.Name}.");
        if (x.DType != DType || x.Backend != Backend)
            throw new ShapeMismatchException($"{op}: x {x.Describe()} must be {DType.Name()} on {Backend.Name} like the model.");
        int n = x.Shape[0];
        if (t.Rank != 1 || t.Shape[0] != n || t.DType != DType || t.Backend != Backend)
            throw new ShapeMismatchException($"{op}: t {t.Describe()} must be [{n}] {DType.Name()} on {Backend.Name}.");
        if (y.Rank != 1 || y.Shape[0] != n || y.DType != DType.I32 || y.Backend != Backend)
            throw new ShapeMismatchException($"{op}: y {y.Describe()} must be [{n}] int32 on {Backend.Name}.");
    }
}
