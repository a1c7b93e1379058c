namespace Repa.Kernels.Cuda;

// The typed launch helper: each argument is copied into the helper's own parameter (a local on the stack), and a
// stack-allocated void*[] points at them, which is what cuLaunchKernel's kernelParams wants. Generic over unmanaged
// types, so the JIT specialises each call site: no boxing, no allocation. Argument types must be the kernel's C types:
// ulong for pointers (CUdeviceptr), long for long long, int, float, ushort for unsigned short, and blittable structs
// laid out as the C struct. One overload per argument count, 1 to 15.
public sealed unsafe partial class CudaBackend
{
    private void Launch(nint function, LaunchShape shape, void** arguments) =>
        Check(Native.CudaDriver.cuLaunchKernel(function, shape.GridX, shape.GridY, 1, shape.BlockX, shape.BlockY, 1,
            shape.SharedBytes, stream, arguments, null), "cuLaunchKernel");

    internal void Launch<T0>(nint function, LaunchShape shape, T0 a0)
        where T0 : unmanaged
    {
        void** arguments = stackalloc void*[1];
        arguments[0] = &a0;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1>(nint function, LaunchShape shape, T0 a0, T1 a1)
        where T0 : unmanaged where T1 : unmanaged
    {
        void** arguments = stackalloc void*[2];
        arguments[0] = &a0;
        arguments[1] = &a1;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged
    {
        void** arguments = stackalloc void*[3];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged
    {
        void** arguments = stackalloc void*[4];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged
    {
        void** arguments = stackalloc void*[5];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged
    {
        void** arguments = stackalloc void*[6];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5, T6>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged where T6 : unmanaged
    {
        void** arguments = stackalloc void*[7];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        arguments[6] = &a6;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5, T6, T7>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged where T6 : unmanaged where T7 : unmanaged
    {
        void** arguments = stackalloc void*[8];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        arguments[6] = &a6;
        arguments[7] = &a7;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5, T6, T7, T8>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged where T6 : unmanaged where T7 : unmanaged where T8 : unmanaged
    {
        void** arguments = stackalloc void*[9];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        arguments[6] = &a6;
        arguments[7] = &a7;
        arguments[8] = &a8;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5, T6, T7, T8, T9>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged where T6 : unmanaged where T7 : unmanaged where T8 : unmanaged where T9 : unmanaged
    {
        void** arguments = stackalloc void*[10];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        arguments[6] = &a6;
        arguments[7] = &a7;
        arguments[8] = &a8;
        arguments[9] = &a9;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged where T6 : unmanaged where T7 : unmanaged where T8 : unmanaged where T9 : unmanaged where T10 : unmanaged
    {
        void** arguments = stackalloc void*[11];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        arguments[6] = &a6;
        arguments[7] = &a7;
        arguments[8] = &a8;
        arguments[9] = &a9;
        arguments[10] = &a10;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10, T11 a11)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged where T6 : unmanaged where T7 : unmanaged where T8 : unmanaged where T9 : unmanaged where T10 : unmanaged where T11 : unmanaged
    {
        void** arguments = stackalloc void*[12];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        arguments[6] = &a6;
        arguments[7] = &a7;
        arguments[8] = &a8;
        arguments[9] = &a9;
        arguments[10] = &a10;
        arguments[11] = &a11;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10, T11 a11, T12 a12)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged where T6 : unmanaged where T7 : unmanaged where T8 : unmanaged where T9 : unmanaged where T10 : unmanaged where T11 : unmanaged where T12 : unmanaged
    {
        void** arguments = stackalloc void*[13];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        arguments[6] = &a6;
        arguments[7] = &a7;
        arguments[8] = &a8;
        arguments[9] = &a9;
        arguments[10] = &a10;
        arguments[11] = &a11;
        arguments[12] = &a12;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10, T11 a11, T12 a12, T13 a13)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged where T6 : unmanaged where T7 : unmanaged where T8 : unmanaged where T9 : unmanaged where T10 : unmanaged where T11 : unmanaged where T12 : unmanaged where T13 : unmanaged
    {
        void** arguments = stackalloc void*[14];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        arguments[6] = &a6;
        arguments[7] = &a7;
        arguments[8] = &a8;
        arguments[9] = &a9;
        arguments[10] = &a10;
        arguments[11] = &a11;
        arguments[12] = &a12;
        arguments[13] = &a13;
        Launch(function, shape, arguments);
    }

    internal void Launch<T0, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14>(nint function, LaunchShape shape, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10, T11 a11, T12 a12, T13 a13, T14 a14)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged where T5 : unmanaged where T6 : unmanaged where T7 : unmanaged where T8 : unmanaged where T9 : unmanaged where T10 : unmanaged where T11 : unmanaged where T12 : unmanaged where T13 : unmanaged where T14 : unmanaged
    {
        void** arguments = stackalloc void*[15];
        arguments[0] = &a0;
        arguments[1] = &a1;
        arguments[2] = &a2;
        arguments[3] = &a3;
        arguments[4] = &a4;
        arguments[5] = &a5;
        arguments[6] = &a6;
        arguments[7] = &a7;
        arguments[8] = &a8;
        arguments[9] = &a9;
        arguments[10] = &a10;
        arguments[11] = &a11;
        arguments[12] = &a12;
        arguments[13] = &a13;
        arguments[14] = &a14;
        Launch(function, shape, arguments);
    }
}
