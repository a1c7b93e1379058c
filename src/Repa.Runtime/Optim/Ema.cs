using Repa.Autograd;

namespace Repa.Runtime.Optim;

/// <summary>
/// Exponential moving average of parameters, as REPA's train.py: initialised as a copy, then after every optimiser
/// step ema = decay * ema + (1 - decay) * param (decay 0.9999 there). The averages are off-tape tensors with the
/// parameters' shapes and dtypes.
/// </summary>
public sealed class Ema : IDisposable
{
    /// <summary>Prefix of the averages' names in checkpoints.</summary>
    public const string Prefix = "ema.";

    private readonly (string Name, Tensor Parameter, Tensor Average)[] entries;

    public Ema(IReadOnlyList<(string Name, Tensor Parameter)> parameters, double decay = 0.9999)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (!(decay >= 0 && decay <= 1)) throw new ArgumentOutOfRangeException(nameof(decay), decay, "ema: decay must be in [0, 1].");
        Decay = decay;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        entries = new (string, Tensor, Tensor)[parameters.Count];
        for (int i = 0; i < parameters.Count; i++)
        {
            var (name, p) = parameters[i];
            if (string.IsNullOrEmpty(name)) throw new ArgumentException($"ema: parameter {i} has no name.", nameof(parameters));
            ArgumentNullException.ThrowIfNull(p, $"parameters[{name}]");
            if (!seen.Add(name)) throw new ArgumentException($"ema: the parameter name '{name}' appears twice.", nameof(parameters));
            var average = Tensor.Empty(p.Backend, p.DType, p.Shape).Persistent();
            p.Backend.Copy(p.Buffer, 0, average.Buffer, 0, p.Count);
            average.Name = Prefix + name;
            entries[i] = (name, p, average);
        }
    }

    public double Decay { get; }

    /// <summary>The average of parameter <paramref name="name"/> (live).</summary>
    public Tensor this[string name] =>
        entries.FirstOrDefault(e => e.Name == name).Average ?? throw new KeyNotFoundException($"ema: no parameter named '{name}'.");

    /// <summary>ema = decay * ema + (1 - decay) * param for every parameter.</summary>
    public void Update()
    {
        foreach (var (_, p, a) in entries) p.Backend.EmaUpdate(a.Buffer, p.Buffer, p.Count, Decay);
    }

    /// <summary>The averages as named tensors for a checkpoint: "ema.&lt;name&gt;" (live, not copies).</summary>
    public IReadOnlyList<(string Name, Tensor Tensor)> StateTensors() =>
        entries.Select(e => (Prefix + e.Name, e.Average)).ToArray();

    /// <summary>Restores every average from "ema.&lt;name&gt;" (copied; extra entries ignored, missing ones an error).</summary>
    public void LoadState(IReadOnlyDictionary<string, Tensor> tensors)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        foreach (var e in entries) StateLoading.Require("ema", tensors, Prefix + e.Name, e.Average);
        foreach (var e in entries) StateLoading.CopyInto(tensors[Prefix + e.Name], e.Average);
    }

    public void Dispose()
    {
        foreach (var e in entries) e.Average.Dispose();
    }
}
