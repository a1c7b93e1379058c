namespace Repa.Autograd;

/// <summary>
/// Records ops as they run and replays them backwards. It is also the arena of a step: every tensor created while the
/// tape is current belongs to it and returns to the pool on <see cref="Reset"/>/<see cref="Dispose"/>, except leaves
/// turned into parameters or detached copies. One tape per thread is current at a time; they nest.
/// </summary>
public sealed class Tape : IDisposable
{
    [ThreadStatic] private static Tape? current;
    [ThreadStatic] private static int noGradDepth;

    private readonly Tape? previous;
    private readonly List<Node> nodes = [];
    private readonly HashSet<Tensor> owned = new(ReferenceEqualityComparer.Instance);
    private bool disposed;

    public Tape()
    {
        previous = current;
        current = this;
    }

    /// <summary>The innermost tape of this thread, or null.</summary>
    public static Tape? Current => current;

    /// <summary>Whether ops record themselves (false inside a <see cref="NoGrad"/> scope or when no tape is current).</summary>
    public static bool IsRecording => current != null && noGradDepth == 0;

    /// <summary>A scope in which ops run without recording (inference, EMA updates, evaluation).</summary>
    public static NoGradScope NoGrad()
    {
        noGradDepth++;
        return new NoGradScope();
    }

    public readonly struct NoGradScope : IDisposable
    {
        public void Dispose() => noGradDepth--;
    }

    /// <summary>One recorded op: its output, its inputs and the closure that accumulates their gradients.</summary>
    internal sealed class Node(string op, Tensor output, Tensor[] inputs, Action<Tensor> backward)
    {
        public string Op { get; } = op;
        public Tensor Output { get; } = output;
        public Tensor[] Inputs { get; } = inputs;
        public Action<Tensor> Backward { get; } = backward;
    }

    public int NodeCount => nodes.Count;

    internal void Own(Tensor t) => owned.Add(t);

    internal void Disown(Tensor t) => owned.Remove(t);

    internal void Record(Node node) => nodes.Add(node);

    /// <summary>
    /// Back-propagates from <paramref name="output"/>: a one-element tensor gets the seed gradient 1, any other needs
    /// <paramref name="seed"/> of its own shape. Gradients accumulate into <see cref="Tensor.Grad"/> of every leaf that
    /// requires grad.
    /// </summary>
    public void Backward(Tensor output, Tensor? seed = null)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (!output.RequiresGrad)
            throw new InvalidOperationException($"backward: {output.Describe()} does not require grad (no parameter or input that requires grad reached it, or it was computed under NoGrad).");
        var grad = output.GradBuffer();
        if (seed == null)
        {
            if (output.Count != 1)
                throw new ShapeMismatchException($"backward: {output.Describe()} is not a scalar; pass a seed gradient of shape {output.ShapeString}.");
            output.Backend.Fill(grad.Buffer, 0, 1, 1.0);
        }
        else
        {
            if (!seed.Shape.AsSpan().SequenceEqual(output.Shape))
                throw new ShapeMismatchException($"backward: seed {seed.ShapeString} does not match output {output.ShapeString}.");
            output.Backend.Axpby(seed.Buffer, grad.Buffer, grad.Count, 1, 1);
        }
        for (int i = nodes.Count - 1; i >= 0; i--)
        {
            var node = nodes[i];
            if (node.Output.Grad is { } g) node.Backward(g);
        }
    }

    /// <summary>Forgets the recorded ops and returns every tensor this tape owns to the pool; the tape stays current.</summary>
    public void Reset()
    {
        nodes.Clear();
        foreach (var t in owned) t.Dispose();
        owned.Clear();
    }

    public void Dispose()
    {
        if (disposed) return;
        Reset();
        disposed = true;
        if (current == this) current = previous;
    }
}
