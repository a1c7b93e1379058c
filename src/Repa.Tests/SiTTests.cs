using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Models;
using Repa.Tests.Checks;

namespace Repa.Tests;

/// <summary>
/// REPA's SiT: state_dict names/shapes/order against hand-written lists, the reference initialisation (exact zero output,
/// xavier/normal statistics, seed reproducibility), end-to-end finite-difference gradients in float64, fp32 vs fp64,
/// where the projections are read, and config validation.
/// </summary>
[TestFixture]
public class SiTTests
{
    private static IBackend Backend => OpCheck.Backend;

    /// <summary>The gradient-check model: depth 2, hidden 16, 2 heads, patch 2 on 4x4x1, 3 classes, one projector 8 -> 5.</summary>
    private static readonly SiTConfig Micro = new()
    {
        Name = "micro", InputSize = 4, PatchSize = 2, InChannels = 1, HiddenSize = 16, Depth = 2, NumHeads = 2,
        NumClasses = 3, EncoderDepth = 1, ZDims = [5], ProjectorDim = 8,
    };

    // ---- state_dict ----

    /// <summary>Hand-written PyTorch state_dict of one SiT block.</summary>
    private static IEnumerable<(string, int[])> BlockEntries(int i, int d, int mlp) =>
    [
        ($"blocks.{i}.attn.qkv.weight", [3 * d, d]),
        ($"blocks.{i}.attn.qkv.bias", [3 * d]),
        ($"blocks.{i}.attn.proj.weight", [d, d]),
        ($"blocks.{i}.attn.proj.bias", [d]),
        ($"blocks.{i}.mlp.fc1.weight", [mlp, d]),
        ($"blocks.{i}.mlp.fc1.bias", [mlp]),
        ($"blocks.{i}.mlp.fc2.weight", [d, mlp]),
        ($"blocks.{i}.mlp.fc2.bias", [d]),
        ($"blocks.{i}.adaLN_modulation.1.weight", [6 * d, d]),
        ($"blocks.{i}.adaLN_modulation.1.bias", [6 * d]),
    ];

    internal static List<(string, int[])> Expected(int d, int c, int p, int tokens, int classes, int depth, int projector, int[] zs)
    {
        var list = new List<(string, int[])>
        {
            ("pos_embed", [1, tokens, d]),
            ("x_embedder.proj.weight", [d, c, p, p]),
            ("x_embedder.proj.bias", [d]),
            ("t_embedder.mlp.0.weight", [d, 256]),
            ("t_embedder.mlp.0.bias", [d]),
            ("t_embedder.mlp.2.weight", [d, d]),
            ("t_embedder.mlp.2.bias", [d]),
            ("y_embedder.embedding_table.weight", [classes + 1, d]),
        };
        for (int i = 0; i < depth; i++) list.AddRange(BlockEntries(i, d, 4 * d));
        for (int j = 0; j < zs.Length; j++)
        {
            list.Add(($"projectors.{j}.0.weight", [projector, d]));
            list.Add(($"projectors.{j}.0.bias", [projector]));
            list.Add(($"projectors.{j}.2.weight", [projector, projector]));
            list.Add(($"projectors.{j}.2.bias", [projector]));
            list.Add(($"projectors.{j}.4.weight", [zs[j], projector]));
            list.Add(($"projectors.{j}.4.bias", [zs[j]]));
        }
        list.Add(("final_layer.linear.weight", [p * p * c, d]));
        list.Add(("final_layer.linear.bias", [p * p * c]));
        list.Add(("final_layer.adaLN_modulation.1.weight", [2 * d, d]));
        list.Add(("final_layer.adaLN_modulation.1.bias", [2 * d]));
        return list;
    }

    internal static void AssertStateDict(SiT model, List<(string, int[])> expected)
    {
        var actual = model.StateDict();
        Assert.That(actual.Select(e => e.Name), Is.EqualTo(expected.Select(e => e.Item1)), "names and order");
        for (int i = 0; i < expected.Count; i++)
            Assert.That(actual[i].Tensor.Shape, Is.EqualTo(expected[i].Item2), expected[i].Item1);
        Assert.That(model.IsTrainable("pos_embed"), Is.False);
        Assert.That(model["pos_embed"].RequiresGrad, Is.False);
        Assert.That(model.Parameters(), Has.Count.EqualTo(expected.Count - 1));
        Assert.That(model.Parameters().All(t => t.RequiresGrad && t.IsLeaf), Is.True);
        Assert.That(model.Parameters(), Does.Not.Contain(model["pos_embed"]));
    }

    [Test]
    public void StateDictOfSiTS2MatchesPyTorch()
    {
        var cfg = SiTConfig.Preset("SiT-S/2");
        using var model = new SiT(Backend, DType.F32, cfg, seed: 0);
        AssertStateDict(model, Expected(384, 4, 2, 256, 1000, 12, 2048, [768]));
        // Trainable backbone, counted by hand: x_embed 6,528 + t_embed 246,528 + labels 384,384 + 12 blocks x 2,659,968
        // + final 301,840; with the frozen pos_embed (98,304) it is 32,957,200, DiT-S/2's "33M", plus the 6.5M projector.
        long backbone = model.NamedParameters().Where(e => !e.Name.StartsWith("projectors.")).Sum(e => e.Tensor.Count);
        Assert.That(backbone, Is.EqualTo(32_858_896));
        Assert.That(model["pos_embed"].Count, Is.EqualTo(98_304));
        Assert.That(model.ParameterCount - backbone, Is.EqualTo(384 * 2048 + 2048 + 2048 * 2048 + 2048 + 768 * 2048 + 768));
    }

    [Test]
    public void StateDictOfTinyConfigAndTwoProjectors()
    {
        var cfg = SiTConfig.Tiny with { ZDims = [768, 5] };
        using var model = new SiT(Backend, DType.F32, cfg, seed: 0);
        var expected = Expected(192, 1, 2, 256, 10, 6, 512, [768, 5]);
        AssertStateDict(model, expected);
        // Block 0 spelled out once more without the helper, so a typo in BlockEntries cannot hide.
        var names = model.StateDict().Select(e => e.Name).ToList();
        int at = names.IndexOf("blocks.0.attn.qkv.weight");
        Assert.That(names.Skip(at).Take(10), Is.EqualTo(new[]
        {
            "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
            "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
            "blocks.0.adaLN_modulation.1.weight", "blocks.0.adaLN_modulation.1.bias",
        }));
        Assert.That(model["blocks.0.attn.qkv.weight"].Shape, Is.EqualTo(new[] { 576, 192 }));
        Assert.That(model["blocks.0.mlp.fc1.weight"].Shape, Is.EqualTo(new[] { 768, 192 }));
    }

    // ---- initialisation ----

    [Test]
    public void FreshModelOutputsExactlyZero()
    {
        var cfg = SiTConfig.Tiny with { InputSize = 28 };
        using var model = new SiT(Backend, DType.F32, cfg, seed: 7);
        using var tape = new Tape();
        var (x, t, y) = Inputs(DType.F32, cfg, n: 3, seed: 1, labels: [0, 9, 10]); // 10 = the null class
        var (output, projections) = model.Forward(x, t, y);
        Assert.That(output.Shape, Is.EqualTo(new[] { 3, 1, 28, 28 }));
        Assert.That(output.ToFloatArray().All(v => v == 0.0f), Is.True, "adaLN-Zero: a fresh model outputs exactly 0");
        Assert.That(projections, Has.Length.EqualTo(1));
        Assert.That(projections[0].Shape, Is.EqualTo(new[] { 3, 196, 768 }));
        var z = projections[0].ToFloatArray();
        Assert.That(z.All(float.IsFinite) && z.Any(v => v != 0), Is.True, "the projections are not zero-initialised");
    }

    [Test]
    public void InitialisationFollowsTheReference()
    {
        var cfg = SiTConfig.Tiny;
        using var model = new SiT(Backend, DType.F64, cfg, seed: 3);
        double[] V(string name) => model[name].ToDoubleArray();
        foreach (var (name, tensor) in model.StateDict())
        {
            bool zero = name.EndsWith(".bias") || name.Contains("adaLN_modulation") || name.StartsWith("final_layer.");
            if (zero) Assert.That(tensor.ToDoubleArray().All(v => v == 0), Is.True, $"{name} starts at zero");
        }
        // xavier_uniform bounds: Linear [out, in] and the conv weight through its [D, C*p*p] view.
        AssertUniform(V("blocks.1.attn.qkv.weight"), Math.Sqrt(6.0 / (192 + 576)));
        AssertUniform(V("blocks.1.mlp.fc2.weight"), Math.Sqrt(6.0 / (768 + 192)));
        AssertUniform(V("projectors.0.2.weight"), Math.Sqrt(6.0 / (512 + 512)));
        AssertUniform(V("x_embedder.proj.weight"), Math.Sqrt(6.0 / (4 + 192)));
        AssertNormal(V("y_embedder.embedding_table.weight"), 0.02);
        AssertNormal(V("t_embedder.mlp.0.weight"), 0.02);
        AssertNormal(V("t_embedder.mlp.2.weight"), 0.02);
        Assert.That(V("pos_embed"), Is.EqualTo(Autograd.Ops.SinCos2D(192, 16, 16)));
    }

    private static void AssertUniform(double[] v, double bound)
    {
        Assert.That(v.Max(Math.Abs), Is.LessThanOrEqualTo(bound).And.GreaterThan(0.95 * bound));
        // U(-a, a) has variance a^2 / 3.
        double var = v.Select(x => x * x).Average();
        Assert.That(var, Is.EqualTo(bound * bound / 3).Within(5 * bound * bound / 3 / Math.Sqrt(v.Length)));
        Assert.That(v.Average(), Is.EqualTo(0).Within(5 * bound / Math.Sqrt(3 * v.Length)));
    }

    private static void AssertNormal(double[] v, double std)
    {
        double mean = v.Average(), sd = Math.Sqrt(v.Select(x => (x - mean) * (x - mean)).Average());
        Assert.That(mean, Is.EqualTo(0).Within(5 * std / Math.Sqrt(v.Length)));
        Assert.That(sd, Is.EqualTo(std).Within(5 * std / Math.Sqrt(2.0 * v.Length)));
    }

    [Test]
    public void SameSeedSameParametersAnyThreadCount()
    {
        var cfg = Micro with { Depth = 3, EncoderDepth = 2, ZDims = [5, 7] };
        using var one = new CpuBackend(threads: 1);
        using var a = new SiT(Backend, DType.F32, cfg, seed: 42);
        using var b = new SiT(one, DType.F32, cfg, seed: 42);
        using var c = new SiT(Backend, DType.F32, cfg, seed: 43);
        using var wide = new SiT(Backend, DType.F64, cfg, seed: 42);
        var sa = a.StateDict();
        var sb = b.StateDict();
        var sc = c.StateDict();
        var sw = wide.StateDict();
        int differing = 0;
        for (int i = 0; i < sa.Count; i++)
        {
            var va = sa[i].Tensor.ToFloatArray();
            Assert.That(sb[i].Tensor.ToFloatArray(), Is.EqualTo(va), $"{sa[i].Name}: same seed, 1 thread");
            // The float32 model is the float64 model of the same seed rounded once.
            Assert.That(sw[i].Tensor.ToDoubleArray().Select(v => (float)v), Is.EqualTo(va), $"{sa[i].Name}: fp32 = rounded fp64");
            bool random = va.Any(v => v != 0) && sa[i].Name != "pos_embed";
            if (random)
            {
                Assert.That(sc[i].Tensor.ToFloatArray(), Is.Not.EqualTo(va), $"{sa[i].Name}: another seed");
                differing++;
            }
        }
        Assert.That(differing, Is.EqualTo(4 + 3 * 4 + 2 * 3), "every random tensor (x_embed, t mlp x2, labels, 4 per block, 3 per projector) differs");
        // Streams are per tensor: qkv of two blocks are not the same draw.
        Assert.That(a["blocks.0.attn.qkv.weight"].ToFloatArray(), Is.Not.EqualTo(a["blocks.1.attn.qkv.weight"].ToFloatArray()));
    }

    [Test]
    public void LoadStateDictCopiesEveryTensor()
    {
        using var a = new SiT(Backend, DType.F32, Micro, seed: 1);
        using var b = new SiT(Backend, DType.F64, Micro, seed: 2);
        b.LoadStateDict(a.StateDict().ToDictionary(e => e.Name, e => e.Tensor));
        foreach (var (name, tensor) in a.StateDict())
            Assert.That(b[name].ToDoubleArray(), Is.EqualTo(tensor.ToDoubleArray()), name);
        var partial = a.StateDict().Skip(1).ToDictionary(e => e.Name, e => e.Tensor);
        Assert.That(() => b.LoadStateDict(partial), Throws.InstanceOf<KeyNotFoundException>().With.Message.Contains("pos_embed"));
    }

    // ---- forward semantics and gradients ----

    /// <summary>Gives the zero-initialised adaLN and final layers (and every bias) random values so every path carries signal.</summary>
    private static void PerturbZeroInit(SiT model, int seed, double scale = 0.3)
    {
        var rng = new Random(seed);
        foreach (var (name, tensor) in model.StateDict())
        {
            if (!name.Contains("adaLN_modulation") && !name.StartsWith("final_layer.linear") && !name.EndsWith(".bias")) continue;
            var values = Enumerable.Range(0, (int)tensor.Count).Select(_ => scale * (2 * rng.NextDouble() - 1)).ToArray();
            Set(tensor, values);
        }
    }

    private static void Set(Tensor tensor, double[] values, long offset = 0)
    {
        if (tensor.DType == DType.F64) tensor.Backend.Upload<double>(values, tensor.Buffer, offset);
        else tensor.Backend.Upload<float>(values.Select(v => (float)v).ToArray(), tensor.Buffer, offset);
    }

    private static (Tensor x, Tensor t, Tensor y) Inputs(DType dtype, SiTConfig cfg, int n, int seed, int[] labels)
    {
        var rng = new Random(seed);
        var xs = Enumerable.Range(0, n * cfg.InChannels * cfg.InputSize * cfg.InputSize).Select(_ => (double)(float)(2 * rng.NextDouble() - 1)).ToArray();
        var ts = Enumerable.Range(0, n).Select(_ => (double)(float)rng.NextDouble()).ToArray();
        return (OpCheck.Make(dtype, xs, n, cfg.InChannels, cfg.InputSize, cfg.InputSize), OpCheck.Make(dtype, ts, n),
            Tensor.FromArray(Backend, labels, n));
    }

    /// <summary>&lt;output, R&gt; + sum_j &lt;projection_j, R_j&gt; for fixed random R (every output element is exercised).</summary>
    private static Tensor Objective(SiT model, Tensor x, Tensor t, Tensor y, int seed)
    {
        var (output, projections) = model.Forward(x, t, y);
        var rng = new Random(seed);
        Tensor Weights(Tensor like) => OpCheck.Make(like.DType, Enumerable.Range(0, (int)like.Count).Select(_ => 2 * rng.NextDouble() - 1).ToArray(), like.Shape);
        var loss = Autograd.Ops.Sum(Autograd.Ops.Mul(output, Weights(output)));
        foreach (var z in projections) loss = Autograd.Ops.Add(loss, Autograd.Ops.Sum(Autograd.Ops.Mul(z, Weights(z))));
        return loss;
    }

    [TestCase(false), TestCase(true), Category("GradCheck")]
    public void GradientsMatchFiniteDifferencesEndToEnd(bool qkNorm)
    {
        var cfg = Micro with { QkNorm = qkNorm };
        using var model = new SiT(Backend, DType.F64, cfg, seed: 5);
        PerturbZeroInit(model, seed: 11);
        var (x, t, y) = Inputs(DType.F64, cfg, n: 2, seed: 3, labels: [2, 3]);
        x.AsParameter("x");
        t.AsParameter("t");
        try
        {
            double Evaluate()
            {
                using var tape = new Tape();
                using var _ = Tape.NoGrad();
                return Objective(model, x, t, y, seed: 99).Item();
            }

            var probed = new List<(string Name, Tensor Tensor)>(model.NamedParameters()) { ("x", x), ("t", t) };
            using (var tape = new Tape())
            {
                tape.Backward(Objective(model, x, t, y, seed: 99));
            }
            Assert.That(model["pos_embed"].Grad, Is.Null, "the frozen pos_embed gets no gradient");
            double loss = Evaluate();
            const double step = 1e-6;
            int checkedCount = 0;
            foreach (var (name, tensor) in probed)
            {
                Assert.That(tensor.Grad, Is.Not.Null, $"{name} received no gradient");
                var grad = tensor.Grad!.ToDoubleArray();
                var values = tensor.ToDoubleArray();
                long n = values.Length;
                int probes = (int)Math.Min(n, 4);
                for (int k = 0; k < probes; k++)
                {
                    long j = probes == 1 ? 0 : k * (n - 1) / (probes - 1);
                    double keep = values[j];
                    Set(tensor, [keep + step], j);
                    double plus = Evaluate();
                    Set(tensor, [keep - step], j);
                    double minus = Evaluate();
                    Set(tensor, [keep], j);
                    double numeric = (plus - minus) / (2 * step);
                    double tol = 1e-8 + 1e-5 * Math.Max(Math.Abs(numeric), 1e-3 * Math.Max(1, Math.Abs(loss)));
                    Assert.That(grad[j], Is.EqualTo(numeric).Within(tol), $"d loss / d {name}[{j}]: analytic {grad[j]:R} vs numeric {numeric:R}");
                    checkedCount++;
                }
            }
            Assert.That(checkedCount, Is.GreaterThan(100));
            // Non-trivial: the gradients through the (perturbed) zero-initialised layers are not zero.
            Assert.That(model["blocks.1.adaLN_modulation.1.weight"].Grad!.ToDoubleArray().Any(v => v != 0), Is.True);
            Assert.That(model["blocks.0.attn.qkv.weight"].Grad!.ToDoubleArray().Any(v => v != 0), Is.True);
        }
        finally
        {
            x.Dispose();
            t.Dispose();
            y.Dispose();
        }
    }

    [Test, Category("Equivalence")]
    public void Fp32ForwardMatchesFp64()
    {
        foreach (var cfg in new[]
        {
            Micro,
            new SiTConfig
            {
                Name = "small", InputSize = 8, PatchSize = 2, InChannels = 3, HiddenSize = 36, Depth = 3, NumHeads = 3,
                NumClasses = 7, EncoderDepth = 2, ZDims = [7, 3], ProjectorDim = 17,
            },
        })
        {
            using var m32 = new SiT(Backend, DType.F32, cfg, seed: 9);
            using var m64 = new SiT(Backend, DType.F64, cfg, seed: 9);
            PerturbZeroInit(m32, seed: 4);
            PerturbZeroInit(m64, seed: 4);
            int[] labels = [0, cfg.NumClasses, 1];
            using var tape = new Tape();
            var (x32, t32, y32) = Inputs(DType.F32, cfg, 3, seed: 8, labels);
            var (x64, t64, y64) = Inputs(DType.F64, cfg, 3, seed: 8, labels);
            var (o32, p32) = m32.Forward(x32, t32, y32);
            var (o64, p64) = m64.Forward(x64, t64, y64);
            OpCheck.AssertClose(o32.ToDoubleArray(), o64.ToDoubleArray(), 1e-4, $"{cfg.Name} output");
            for (int j = 0; j < p64.Length; j++)
                OpCheck.AssertClose(p32[j].ToDoubleArray(), p64[j].ToDoubleArray(), 1e-4, $"{cfg.Name} projection {j}");
            Assert.That(o64.ToDoubleArray().Any(v => v != 0), Is.True);
        }
    }

    [Test]
    public void ProjectionsReadTheStreamAfterEncoderDepth()
    {
        var cfg = Micro with { Depth = 3, EncoderDepth = 2 };
        using var model = new SiT(Backend, DType.F64, cfg, seed: 1);
        PerturbZeroInit(model, seed: 2);
        using var tape = new Tape();
        var (x, t, y) = Inputs(DType.F64, cfg, 2, seed: 3, [0, 1]);
        var (o1, p1) = model.Forward(x, t, y);
        // Changing block 3 (after encoder_depth 2) changes the output but not the projections; block 2 changes both.
        var w = model["blocks.2.mlp.fc1.weight"];
        Set(w, w.ToDoubleArray().Select(v => v * 1.5).ToArray());
        var (o2, p2) = model.Forward(x, t, y);
        Assert.That(p2[0].ToDoubleArray(), Is.EqualTo(p1[0].ToDoubleArray()));
        Assert.That(o2.ToDoubleArray(), Is.Not.EqualTo(o1.ToDoubleArray()));
        var w1 = model["blocks.1.mlp.fc1.weight"];
        Set(w1, w1.ToDoubleArray().Select(v => v * 1.5).ToArray());
        var (_, p3) = model.Forward(x, t, y);
        Assert.That(p3[0].ToDoubleArray(), Is.Not.EqualTo(p1[0].ToDoubleArray()));
    }

    [Test]
    public void HiddenStatesAreTheProjectorInput()
    {
        var cfg = Micro with { Depth = 3, EncoderDepth = 2 };
        using var model = new SiT(Backend, DType.F64, cfg, seed: 1);
        PerturbZeroInit(model, seed: 2);
        using var tape = new Tape();
        var (x, t, y) = Inputs(DType.F64, cfg, 2, seed: 3, [0, 1]);
        var (_, projections) = model.Forward(x, t, y);
        var h = model.HiddenStates(x, t, y);
        Assert.That(h.Shape, Is.EqualTo(new[] { 2, cfg.Tokens, cfg.HiddenSize }));
        Tensor P(string name) => model[$"projectors.0.{name}"];
        var z = Autograd.Ops.Linear(Autograd.Ops.Silu(Autograd.Ops.Linear(Autograd.Ops.Silu(Autograd.Ops.Linear(h, P("0.weight"), P("0.bias"))),
            P("2.weight"), P("2.bias"))), P("4.weight"), P("4.bias"));
        Assert.That(z.ToDoubleArray(), Is.EqualTo(projections[0].ToDoubleArray()));
        Assert.That(model.HiddenStates(x, t, y, depth: 3).ToDoubleArray(), Is.Not.EqualTo(h.ToDoubleArray()));
        Assert.That(() => model.HiddenStates(x, t, y, depth: 4), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void ForwardRejectsMismatchedInputs()
    {
        using var model = new SiT(Backend, DType.F32, Micro, seed: 1);
        using var tape = new Tape();
        var (x, t, y) = Inputs(DType.F32, Micro, 2, seed: 1, [0, 1]);
        var bad = Tensor.Zeros(Backend, DType.F32, 2, 1, 6, 6);
        Assert.That(() => model.Forward(bad, t, y), Throws.InstanceOf<ShapeMismatchException>().With.Message.Contains("[N, 1, 4, 4]"));
        Assert.That(() => model.Forward(x, Tensor.Zeros(Backend, DType.F32, 3), y), Throws.InstanceOf<ShapeMismatchException>().With.Message.Contains("t "));
        Assert.That(() => model.Forward(x, t, Tensor.FromArray(Backend, new[] { 0, 4 }, 2)), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => model.Forward(x.To(DType.F64), t, y), Throws.InstanceOf<ShapeMismatchException>().With.Message.Contains("float32"));
    }

    // ---- configs ----

    [Test]
    public void PresetsMatchThePaper()
    {
        foreach (var name in SiTConfig.PresetNames) Assert.That(SiTConfig.Preset(name).Validate().Name, Is.EqualTo(name));
        var xl = SiTConfig.Preset("SiT-XL/2");
        Assert.That((xl.Depth, xl.HiddenSize, xl.NumHeads, xl.PatchSize, xl.EncoderDepth, xl.InChannels, xl.Tokens),
            Is.EqualTo((28, 1152, 16, 2, 8, 4, 256)));
        var b = SiTConfig.Preset("SiT-B/4");
        Assert.That((b.Depth, b.HiddenSize, b.NumHeads, b.PatchSize, b.EncoderDepth, b.Tokens), Is.EqualTo((12, 768, 12, 4, 4, 64)));
        var l = SiTConfig.Preset("SiT-L/8");
        Assert.That((l.Depth, l.HiddenSize, l.NumHeads, l.Tokens), Is.EqualTo((24, 1024, 16, 16)));
        Assert.That(SiTConfig.Preset("SiT-T/2"), Is.SameAs(SiTConfig.Tiny));
        Assert.That(() => SiTConfig.Preset("SiT-XL/3"), Throws.ArgumentException.With.Message.Contains("Unknown SiT preset"));
        Assert.That(() => SiTConfig.Preset("DiT-XL/3"), Throws.ArgumentException);
    }

    private static IEnumerable<TestCaseData> InvalidConfigs()
    {
        var ok = Micro;
        yield return new TestCaseData(ok with { NumHeads = 3 }, "not divisible by num_heads").SetName("HeadsDoNotDivideHidden");
        yield return new TestCaseData(ok with { InputSize = 5 }, "not a multiple of patch_size").SetName("PatchDoesNotDivideInput");
        yield return new TestCaseData(ok with { EncoderDepth = 0 }, "encoder_depth 0 must be in 1..depth (2)").SetName("EncoderDepthZero");
        yield return new TestCaseData(ok with { EncoderDepth = 3 }, "encoder_depth 3 must be in 1..depth (2)").SetName("EncoderDepthPastDepth");
        yield return new TestCaseData(ok with { HiddenSize = 18, NumHeads = 2 }, "multiple of 4").SetName("HiddenNotMultipleOf4");
        yield return new TestCaseData(ok with { ZDims = [5, 0] }, "z_dim").SetName("ZeroZDim");
        yield return new TestCaseData(ok with { NumClasses = 0 }, "num_classes").SetName("NoClasses");
        yield return new TestCaseData(ok with { Depth = 0 }, "depth must be positive").SetName("NoDepth");
        yield return new TestCaseData(ok with { ProjectorDim = 0 }, "projector_dim").SetName("NoProjectorWidth");
    }

    [TestCaseSource(nameof(InvalidConfigs))]
    public void InvalidConfigsAreRejected(SiTConfig cfg, string message)
    {
        Assert.That(() => cfg.Validate(), Throws.ArgumentException.With.Message.Contains(message));
        Assert.That(() => new SiT(Backend, DType.F32, cfg, 0), Throws.ArgumentException.With.Message.Contains(message));
    }

    // ---- qk-norm ----

    [Test]
    public void QkNormAddsTimmLayerNormsBetweenQkvAndProj()
    {
        var cfg = SiTConfig.Tiny with { QkNorm = true };
        using var model = new SiT(Backend, DType.F32, cfg, seed: 0);
        var names = model.StateDict().Select(e => e.Name).ToList();
        int at = names.IndexOf("blocks.0.attn.qkv.weight");
        Assert.That(names.Skip(at).Take(8), Is.EqualTo(new[]
        {
            "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.q_norm.weight", "blocks.0.attn.q_norm.bias",
            "blocks.0.attn.k_norm.weight", "blocks.0.attn.k_norm.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
        }));
        Assert.That(model.StateDict().Count(e => e.Name.Contains("_norm.")), Is.EqualTo(4 * cfg.Depth));
        Assert.That(model["blocks.5.attn.k_norm.weight"].Shape, Is.EqualTo(new[] { 64 }), "LayerNorm(head_dim), shared by the heads");
        Assert.That(model["blocks.5.attn.q_norm.weight"].ToFloatArray(), Is.All.EqualTo(1f), "nn.LayerNorm's default init");
        Assert.That(model["blocks.5.attn.q_norm.bias"].ToFloatArray(), Is.All.EqualTo(0f));
        using var plain = new SiT(Backend, DType.F32, SiTConfig.Tiny, seed: 0);
        Assert.That(model.ParameterCount - plain.ParameterCount, Is.EqualTo(cfg.Depth * 4 * 64));
    }

    /// <summary>
    /// LayerNorm is invariant to a positive scale of its input (up to eps), so with qk-norm scaling the q rows (0..D-1) or
    /// the k rows (D..2D-1) of qkv barely changes the output, while without it the attention logits change; the v rows
    /// (2D..3D-1) are not normalised either way. This pins down which rows are q and k and that the norm is per head.
    /// </summary>
    [Test]
    public void QkNormNormalisesTheQAndKRowsOfQkv()
    {
        double Change(bool qkNorm, int firstRow)
        {
            var cfg = Micro with { QkNorm = qkNorm };
            using var model = new SiT(Backend, DType.F64, cfg, seed: 5);
            PerturbZeroInit(model, seed: 11);
            using var tape = new Tape();
            using var _ = Tape.NoGrad();
            var (x, t, y) = Inputs(DType.F64, cfg, n: 2, seed: 3, labels: [0, 1]);
            var before = model.Forward(x, t, y).Output.ToDoubleArray();
            int d = cfg.HiddenSize;
            foreach (var name in new[] { "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias" })
            {
                var tensor = model[name];
                var values = tensor.ToDoubleArray();
                int width = values.Length / (3 * d);
                for (long j = (long)firstRow * width; j < (long)(firstRow + d) * width; j++) values[j] *= 3;
                Set(tensor, values);
            }
            var after = model.Forward(x, t, y).Output.ToDoubleArray();
            return before.Zip(after, (a, b) => Math.Abs(a - b)).Max() / before.Max(Math.Abs);
        }

        int d = Micro.HiddenSize;
        Assert.That(Change(qkNorm: true, firstRow: 0), Is.LessThan(1e-6), "q rows with qk-norm");
        Assert.That(Change(qkNorm: true, firstRow: d), Is.LessThan(1e-6), "k rows with qk-norm");
        Assert.That(Change(qkNorm: false, firstRow: 0), Is.GreaterThan(1e-3), "q rows without qk-norm");
        Assert.That(Change(qkNorm: false, firstRow: d), Is.GreaterThan(1e-3), "k rows without qk-norm");
        Assert.That(Change(qkNorm: true, firstRow: 2 * d), Is.GreaterThan(1e-3), "v rows are not normalised");
    }
}
