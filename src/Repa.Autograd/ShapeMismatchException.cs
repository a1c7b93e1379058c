namespace Repa.Autograd;

/// <summary>An op was given tensors whose shapes or dtypes do not fit; the message names the op and the shapes.</summary>
public sealed class ShapeMismatchException(string message) : ArgumentException(message);
