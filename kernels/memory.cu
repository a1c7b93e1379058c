// Memory family (IBackend.cs and IBackend.Elementwise.cs): fills of 16- and 64-bit patterns (32-bit fills are
// cuMemsetD32), dtype conversions, strided row copies (CopyRows) and axis permutations (Permute). Semantics are the
// CPU backend's (Cpu/CpuBackend.cs, Cpu/CpuBackend.Elementwise.cs):
//   - conversions round to nearest even (fp32 -> bf16/fp16 as common.cuh; fp64 -> fp32 as a C cast; int32 -> fp32
//     as a C cast, i.e. to nearest even); a 16-bit result from fp64 goes through fp32;
//   - copies with beta == 0 are bit copies by element size (any dtype; NaN payloads survive; y's old contents are
//     never read); with beta != 0, y = beta * y + x in fp32 with the product and the sum rounded separately
//     (__fmul_rn / __fadd_rn: no fused multiply-add), as the CPU backend computes it.
// Launch: grid-stride loops over 64-bit counts, any grid/block shape.
#include "common.cuh"

namespace repa::memory {

// ---- conversions --------------------------------------------------------------------------------------------------
// convert_value<To>(from): one spelling per (from, to) pair the kernels below instantiate.

template <typename To> REPA_DEVICE To convert_value(float v) { return from_float<To>(v); }
template <> REPA_DEVICE double convert_value<double>(float v) { return (double)v; }

template <typename To> REPA_DEVICE To convert_value(bf16 v) { return convert_value<To>(to_float(v)); }
template <typename To> REPA_DEVICE To convert_value(f16 v) { return convert_value<To>(to_float(v)); }
template <typename To> REPA_DEVICE To convert_value(double v) { return from_float<To>((float)v); }
template <typename To> REPA_DEVICE To convert_value(int v) { return from_float<To>((float)v); }
template <> REPA_DEVICE double convert_value<double>(int v) { return (double)v; }

template <typename From, typename To>
REPA_DEVICE void convert(const From* __restrict__ x, To* __restrict__ y, long long n)
{
    for (long long i = grid_start(); i < n; i += grid_stride()) y[i] = convert_value<To>(x[i]);
}

// ---- fills -------------------------------------------------------------------------------------------------------

template <typename Bits>
REPA_DEVICE void fill(Bits* __restrict__ y, long long n, Bits value)
{
    for (long long i = grid_start(); i < n; i += grid_stride()) y[i] = value;
}

// ---- strided row copies ------------------------------------------------------------------------------------------
// dst[r * dst_stride + j] (op)= src[r * src_stride + j] for r < rows, j < width (offsets already applied).

template <typename Bits>
REPA_DEVICE void copy_rows(const Bits* __restrict__ src, long long src_stride, Bits* __restrict__ dst, long long dst_stride,
                           int rows, int width)
{
    long long n = (long long)rows * width;
    for (long long i = grid_start(); i < n; i += grid_stride())
    {
        long long r = i / width, j = i - r * width;
        dst[r * dst_stride + j] = src[r * src_stride + j];
    }
}

template <typename T>
REPA_DEVICE void copy_rows_scaled(const T* __restrict__ src, long long src_stride, T* __restrict__ dst,
                                  long long dst_stride, int rows, int width, float beta)
{
    long long n = (long long)rows * width;
    for (long long i = grid_start(); i < n; i += grid_stride())
    {
        long long r = i / width, j = i - r * width;
        T* out = dst + r * dst_stride + j;
        *out = from_float<T>(__fadd_rn(__fmul_rn(beta, to_float(*out)), to_float(src[r * src_stride + j])));
    }
}

// ---- permutations ------------------------------------------------------------------------------------------------

constexpr int max_permute_rank = 6;

/// y (contiguous) has `rank` merged axes stored INNERMOST FIRST (size[0] is y's last axis); stride[d] is the source
/// stride of axis d. Passed by value (80 bytes: int, int[6], 4 bytes padding, long long[6]); the C# side merges axes
/// that stay adjacent before filling it, and splits permutations that still have more than 6 axes.
struct PermuteLayout
{
    int rank;
    int size[max_permute_rank];
    long long stride[max_permute_rank];
};

REPA_DEVICE long long permute_source(long long i, const PermuteLayout& layout)
{
    long long offset = 0;
    REPA_UNROLL
    for (int d = 0; d < max_permute_rank; ++d)
    {
        if (d < layout.rank)
        {
            long long coordinate = i % layout.size[d];
            i /= layout.size[d];
            offset += coordinate * layout.stride[d];
        }
    }
    return offset;
}

template <typename Bits>
REPA_DEVICE void permute(const Bits* __restrict__ x, Bits* __restrict__ y, PermuteLayout layout, long long n)
{
    for (long long i = grid_start(); i < n; i += grid_stride()) y[i] = x[permute_source(i, layout)];
}

template <typename T>
REPA_DEVICE void permute_scaled(const T* __restrict__ x, T* __restrict__ y, PermuteLayout layout, long long n, float beta)
{
    for (long long i = grid_start(); i < n; i += grid_stride())
        y[i] = from_float<T>(__fadd_rn(__fmul_rn(beta, to_float(y[i])), to_float(x[permute_source(i, layout)])));
}

} // namespace repa::memory

using repa::bf16;
using repa::f16;

// ---- fills (32-bit fills use cuMemsetD32) ------------------------------------------------------------------------

extern "C" __global__ void fill_b16(unsigned short* __restrict__ y, long long n, unsigned short value)
{
    repa::memory::fill(y, n, value);
}
REPA_KERNEL(fill_b16);

extern "C" __global__ void fill_b64(unsigned long long* __restrict__ y, long long n, unsigned long long value)
{
    repa::memory::fill(y, n, value);
}
REPA_KERNEL(fill_b64);

// ---- conversions: convert_<from>_<to> ----------------------------------------------------------------------------

extern "C" __global__ void convert_f32_bf16(const float* __restrict__ x, bf16* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_f32_bf16);

extern "C" __global__ void convert_f32_f16(const float* __restrict__ x, f16* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_f32_f16);

extern "C" __global__ void convert_f32_f64(const float* __restrict__ x, double* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_f32_f64);

extern "C" __global__ void convert_bf16_f32(const bf16* __restrict__ x, float* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_bf16_f32);

extern "C" __global__ void convert_bf16_f16(const bf16* __restrict__ x, f16* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_bf16_f16);

extern "C" __global__ void convert_bf16_f64(const bf16* __restrict__ x, double* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_bf16_f64);

extern "C" __global__ void convert_f16_f32(const f16* __restrict__ x, float* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_f16_f32);

extern "C" __global__ void convert_f16_bf16(const f16* __restrict__ x, bf16* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_f16_bf16);

extern "C" __global__ void convert_f16_f64(const f16* __restrict__ x, double* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_f16_f64);

extern "C" __global__ void convert_f64_f32(const double* __restrict__ x, float* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_f64_f32);

extern "C" __global__ void convert_f64_bf16(const double* __restrict__ x, bf16* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_f64_bf16);

extern "C" __global__ void convert_f64_f16(const double* __restrict__ x, f16* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_f64_f16);

extern "C" __global__ void convert_i32_f32(const int* __restrict__ x, float* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_i32_f32);

extern "C" __global__ void convert_i32_f64(const int* __restrict__ x, double* __restrict__ y, long long n)
{
    repa::memory::convert(x, y, n);
}
REPA_KERNEL(convert_i32_f64);

// ---- CopyRows: bit copies by element size (beta == 0), scaled accumulation in fp32 / bf16 ------------------------

extern "C" __global__ void copy_rows_b16(const unsigned short* __restrict__ src, long long src_stride,
                                         unsigned short* __restrict__ dst, long long dst_stride, int rows, int width)
{
    repa::memory::copy_rows(src, src_stride, dst, dst_stride, rows, width);
}
REPA_KERNEL(copy_rows_b16);

extern "C" __global__ void copy_rows_b32(const unsigned int* __restrict__ src, long long src_stride,
                                         unsigned int* __restrict__ dst, long long dst_stride, int rows, int width)
{
    repa::memory::copy_rows(src, src_stride, dst, dst_stride, rows, width);
}
REPA_KERNEL(copy_rows_b32);

extern "C" __global__ void copy_rows_b64(const unsigned long long* __restrict__ src, long long src_stride,
                                         unsigned long long* __restrict__ dst, long long dst_stride, int rows, int width)
{
    repa::memory::copy_rows(src, src_stride, dst, dst_stride, rows, width);
}
REPA_KERNEL(copy_rows_b64);

extern "C" __global__ void copy_rows_scaled_f32(const float* __restrict__ src, long long src_stride,
                                                float* __restrict__ dst, long long dst_stride, int rows, int width,
                                                float beta)
{
    repa::memory::copy_rows_scaled(src, src_stride, dst, dst_stride, rows, width, beta);
}
REPA_KERNEL(copy_rows_scaled_f32);

extern "C" __global__ void copy_rows_scaled_bf16(const bf16* __restrict__ src, long long src_stride,
                                                 bf16* __restrict__ dst, long long dst_stride, int rows, int width,
                                                 float beta)
{
    repa::memory::copy_rows_scaled(src, src_stride, dst, dst_stride, rows, width, beta);
}
REPA_KERNEL(copy_rows_scaled_bf16);

// ---- Permute: bit copies by element size (beta == 0), scaled accumulation in fp32 / bf16 -------------------------

extern "C" __global__ void permute_b16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y,
                                       repa::memory::PermuteLayout layout, long long n)
{
    repa::memory::permute(x, y, layout, n);
}
REPA_KERNEL(permute_b16);

extern "C" __global__ void permute_b32(const unsigned int* __restrict__ x, unsigned int* __restrict__ y,
                                       repa::memory::PermuteLayout layout, long long n)
{
    repa::memory::permute(x, y, layout, n);
}
REPA_KERNEL(permute_b32);

extern "C" __global__ void permute_b64(const unsigned long long* __restrict__ x, unsigned long long* __restrict__ y,
                                       repa::memory::PermuteLayout layout, long long n)
{
    repa::memory::permute(x, y, layout, n);
}
REPA_KERNEL(permute_b64);

extern "C" __global__ void permute_scaled_f32(const float* __restrict__ x, float* __restrict__ y,
                                              repa::memory::PermuteLayout layout, long long n, float beta)
{
    repa::memory::permute_scaled(x, y, layout, n, beta);
}
REPA_KERNEL(permute_scaled_f32);

extern "C" __global__ void permute_scaled_bf16(const bf16* __restrict__ x, bf16* __restrict__ y,
                                               repa::memory::PermuteLayout layout, long long n, float beta)
{
    repa::memory::permute_scaled(x, y, layout, n, beta);
}
REPA_KERNEL(permute_scaled_bf16);
