using System.Reflection;
using ILGPU;
using ILGPU.Runtime;

namespace Repa.Kernels.Ilgpu;

/// <summary>Kernel loading (compiled once per backend, on first use) and launch geometry.</summary>
public sealed partial class IlgpuBackend
{
    private readonly Dictionary<MethodInfo, Delegate> loaded = [];

    private TLaunch Load<TLaunch>(Delegate kernel, Func<TLaunch> compile) where TLaunch : Delegate
    {
        lock (loaded)
        {
            if (!loaded.TryGetValue(kernel.Method, out var launch)) loaded[kernel.Method] = launch = compile();
            return (TLaunch)launch;
        }
    }

    /// <summary>A grid-stride launch over <paramref name="n"/> items: as many groups as the items need, at most MaxGroups.</summary>
    internal KernelConfig Stride(long n) => new((int)Math.Clamp((n + GroupSize - 1) / GroupSize, 1, MaxGroups), GroupSize);

    /// <summary>One group per item (grid-stride when there are more items than MaxGroups * 64).</summary>
    internal KernelConfig PerGroup(long items) => new((int)Math.Clamp(items, 1, MaxGroups * 64L), GroupSize);

    internal void Launch1D<T1, T2>(long n, Action<T1, T2> kernel, T1 a, T2 b)
        where T1 : struct where T2 : struct
    {
        if (n <= 0) return;
        Run(Stride(n), kernel, a, b);
    }

    internal void Run<T1, T2>(KernelConfig config, Action<T1, T2> kernel, T1 a, T2 b)
        where T1 : struct where T2 : struct
    {
        accelerator.Bind();
        Load(kernel, () => accelerator.LoadStreamKernel(kernel))(config, a, b);
    }

    internal void Run<T1, T2, T3>(KernelConfig config, Action<T1, T2, T3> kernel, T1 a, T2 b, T3 c)
        where T1 : struct where T2 : struct where T3 : struct
    {
        accelerator.Bind();
        Load(kernel, () => accelerator.LoadStreamKernel(kernel))(config, a, b, c);
    }

    internal void Run<T1, T2, T3, T4>(KernelConfig config, Action<T1, T2, T3, T4> kernel, T1 a, T2 b, T3 c, T4 d)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct
    {
        accelerator.Bind();
        Load(kernel, () => accelerator.LoadStreamKernel(kernel))(config, a, b, c, d);
    }

    internal void Run<T1, T2, T3, T4, T5>(KernelConfig config, Action<T1, T2, T3, T4, T5> kernel, T1 a, T2 b, T3 c, T4 d, T5 e)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct
    {
        accelerator.Bind();
        Load(kernel, () => accelerator.LoadStreamKernel(kernel))(config, a, b, c, d, e);
    }

    internal void Run<T1, T2, T3, T4, T5, T6>(KernelConfig config, Action<T1, T2, T3, T4, T5, T6> kernel, T1 a, T2 b, T3 c, T4 d, T5 e, T6 f)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct
    {
        accelerator.Bind();
        Load(kernel, () => accelerator.LoadStreamKernel(kernel))(config, a, b, c, d, e, f);
    }

    internal void Run<T1, T2, T3, T4, T5, T6, T7>(KernelConfig config, Action<T1, T2, T3, T4, T5, T6, T7> kernel, T1 a, T2 b, T3 c, T4 d, T5 e, T6 f, T7 g)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct
    {
        accelerator.Bind();
        Load(kernel, () => accelerator.LoadStreamKernel(kernel))(config, a, b, c, d, e, f, g);
    }

    internal void Run<T1, T2, T3, T4, T5, T6, T7, T8>(KernelConfig config, Action<T1, T2, T3, T4, T5, T6, T7, T8> kernel,
        T1 a, T2 b, T3 c, T4 d, T5 e, T6 f, T7 g, T8 h)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct
    {
        accelerator.Bind();
        Load(kernel, () => accelerator.LoadStreamKernel(kernel))(config, a, b, c, d, e, f, g, h);
    }

    /// <summary>A device scratch buffer of float64 partial sums, read back after the kernel that fills it.</summary>
    internal double[] ReadPartials(MemoryBuffer1D<double, Stride1D.Dense> partials)
    {
        accelerator.Synchronize();
        return partials.GetAsArray1D();
    }

    internal MemoryBuffer1D<T, Stride1D.Dense> Scratch<T>(long length) where T : unmanaged
    {
        accelerator.Bind();
        return accelerator.Allocate1D<T>(Math.Max(length, 1));
    }
}

/// <summary>Grid-stride helpers the kernels share.</summary>
internal static partial class IlgpuKernels
{
    /// <summary>This thread's first item of a grid-stride loop and the loop's step.</summary>
    private static long First => Grid.GlobalIndex.X;

    private static long Step => (long)Grid.DimX * Group.DimX;

    public static void FillBits(ArrayView<int> y, int bits)
    {
        for (long i = First; i < y.Length; i += Step) y[i] = bits;
    }

    public static void CopyBits(ArrayView<int> x, ArrayView<int> y)
    {
        for (long i = First; i < x.Length; i += Step) y[i] = x[i];
    }

    public static void FillLongBits(ArrayView<long> y, long bits)
    {
        for (long i = First; i < y.Length; i += Step) y[i] = bits;
    }

    public static void IntToFloat(ArrayView<int> x, ArrayView<float> y)
    {
        for (long i = First; i < x.Length; i += Step) y[i] = x[i];
    }

    public static void IntToDouble(ArrayView<int> x, ArrayView<double> y)
    {
        for (long i = First; i < x.Length; i += Step) y[i] = x[i];
    }

    public static void FloatToDouble(ArrayView<float> x, ArrayView<double> y)
    {
        for (long i = First; i < x.Length; i += Step) y[i] = x[i];
    }

    public static void DoubleToFloat(ArrayView<double> x, ArrayView<float> y)
    {
        for (long i = First; i < x.Length; i += Step) y[i] = (float)x[i];
    }
}
