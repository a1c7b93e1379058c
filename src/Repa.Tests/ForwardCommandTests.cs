using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime;
using Repa.Runtime.Checkpoints;
using Repa.Runtime.Data;
using Repa.Runtime.Models;
using Repa.Runtime.Training;

namespace Repa.Tests;

/// <summary>`forward` writes the model output, projections, losses and gradients of a trained checkpoint.</summary>
[TestFixture]
public class ForwardCommandTests
{
    private string folder = "";

    [OneTimeSetUp]
    public void TrainTinyCheckpoint()
    {
        TrainerTests.Data(); // ignores the fixture when Fashion-MNIST is not installed
        folder = Path.Combine(Path.GetTempPath(), "repa-forward-" + Guid.NewGuid().ToString("N"));
        var o = new StringWriter();
        var e = new StringWriter();
        // qk-norm on: the forward command must rebuild it from config.json (the plain model is covered by TrainerTests).
        int code = Cli.Run(["train", "--config", "SiT-T/4", "--steps", "2", "--batch", "4", "--out", folder, "--lr", "1e-3", "--qk-norm", "true",
            "--sample-grid", "false"], o, e);
        Assert.That(code, Is.EqualTo(0), e.ToString());
        Assert.That(ForwardCommand.LoadConfig(Path.Combine(folder, "config.json")).model.QkNorm, Is.True);
        var settings = ForwardCommand.LoadRunSettings(Path.Combine(folder, "config.json"));
        Assert.That(settings, Is.EqualTo(new ForwardCommand.RunSettings("sit", IdxDataset.DefaultFashionMnistFolder, 0.9999)));
    }

    [OneTimeTearDown]
    public void Clean()
    {
        if (Directory.Exists(folder)) Directory.Delete(folder, true);
    }

    private static float[] Random(int n, int seed, double scale = 1)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();
    }

    [Test]
    public void LossFormMatchesTheObjectiveInProcess()
    {
        var be = new CpuBackend(2);
        var (config, objectiveConfig) = ForwardCommand.LoadConfig(Path.Combine(folder, "config.json"));
        int n = 2, c = config.InChannels, s = config.InputSize, tokens = config.Tokens, z = config.ZDims[0];
        var x0 = Tensor.FromArray(be, Random(n * c * s * s, 1), n, c, s, s).Persistent();
        var noise = Tensor.FromArray(be, Random(n * c * s * s, 2), n, c, s, s).Persistent();
        var t = Tensor.FromArray(be, new float[] { 0.25f, 0.9f }, n).Persistent();
        var y = Tensor.FromArray(be, new[] { 3, 10 }, n).Persistent();
        var target = Tensor.FromArray(be, Random(n * tokens * z, 3), n, tokens, z).Persistent();
        string input = Path.Combine(folder, "in.safetensors"), output = Path.Combine(folder, "out.safetensors");
        SafeTensors.Write(input, [("x0", x0), ("noise", noise), ("t", t), ("y", y), ("target.0", target)]);

        var err = new StringWriter();
        Assert.That(Cli.Run(["forward", "--checkpoint", folder, "--input", input, "--output", output], new StringWriter(), err), Is.EqualTo(0), err.ToString());
        using var result = SafeTensors.Read(output, be);

        using var model = new SiT(be, DType.F32, config, 0);
        using (var state = SafeTensors.Read(Path.Combine(folder, "checkpoint.safetensors"), be)) model.LoadStateDict(state.Tensors, strict: false);
        using var tape = new Tape();
        var loss = new Objective(objectiveConfig with { ClassDropout = 0 }).Compute(model, x0, noise, t, y, [target]);
        tape.Backward(loss.Total);
        Assert.That(result["loss"].Item(), Is.EqualTo(loss.Total.Item()));
        Assert.That(result["loss_denoise"].Item(), Is.EqualTo(loss.Denoise.Item()));
        Assert.That(result["loss_proj"].Item(), Is.EqualTo(loss.Proj.Item()));
        Assert.That(result["loss_proj"].Item(), Is.InRange(-1.0, 1.0), "a mean negative cosine");
        Assert.That(result["v"].ToFloatArray(), Is.EqualTo(loss.Output.ToFloatArray()));
        Assert.That(result["zs.0"].Shape, Is.EqualTo(new[] { n, tokens, z }));
        foreach (var (name, p) in model.NamedParameters())
            Assert.That(result[$"grad.{name}"].ToFloatArray(), Is.EqualTo(p.Grad!.ToFloatArray()), name);
    }

    [Test]
    public void InferenceFormWritesVelocityAndProjections()
    {
        var be = new CpuBackend(2);
        var (config, _) = ForwardCommand.LoadConfig(Path.Combine(folder, "config.json"));
        int s = config.InputSize;
        var x = Tensor.FromArray(be, Random(s * s, 4), 1, 1, s, s).Persistent();
        var t = Tensor.FromArray(be, new float[] { 0.5f }, 1).Persistent();
        var y = Tensor.FromArray(be, new[] { 1 }, 1).Persistent();
        string input = Path.Combine(folder, "in2.safetensors"), output = Path.Combine(folder, "out2.safetensors");
        SafeTensors.Write(input, [("x", x), ("t", t), ("y", y)]);
        Assert.That(Cli.Run(["forward", "--checkpoint", Path.Combine(folder, "checkpoint.safetensors"), "--input", input, "--output", output], new StringWriter(), new StringWriter()), Is.EqualTo(0));
        using var result = SafeTensors.Read(output, be);
        Assert.That(result.Tensors.Keys, Is.EquivalentTo(new[] { "v", "zs.0" }));
        Assert.That(result["v"].Shape, Is.EqualTo(new[] { 1, 1, s, s }));
        Assert.That(result["v"].ToFloatArray().Any(v => v != 0), Is.True, "a trained model no longer outputs zeros");
    }

    [Test]
    public void MissingInputTensorIsOneSentence()
    {
        var be = new CpuBackend(1);
        string input = Path.Combine(folder, "in3.safetensors");
        SafeTensors.Write(input, [("x", Tensor.FromArray(be, new float[4], 1, 1, 2, 2).Persistent())]);
        var err = new StringWriter();
        Assert.That(Cli.Run(["forward", "--checkpoint", folder, "--input", input, "--output", Path.Combine(folder, "o.safetensors")], new StringWriter(), err), Is.EqualTo(2));
        Assert.That(err.ToString(), Does.Contain("has no tensor"));
    }
}
