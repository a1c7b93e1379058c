using Repa.Kernels;

namespace Repa.Autograd;

/// <summary>
/// Patch embedding (Conv2d with kernel = stride = p), unpatchify and the frozen 2-D sin-cos position table of SiT/DiT.
/// Patchify and unpatchify are pure permutations of the data, so they are written with Reshape + Permute and their
/// backward comes for free; the convolution then is one GEMM.
/// </summary>
public static partial class Ops
{
    /// <summary>
    /// Conv2d(C, D, kernel = stride = p) over x [N, C, H, W] with weight [D, C, p, p] and bias [D], flattened to tokens:
    /// [N, T, D], T = (H/p)(W/p) in row-major patch order (PatchEmbed of timm, as SiT uses it).
    /// </summary>
    public static Tensor PatchEmbed(Tensor x, Tensor weight, Tensor? bias = null)
    {
        const string op = "patch_embed";
        Require(x.Rank == 4, op, $"input {x.Describe()} must be [N, C, H, W].");
        Require(weight.Rank == 4 && weight.Shape[2] == weight.Shape[3], op, $"weight {weight.Describe()} must be [D, C, p, p].");
        int n = x.Shape[0], c = x.Shape[1], h = x.Shape[2], w = x.Shape[3], d = weight.Shape[0], p = weight.Shape[2];
        Require(weight.Shape[1] == c, op, $"weight {weight.Describe()} expects {weight.Shape[1]} channels but the input {x.Describe()} has {c}.");
        Require(h % p == 0 && w % p == 0, op, $"input {x.Describe()} is not divisible into {p}x{p} patches.");
        int gh = h / p, gw = w / p;
        // [N, C, gh, p, gw, p] -> [N, gh, gw, C, p, p]: each token's features in the conv weight's (c, kh, kw) order.
        var patches = Reshape(Permute(Reshape(x, n, c, gh, p, gw, p), 0, 2, 4, 1, 3, 5), n, gh * gw, c * p * p);
        return Linear(patches, Reshape(weight, d, c * p * p), bias);
    }

    /// <summary>
    /// Inverse of the final layer's token layout: x [N, T, p*p*C] with features ordered (p_row, p_col, c), c fastest,
    /// and T = gridH * gridW tokens in row-major order, to images [N, C, gridH*p, gridW*p].
    /// </summary>
    public static Tensor Unpatchify(Tensor x, int channels, int patch, int gridH, int gridW)
    {
        const string op = "unpatchify";
        Require(x.Rank == 3 && x.Shape[1] == gridH * gridW && x.Shape[2] == patch * patch * channels, op,
            $"input {x.Describe()} must be [N, {gridH * gridW}, {patch * patch * channels}] for a {gridH}x{gridW} grid of {patch}x{patch} patches with {channels} channels.");
        int n = x.Shape[0];
        // [N, gh, gw, p, p, C] -> [N, C, gh, p, gw, p]
        var images = Permute(Reshape(x, n, gridH, gridW, patch, patch, channels), 0, 5, 1, 3, 2, 4);
        return Reshape(images, n, channels, gridH * patch, gridW * patch);
    }

    /// <summary>
    /// The frozen 2-D sin-cos position table [1, gridH*gridW, dim] of MAE/DiT/SiT: the first dim/2 features encode the
    /// column index, the last dim/2 the row index; each half is [sin | cos] of pos * omega_k, omega_k = 10000^(-k/(dim/4)).
    /// </summary>
    public static Tensor PosEmbed2D(IBackend backend, DType dtype, int dim, int gridH, int gridW)
    {
        var table = SinCos2D(dim, gridH, gridW);
        var t = Tensor.Empty(backend, dtype, 1, gridH * gridW, dim);
        if (dtype == DType.F64) backend.Upload<double>(table, t.Buffer);
        else backend.Upload<float>(table.Select(v => (float)v).ToArray(), t.Buffer);
        return t;
    }

    /// <summary>The values of <see cref="PosEmbed2D"/>, computed in double on the host (row-major [T, dim]).</summary>
    public static double[] SinCos2D(int dim, int gridH, int gridW)
    {
        if (dim <= 0 || dim % 4 != 0) throw new ShapeMismatchException($"pos_embed: dim {dim} must be a positive multiple of 4.");
        int quarter = dim / 4;
        var table = new double[gridH * gridW * dim];
        for (int row = 0; row < gridH; row++)
        {
            for (int col = 0; col < gridW; col++)
            {
                int t = row * gridW + col;
                for (int k = 0; k < quarter; k++)
                {
                    double omega = Math.Pow(10000, -(double)k / quarter);
                    double a = col * omega, b = row * omega;
                    table[t * dim + k] = Math.Sin(a);
                    table[t * dim + quarter + k] = Math.Cos(a);
                    table[t * dim + 2 * quarter + k] = Math.Sin(b);
                    table[t * dim + 3 * quarter + k] = Math.Cos(b);
                }
            }
        }
        return table;
    }
}
