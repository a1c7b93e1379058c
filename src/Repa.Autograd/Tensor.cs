using Repa.Kernels;

namespace Repa.Autograd;

/// <summary>
/// A contiguous row-major array on a backend, PyTorch shapes. Buffers are rented from the backend's pool; a tensor
/// created while a <see cref="Tape"/> is active belongs to that tape and goes back to the pool when the tape is reset,
/// so a training step that repeats its shapes allocates nothing after the first. Tensors created outside a tape
/// (parameters, data) live until disposed.
/// </summary>
public sealed class Tensor : IDisposable
{
    private readonly Tensor? viewOf; // a reshape shares its source's buffer and never returns it to the pool
    private DeviceBuffer? buffer;

    private Tensor(IBackend backend, DType dtype, int[] shape, DeviceBuffer buffer, Tensor? viewOf)
    {
        Backend = backend;
        DType = dtype;
        Shape = shape;
        Count = Shapes.Count(shape);
        this.buffer = buffer;
        this.viewOf = viewOf;
        Tape.Current?.Own(this);
    }

    public IBackend Backend { get; }
    public DType DType { get; }
    public int[] Shape { get; }
    public int Rank => Shape.Length;
    public long Count { get; }
    public string? Name { get; set; }

    /// <summary>The device memory; its length may exceed <see cref="Count"/> only for views.</summary>
    public DeviceBuffer Buffer => buffer ?? throw new ObjectDisposedException($"tensor {Describe()}");

    /// <summary>Whether gradients flow to this tensor. Set it on leaves (parameters); ops set it on their outputs.</summary>
    public bool RequiresGrad { get; set; }

    /// <summary>Accumulated gradient (same shape), or null before the first backward that reaches this tensor.</summary>
    public Tensor? Grad { get; internal set; }

    /// <summary>The tape node that produced this tensor, or null for a leaf.</summary>
    internal Tape.Node? Creator { get; set; }

    public bool IsLeaf => Creator == null;

    public int Size(int axis) => Shape[Shapes.Axis("size", axis, Rank)];

    public string ShapeString => Shapes.Format(Shape);

    public string Describe() => $"{Name ?? "tensor"}{ShapeString} {DType.Name()}";

    public override string ToString() => Describe();

    // ---- creation ----

    /// <summary>An uninitialised tensor rented from the backend's pool.</summary>
    public static Tensor Empty(IBackend backend, DType dtype, params int[] shape)
    {
        foreach (int s in shape)
            if (s < 0) throw new ShapeMismatchException($"empty: shape {Shapes.Format(shape)} has a negative size.");
        var buffer = backend.Pool.Rent(dtype, Shapes.Count(shape));
        return new Tensor(backend, dtype, (int[])shape.Clone(), buffer, null);
    }

    public static Tensor Zeros(IBackend backend, DType dtype, params int[] shape) => Full(backend, dtype, 0, shape);

    public static Tensor Full(IBackend backend, DType dtype, double value, params int[] shape)
    {
        var t = Empty(backend, dtype, shape);
        backend.Fill(t.Buffer, 0, t.Count, value);
        return t;
    }

    public static Tensor FromArray(IBackend backend, float[] data, params int[] shape) => From(backend, DType.F32, data, shape);
    public static Tensor FromArray(IBackend backend, double[] data, params int[] shape) => From(backend, DType.F64, data, shape);
    public static Tensor FromArray(IBackend backend, int[] data, params int[] shape) => From(backend, DType.I32, data, shape);

    private static Tensor From<T>(IBackend backend, DType dtype, T[] data, int[] shape) where T : unmanaged
    {
        if (Shapes.Count(shape) != data.Length)
            throw new ShapeMismatchException($"from_array: {data.Length} values do not fill shape {Shapes.Format(shape)}.");
        var t = Empty(backend, dtype, shape);
        backend.Upload<T>(data, t.Buffer);
        return t;
    }

    /// <summary>A tensor sharing this one's memory with another shape of the same element count (no copy).</summary>
    internal Tensor View(int[] shape) => new(Backend, DType, shape, Buffer, viewOf ?? this);

    // ---- reading back ----

    public float[] ToFloatArray() => ReadAs<float>(DType.F32);
    public double[] ToDoubleArray() => ReadAs<double>(DType.F64);

    public int[] ToIntArray() => DType == DType.I32
        ? Read<int>()
        : throw new InvalidOperationException($"{Describe()} is not int32.");

    /// <summary>The value of a one-element tensor.</summary>
    public double Item()
    {
        if (Count != 1) throw new ShapeMismatchException($"item: {Describe()} has {Count} elements, not 1.");
        return ToDoubleArray()[0];
    }

    private T[] Read<T>() where T : unmanaged
    {
        var result = new T[Count];
        Backend.Download<T>(Buffer, result);
        return result;
    }

    private T[] ReadAs<T>(DType dtype) where T : unmanaged
    {
        if (DType == dtype) return Read<T>();
        using var converted = To(dtype); // back to the pool right away (a tape's later dispose is a no-op)
        return converted.Read<T>();
    }

    /// <summary>A copy in another dtype (no gradient flows through it; use for checks and I/O).</summary>
    public Tensor To(DType dtype)
    {
        var t = Empty(Backend, dtype, Shape);
        Backend.Convert(Buffer, t.Buffer, Count);
        return t;
    }

    /// <summary>A copy that no tape owns (survives the tape's reset) and that has no gradient history.</summary>
    public Tensor Detached()
    {
        var buffer = Backend.Pool.Rent(DType, Count);
        Backend.Copy(Buffer, 0, buffer, 0, Count);
        var t = new Tensor(Backend, DType, (int[])Shape.Clone(), buffer, null);
        Tape.Current?.Disown(t);
        return t;
    }

    /// <summary>Takes this tensor off the current tape (if any), so it outlives the tape's reset: loaded data, weights.</summary>
    public Tensor Persistent()
    {
        Tape.Current?.Disown(this);
        return this;
    }

    /// <summary>Turns this tensor into a trainable parameter: a leaf that requires grad and belongs to no tape.</summary>
    public Tensor AsParameter(string? name = null)
    {
        Persistent();
        RequiresGrad = true;
        Name = name ?? Name;
        return this;
    }

    /// <summary>Sets the gradient to zero, keeping its buffer (no allocation).</summary>
    public void ZeroGrad()
    {
        if (Grad != null) Backend.Fill(Grad.Buffer, 0, Grad.Count, 0);
    }

    /// <summary>The gradient tensor, allocated and zeroed on first use. Leaves keep theirs across tape resets.</summary>
    internal Tensor GradBuffer()
    {
        if (Grad != null) return Grad;
        var g = Zeros(Backend, DType, Shape);
        if (IsLeaf) Tape.Current?.Disown(g);
        Grad = g;
        return g;
    }

    public void Dispose()
    {
        if (buffer == null) return;
        if (viewOf == null) Backend.Pool.Return(buffer);
        buffer = null;
        if (Grad != null && IsLeaf) Grad.Dispose();
        Grad = null;
        Creator = null;
    }
}
