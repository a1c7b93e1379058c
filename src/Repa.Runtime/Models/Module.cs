using Repa.Autograd;
using Repa.Kernels;

namespace Repa.Runtime.Models;

/// <summary>One entry of a module's state: its PyTorch state_dict name, the tensor, and whether the optimiser trains it.</summary>
public sealed record StateEntry(string Name, Tensor Tensor, bool Trainable);

/// <summary>
/// Base of the models: an ordered registry of named tensors in PyTorch state_dict order and names, so checkpoints move
/// between the two worlds, plus seeded initialisers. Every tensor is created outside any tape (trainable ones with
/// <see cref="Tensor.AsParameter"/>, frozen ones with <see cref="Tensor.Persistent"/>) and lives until the module is
/// disposed.
/// </summary>
/// <remarks>
/// Initial values are drawn in float64 from Philox with (seed, stream = the entry's registration index), then rounded
/// once to the module's dtype. So initialisation is reproducible, independent of thread count and of the other entries,
/// and a float32 model is exactly the float64 model of the same seed rounded to float32.
/// </remarks>
public abstract class Module : IDisposable
{
    private readonly List<StateEntry> entries = [];
    private readonly Dictionary<string, StateEntry> byName = [];
    private bool disposed;

    protected Module(IBackend backend, DType dtype, ulong seed)
    {
        if (!dtype.IsFloatingPoint()) throw new ArgumentException($"A module needs a floating-point dtype, got {dtype.Name()}.", nameof(dtype));
        Backend = backend;
        DType = dtype;
        Seed = seed;
    }

    public IBackend Backend { get; }
    public DType DType { get; }
    public ulong Seed { get; }

    /// <summary>Every registered tensor in state_dict order, trainable and frozen (e.g. pos_embed), with the flag.</summary>
    public IReadOnlyList<StateEntry> Entries => entries;

    /// <summary>(name, tensor) in PyTorch state_dict order, frozen tensors included; see <see cref="IsTrainable"/>.</summary>
    public IReadOnlyList<(string Name, Tensor Tensor)> StateDict() => entries.Select(e => (e.Name, e.Tensor)).ToList();

    /// <summary>The trainable tensors in state_dict order (what the optimiser and EMA update).</summary>
    public IReadOnlyList<Tensor> Parameters() => entries.Where(e => e.Trainable).Select(e => e.Tensor).ToList();

    /// <summary>The trainable (name, tensor) pairs in state_dict order.</summary>
    public IReadOnlyList<(string Name, Tensor Tensor)> NamedParameters() =>
        entries.Where(e => e.Trainable).Select(e => (e.Name, e.Tensor)).ToList();

    /// <summary>Total element count of the trainable tensors.</summary>
    public long ParameterCount => entries.Where(e => e.Trainable).Sum(e => e.Tensor.Count);

    public bool IsTrainable(string name) => Entry(name).Trainable;

    /// <summary>The registered tensor of that state_dict name.</summary>
    public Tensor this[string name] => Entry(name).Tensor;

    private StateEntry Entry(string name) =>
        byName.TryGetValue(name, out var e) ? e : throw new KeyNotFoundException($"{GetType().Name} has no tensor named '{name}'.");

    /// <summary>
    /// Copies values from <paramref name="state"/> (e.g. a safetensors file) into the registered tensors, converting the
    /// dtype when it differs. Every registered name must be present with the same shape; extra names are an error too
    /// unless <paramref name="strict"/> is false (then they are ignored).
    /// </summary>
    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> state, bool strict = true)
    {
        var missing = entries.Where(e => !state.ContainsKey(e.Name)).Select(e => e.Name).ToList();
        if (missing.Count > 0) throw new KeyNotFoundException($"The state lacks {missing.Count} tensors of {GetType().Name}, first '{missing[0]}'.");
        if (strict)
        {
            var extra = state.Keys.Where(k => !byName.ContainsKey(k)).ToList();
            if (extra.Count > 0) throw new ArgumentException($"The state has {extra.Count} tensors that {GetType().Name} does not know, first '{extra[0]}'.", nameof(state));
        }
        foreach (var e in entries)
        {
            var src = state[e.Name];
            if (!src.Shape.AsSpan().SequenceEqual(e.Tensor.Shape))
                throw new ArgumentException($"'{e.Name}' has shape {src.ShapeString} in the state but {e.Tensor.ShapeString} in {GetType().Name}.", nameof(state));
            if (src.DType == DType && src.Backend == Backend)
            {
                Backend.Copy(src.Buffer, 0, e.Tensor.Buffer, 0, e.Tensor.Count);
            }
            else
            {
                // Through the host in float64: exact for every float dtype, and it works across backends.
                var values = src.ToDoubleArray();
                Upload(e.Tensor, values);
            }
        }
    }

    // ---- registration (call from the derived constructor in PyTorch registration order) ----

    /// <summary>Registers a trainable tensor of the given shape filled by <paramref name="init"/>.</summary>
    protected Tensor Parameter(string name, int[] shape, Init init) => Register(name, shape, init, trainable: true);

    /// <summary>Registers a frozen tensor (a state_dict entry that never trains, like SiT's pos_embed) with given values.</summary>
    protected Tensor Frozen(string name, int[] shape, double[] values) => Register(name, shape, Init.Values(values), trainable: false);

    private Tensor Register(string name, int[] shape, Init init, bool trainable)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (byName.ContainsKey(name)) throw new ArgumentException($"{GetType().Name} already has a tensor named '{name}'.", nameof(name));
        ulong stream = (ulong)entries.Count;
        var values = init.Draw(shape, Seed, stream);
        var tensor = Tensor.Empty(Backend, DType, shape);
        try
        {
            Upload(tensor, values);
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
        if (trainable) tensor.AsParameter(name);
        else
        {
            tensor.Persistent();
            tensor.Name = name;
        }
        var entry = new StateEntry(name, tensor, trainable);
        entries.Add(entry);
        byName.Add(name, entry);
        return tensor;
    }

    /// <summary>Writes float64 host values into <paramref name="tensor"/>, rounding once to its dtype.</summary>
    protected void Upload(Tensor tensor, double[] values)
    {
        if (values.Length != tensor.Count)
            throw new ArgumentException($"{values.Length} values do not fill {tensor.Describe()}.", nameof(values));
        switch (tensor.DType)
        {
            case DType.F64:
                Backend.Upload<double>(values, tensor.Buffer);
                break;
            case DType.F32:
                Backend.Upload<float>(values.Select(v => (float)v).ToArray(), tensor.Buffer);
                break;
            default:
            {
                // Other storage types (bf16/f16) through the backend's own conversion.
                using var wide = Tensor.FromArray(Backend, values, tensor.Shape);
                Backend.Convert(wide.Buffer, tensor.Buffer, tensor.Count);
                break;
            }
        }
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        foreach (var e in entries) e.Tensor.Dispose();
        entries.Clear();
        byName.Clear();
        GC.SuppressFinalize(this);
    }
}

/// <summary>
/// How a registered tensor's initial values are made (host float64; <see cref="Module"/> rounds them to its dtype).
/// The random ones draw element i of the tensor from Philox (seed, stream, offset 0) at index i.
/// </summary>
public abstract class Init
{
    /// <summary>The values of a tensor of <paramref name="shape"/> for the entry with Philox (seed, stream).</summary>
    public abstract double[] Draw(int[] shape, ulong seed, ulong stream);

    public static Init Zeros { get; } = new ConstantInit(0);

    public static Init Constant(double value) => new ConstantInit(value);

    /// <summary>N(0, std^2) (torch.nn.init.normal_).</summary>
    public static Init Normal(double std) => new NormalInit(std);

    /// <summary>U(-bound, bound).</summary>
    public static Init Uniform(double bound) => new UniformInit(bound);

    /// <summary>
    /// torch.nn.init.xavier_uniform_ (gain 1): U(-a, a), a = sqrt(6 / (fan_in + fan_out)) with fan_out = shape[0] and
    /// fan_in = the product of the other axes: for a Linear [out, in] fan_in = in; for a conv weight [D, C, p, p] it is
    /// the bound of its [D, C*p*p] view (PyTorch's conv fans would multiply both by p*p instead).
    /// </summary>
    public static Init XavierUniform { get; } = new XavierInit();

    /// <summary>Given values (their count must match the shape).</summary>
    public static Init Values(double[] values) => new ValuesInit(values);

    /// <summary>The xavier bound of a weight of this shape (see <see cref="XavierUniform"/>).</summary>
    public static double XavierBound(int[] shape)
    {
        if (shape.Length < 2) throw new ArgumentException($"xavier_uniform needs a weight with at least 2 axes, got {Shapes.Format(shape)}.", nameof(shape));
        long fanOut = shape[0], fanIn = Shapes.Count(shape) / Math.Max(shape[0], 1);
        return Math.Sqrt(6.0 / (fanIn + fanOut));
    }

    private static double[] Uniform01(int[] shape, ulong seed, ulong stream)
    {
        var u = new double[Shapes.Count(shape)];
        Philox.Uniform(seed, stream, 0, u);
        return u;
    }

    private sealed class ConstantInit(double value) : Init
    {
        public override double[] Draw(int[] shape, ulong seed, ulong stream)
        {
            var v = new double[Shapes.Count(shape)];
            if (value != 0) Array.Fill(v, value);
            return v;
        }
    }

    private sealed class NormalInit(double std) : Init
    {
        public override double[] Draw(int[] shape, ulong seed, ulong stream)
        {
            var v = new double[Shapes.Count(shape)];
            Philox.Normal(seed, stream, 0, v);
            for (int i = 0; i < v.Length; i++) v[i] *= std;
            return v;
        }
    }

    private sealed class UniformInit(double bound) : Init
    {
        public override double[] Draw(int[] shape, ulong seed, ulong stream)
        {
            var v = Uniform01(shape, seed, stream); // (0, 1]
            for (int i = 0; i < v.Length; i++) v[i] = bound * (2 * v[i] - 1);
            return v;
        }
    }

    private sealed class XavierInit : Init
    {
        public override double[] Draw(int[] shape, ulong seed, ulong stream) => new UniformInit(XavierBound(shape)).Draw(shape, seed, stream);
    }

    private sealed class ValuesInit(double[] values) : Init
    {
        public override double[] Draw(int[] shape, ulong seed, ulong stream)
        {
            if (values.Length != Shapes.Count(shape))
                throw new ArgumentException($"{values.Length} values do not fill shape {Shapes.Format(shape)}.");
            return (double[])values.Clone();
        }
    }
}
