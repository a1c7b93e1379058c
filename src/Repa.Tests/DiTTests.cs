using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Models;
using Repa.Tests.Checks;

namespace Repa.Tests;

/// <summary>
/// The DiT variant (facebookresearch/DiT models.py): SiT with learn_sigma, i.e. a final layer of p*p*2C outputs unpatchified
/// to [N, 2C, H, W] (eps first, variance values last), no projectors, and otherwise REPA's SiT names and shapes.
/// </summary>
[TestFixture]
public class DiTTests
{
    private static IBackend Backend => OpCheck.Backend;

    /// <summary>SiT's expected state_dict with the final linear widened to p*p*2C rows.</summary>
    private static List<(string, int[])> Expected(int d, int c, int p, int tokens, int classes, int depth, int[] zs, int projector = 2048)
    {
        var list = SiTTests.Expected(d, c, p, tokens, classes, depth, projector, zs);
        int w = list.FindIndex(e => e.Item1 == "final_layer.linear.weight");
        list[w] = ("final_layer.linear.weight", [p * p * 2 * c, d]);
        list[w + 1] = ("final_layer.linear.bias", [p * p * 2 * c]);
        return list;
    }

    [Test]
    public void PresetsAreSiTWithLearnedSigmaAndNoProjector()
    {
        var dit = SiTConfig.PresetNames.Where(n => n.StartsWith("DiT-")).ToList();
        Assert.That(dit, Is.EqualTo(new[]
        {
            "DiT-S/2", "DiT-S/4", "DiT-S/8", "DiT-B/2", "DiT-B/4", "DiT-B/8",
            "DiT-L/2", "DiT-L/4", "DiT-L/8", "DiT-XL/2", "DiT-XL/4", "DiT-XL/8", "DiT-T/2", "DiT-T/4",
        }));
        foreach (var name in dit)
        {
            var d = SiTConfig.Preset(name).Validate();
            var s = SiTConfig.Preset("SiT-" + name[4..]);
            Assert.That((d.Name, d.LearnSigma, d.ZDims.Count, d.OutChannels), Is.EqualTo((name, true, 0, 2 * s.InChannels)), name);
            Assert.That(d with { Name = s.Name, LearnSigma = false, ZDims = s.ZDims }, Is.EqualTo(s), $"{name} is {s.Name} otherwise");
        }
        var xl = SiTConfig.Preset("DiT-XL/2");
        Assert.That((xl.Depth, xl.HiddenSize, xl.NumHeads, xl.PatchSize, xl.InChannels, xl.OutChannels, xl.NumClasses),
            Is.EqualTo((28, 1152, 16, 2, 4, 8, 1000)));
        var tiny = SiTConfig.Preset("DiT-T/2");
        Assert.That((tiny.InChannels, tiny.OutChannels, tiny.HiddenSize, tiny.Depth, tiny.NumClasses), Is.EqualTo((1, 2, 192, 6, 10)));
        Assert.That(SiTConfig.Preset("SiT-XL/2").LearnSigma, Is.False, "REPA's SiT has no learned variance");
        Assert.That(SiTConfig.Tiny.OutChannels, Is.EqualTo(1));
    }

    [Test]
    public void StateDictOfDiTXL2MatchesPyTorch()
    {
        // DiT-XL/2 itself is 2.7 GB in fp32; one block of it gives every entry's shape, and the 28-block count follows.
        var cfg = SiTConfig.Preset("DiT-XL/2");
        using var model = new SiT(Backend, DType.F32, cfg with { Depth = 1, EncoderDepth = 1 }, seed: 0);
        SiTTests.AssertStateDict(model, Expected(1152, 4, 2, 256, 1000, 1, []));
        Assert.That(model["final_layer.linear.weight"].Shape, Is.EqualTo(new[] { 2 * 2 * 8, 1152 }), "p*p*2C = 32 rows");
        long block = model.StateDict().Where(e => e.Name.StartsWith("blocks.0.")).Sum(e => e.Tensor.Count);
        long rest = model.StateDict().Where(e => !e.Name.StartsWith("blocks.")).Sum(e => e.Tensor.Count);
        Assert.That(block, Is.EqualTo(23_905_152));
        // DiT's train.py prints "DiT Parameters: 675,129,632" for DiT-XL/2 (model.parameters() includes the frozen pos_embed).
        Assert.That(rest + 28 * block, Is.EqualTo(675_129_632));
    }

    [Test]
    public void StateDictOfDiTT2WithARepaProjector()
    {
        var cfg = SiTConfig.Preset("DiT-T/2") with { ZDims = [768] };
        using var model = new SiT(Backend, DType.F32, cfg, seed: 0);
        SiTTests.AssertStateDict(model, Expected(192, 1, 2, 256, 10, 6, [768], projector: 512));
    }

    [Test]
    public void FreshModelOutputsTwoCZeroChannels()
    {
        var cfg = SiTConfig.Preset("DiT-T/4") with { InChannels = 3, InputSize = 16 };
        using var model = new SiT(Backend, DType.F32, cfg, seed: 7);
        using var tape = new Tape();
        var x = OpCheck.Make(DType.F32, Enumerable.Range(0, 2 * 3 * 16 * 16).Select(i => Math.Sin(i)).ToArray(), 2, 3, 16, 16);
        var t = OpCheck.Make(DType.F32, [999, 0], 2); // DiT's timesteps are integers 0..999, embedded as given
        var y = Tensor.FromArray(Backend, new[] { 3, 10 }, 2);
        var (output, projections) = model.Forward(x, t, y);
        Assert.That(output.Shape, Is.EqualTo(new[] { 2, 6, 16, 16 }));
        Assert.That(output.ToFloatArray(), Is.All.EqualTo(0f));
        Assert.That(projections, Is.Empty);
    }

    /// <summary>
    /// The final linear's features are (p_row, p_col, c) with c fastest over all 2C channels (DiT's unpatchify with
    /// out_channels = 2C), so the variance channels are the rows whose c index is C..2C-1. With a zero weight and a bias
    /// that is nonzero only on those rows, the first C output channels are 0 and the last C hold the bias per pixel.
    /// </summary>
    [Test]
    public void VarianceChannelsAreTheLastCOfTheFinalLinear()
    {
        var cfg = new SiTConfig
        {
            Name = "dit-micro", InputSize = 4, PatchSize = 2, InChannels = 2, HiddenSize = 16, Depth = 1, NumHeads = 2,
            NumClasses = 3, EncoderDepth = 1, ZDims = [], LearnSigma = true,
        };
        using var model = new SiT(Backend, DType.F64, cfg, seed: 1);
        int p = 2, c = 2, outC = 4;
        var bias = new double[p * p * outC];
        for (int pr = 0; pr < p; pr++)
            for (int pc = 0; pc < p; pc++)
                for (int ch = c; ch < outC; ch++)
                    bias[(pr * p + pc) * outC + ch] = 100 * ch + 10 * pr + pc;
        Backend.Upload<double>(bias, model["final_layer.linear.bias"].Buffer);
        using var tape = new Tape();
        var x = OpCheck.Make(DType.F64, new double[2 * c * 16], 2, c, 4, 4);
        var (output, _) = model.Forward(x, OpCheck.Make(DType.F64, [5, 500], 2), Tensor.FromArray(Backend, new[] { 0, 3 }, 2));
        Assert.That(output.Shape, Is.EqualTo(new[] { 2, 4, 4, 4 }));
        var o = output.ToDoubleArray();
        for (int n = 0; n < 2; n++)
            for (int ch = 0; ch < outC; ch++)
                for (int h = 0; h < 4; h++)
                    for (int w = 0; w < 4; w++)
                    {
                        double expected = ch < c ? 0 : 100 * ch + 10 * (h % p) + w % p;
                        Assert.That(o[((n * outC + ch) * 4 + h) * 4 + w], Is.EqualTo(expected), $"n {n} channel {ch} ({h}, {w})");
                    }
    }
}
