namespace Repa.Autograd;

/// <summary>Shape arithmetic shared by the ops: element counts, strides, broadcasting, formatting.</summary>
public static class Shapes
{
    public static long Count(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (int s in shape) n *= s;
        return n;
    }

    public static string Format(ReadOnlySpan<int> shape) => "[" + string.Join(", ", shape.ToArray()) + "]";

    /// <summary>Contiguous row-major strides in elements.</summary>
    public static long[] Strides(ReadOnlySpan<int> shape)
    {
        var strides = new long[shape.Length];
        long s = 1;
        for (int d = shape.Length - 1; d >= 0; d--) { strides[d] = s; s *= shape[d]; }
        return strides;
    }

    /// <summary>Numpy broadcast of two shapes; throws naming the op and both shapes when they do not broadcast.</summary>
    public static int[] Broadcast(string op, int[] a, int[] b)
    {
        int rank = Math.Max(a.Length, b.Length);
        var result = new int[rank];
        for (int i = 0; i < rank; i++)
        {
            int da = i < rank - a.Length ? 1 : a[i - (rank - a.Length)];
            int db = i < rank - b.Length ? 1 : b[i - (rank - b.Length)];
            if (da != db && da != 1 && db != 1)
                throw new ShapeMismatchException($"{op}: shapes {Format(a)} and {Format(b)} do not broadcast (axis {i}: {da} vs {db}).");
            result[i] = Math.Max(da, db);
        }
        return result;
    }

    /// <summary>Strides that read <paramref name="shape"/> (contiguous) as if it had <paramref name="outShape"/>: 0 on broadcast axes.</summary>
    public static long[] BroadcastStrides(int[] shape, int[] outShape)
    {
        var own = Strides(shape);
        var strides = new long[outShape.Length];
        int lead = outShape.Length - shape.Length;
        for (int i = 0; i < outShape.Length; i++)
            strides[i] = i < lead || shape[i - lead] == 1 ? 0 : own[i - lead];
        return strides;
    }

    /// <summary>Resolves a possibly negative axis index against a rank, PyTorch style.</summary>
    public static int Axis(string op, int axis, int rank)
    {
        int a = axis < 0 ? axis + rank : axis;
        if (a < 0 || a >= rank) throw new ShapeMismatchException($"{op}: axis {axis} is out of range for a tensor of rank {rank}.");
        return a;
    }
}
