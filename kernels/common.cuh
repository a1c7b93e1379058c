// Repa's shared device helpers: 16-bit float storage types and their conversions, warp/block reductions, and the
// REPA_KERNEL registration macro. Our own code: NVRTC 11.8 has no built-in cuda_fp16.h / cuda_bf16.h, and NVIDIA's
// headers are never part of this repository. The same file compiles under NVRTC (device code) and under g++ with
// kernels/emu/cuda_emu.h (the CPU emulator), so everything here is plain C++ plus the CUDA built-ins the emulator
// provides (__shfl_xor_sync, __syncthreads, threadIdx, ...).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define REPA_DEVICE __device__ __forceinline__
#define REPA_UNROLL _Pragma("unroll")
// Kernels need no registration on a real device; static_assert swallows the `;` after REPA_KERNEL(name).
#define REPA_KERNEL(name) static_assert(true, #name)
#else
#define REPA_DEVICE inline
#define REPA_UNROLL _Pragma("GCC unroll 16")
// Under the emulator every kernel registers itself by name (kernels/emu/cuda_emu.h defines REPA_EMU_REGISTER).
#define REPA_KERNEL(name) REPA_EMU_REGISTER(name)
#endif

namespace repa {

// ---- bit casts --------------------------------------------------------------------------------------------------

REPA_DEVICE unsigned int float_bits(float f)
{
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    return __float_as_uint(f);
#else
    unsigned int u;
    __builtin_memcpy(&u, &f, sizeof u);
    return u;
#endif
}

REPA_DEVICE float bits_float(unsigned int u)
{
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    return __uint_as_float(u);
#else
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
#endif
}

// ---- 16-bit storage types ---------------------------------------------------------------------------------------
// Storage only: arithmetic happens in fp32 (load with to_float, compute, store with from_float<T>). Distinct structs
// (not bare unsigned short) so that overloads and templates can tell bf16 from fp16.

/// bfloat16: the top half of an IEEE fp32 (8-bit exponent, 7-bit mantissa).
struct bf16 { unsigned short bits; };

/// IEEE binary16 (5-bit exponent, 10-bit mantissa).
struct f16 { unsigned short bits; };

/// fp32 -> bf16, round to nearest even. NaN stays NaN with its sign and top payload bits, made quiet (a NaN whose
/// payload sits only in the low 16 bits must not round into infinity). Overflow rounds to infinity as IEEE does.
/// Mirrored bit for bit by Repa.Kernels.HalfPrecision.FloatToBf16 (tested there on every interesting pattern).
REPA_DEVICE unsigned short float_to_bf16_bits(float f)
{
    unsigned int u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

/// bf16 -> fp32: exact (append 16 zero bits).
REPA_DEVICE float bf16_bits_to_float(unsigned short h) { return bits_float((unsigned int)h << 16); }

/// fp32 -> fp16, round to nearest even, subnormals included; overflow gives infinity; NaN stays NaN (quiet, sign and
/// top payload bits kept), as System.Half's conversion. Integer arithmetic only, so the result does not depend on
/// the floating-point mode (fast math, flush to zero).
REPA_DEVICE unsigned short float_to_f16_bits(float f)
{
    unsigned int u = float_bits(f);
    unsigned int sign = (u >> 16) & 0x8000u;
    unsigned int a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u | ((a >> 13) & 0x03ffu));
    if (a >= 0x38800000u)
    {
        // Normal in fp16 (|f| >= 2^-14): rebias the exponent (127 -> 15), round the mantissa from 23 to 10 bits;
        // a carry out of the mantissa bumps the exponent, and anything from 65520 up becomes infinity.
        unsigned int r = (a - 0x38000000u + 0x0fffu + ((a >> 13) & 1u)) >> 13;
        return (unsigned short)(sign | (r < 0x7c00u ? r : 0x7c00u));
    }
    // Subnormal in fp16: the value in units of 2^-24 is mantissa * 2^(exponent - 126), rounded to nearest even.
    unsigned int exponent = a >> 23;
    unsigned int mantissa = (a & 0x007fffffu) | (exponent != 0 ? 0x00800000u : 0u);
    unsigned int shift = 126u - (exponent != 0 ? exponent : 1u);
    if (shift > 24u) return (unsigned short)sign;
    unsigned int q = mantissa >> shift;
    unsigned int rest = mantissa & ((1u << shift) - 1u);
    unsigned int half = 1u << (shift - 1u);
    q += (rest > half || (rest == half && (q & 1u))) ? 1u : 0u;
    return (unsigned short)(sign | q);
}

/// fp16 -> fp32: exact (a signalling NaN comes back quiet).
REPA_DEVICE float f16_bits_to_float(unsigned short h)
{
    unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    unsigned int exponent = ((unsigned int)h >> 10) & 0x1fu;
    unsigned int mantissa = (unsigned int)h & 0x03ffu;
    if (exponent == 0x1fu) // infinity, or NaN made quiet with its payload kept (as System.Half does)
        return bits_float(sign | 0x7f800000u | (mantissa != 0u ? 0x00400000u | (mantissa << 13) : 0u));
    if (exponent != 0u) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    float magnitude = (float)mantissa * 5.9604644775390625e-8f; // mantissa * 2^-24, exact
    return sign != 0u ? -magnitude : magnitude;
}

// Loads widen to fp32, stores round from fp32: one spelling for every storage type in templated kernels.
REPA_DEVICE float to_float(float v) { return v; }
REPA_DEVICE float to_float(bf16 v) { return bf16_bits_to_float(v.bits); }
REPA_DEVICE float to_float(f16 v) { return f16_bits_to_float(v.bits); }

template <typename T> REPA_DEVICE T from_float(float v);
template <> REPA_DEVICE float from_float<float>(float v) { return v; }
template <> REPA_DEVICE bf16 from_float<bf16>(float v) { bf16 r; r.bits = float_to_bf16_bits(v); return r; }
template <> REPA_DEVICE f16 from_float<f16>(float v) { f16 r; r.bits = float_to_f16_bits(v); return r; }

// ---- reductions ---------------------------------------------------------------------------------------------------
// Butterfly reductions over the 32 lanes of a warp: every lane ends with the result, and the order of additions is
// fixed, so results are deterministic.

constexpr unsigned int full_warp = 0xffffffffu;

REPA_DEVICE float warp_sum(float v)
{
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(full_warp, v, offset);
    return v;
}

REPA_DEVICE float warp_max(float v)
{
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(full_warp, v, offset));
    return v;
}

/// Sum over all threads of a block (blockDim.x * blockDim.y a multiple of 32, at most 1024); every thread gets the
/// result. scratch: __shared__ float[32] of the caller. Contains __syncthreads: call it from all threads.
REPA_DEVICE float block_sum(float v, float* scratch)
{
    int thread = threadIdx.y * blockDim.x + threadIdx.x;
    int warps = (blockDim.x * blockDim.y) >> 5;
    v = warp_sum(v);
    if ((thread & 31) == 0) scratch[thread >> 5] = v;
    __syncthreads();
    v = (thread & 31) < warps ? scratch[thread & 31] : 0.0f;
    v = warp_sum(v);
    __syncthreads(); // scratch may be reused right after
    return v;
}

/// Maximum over all threads of a block; same contract as block_sum.
REPA_DEVICE float block_max(float v, float* scratch)
{
    int thread = threadIdx.y * blockDim.x + threadIdx.x;
    int warps = (blockDim.x * blockDim.y) >> 5;
    v = warp_max(v);
    if ((thread & 31) == 0) scratch[thread >> 5] = v;
    __syncthreads();
    v = (thread & 31) < warps ? scratch[thread & 31] : bits_float(0xff800000u) /* -inf */;
    v = warp_max(v);
    __syncthreads();
    return v;
}

/// Butterfly sum over the 32 lanes of a warp in fp64 (per-sample losses and the gradient norm accumulate in fp64).
REPA_DEVICE double warp_sum_double(double v)
{
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(full_warp, v, offset);
    return v;
}

/// fp64 sum over all threads of a block; same contract as block_sum, scratch: __shared__ double[32].
REPA_DEVICE double block_sum_double(double v, double* scratch)
{
    int thread = threadIdx.y * blockDim.x + threadIdx.x;
    int warps = (blockDim.x * blockDim.y) >> 5;
    v = warp_sum_double(v);
    if ((thread & 31) == 0) scratch[thread >> 5] = v;
    __syncthreads();
    v = (thread & 31) < warps ? scratch[thread & 31] : 0.0;
    v = warp_sum_double(v);
    __syncthreads();
    return v;
}

// ---- indexing ------------------------------------------------------------------------------------------------------

/// First element of this thread in a grid-stride loop over 64-bit element counts.
REPA_DEVICE long long grid_start() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }

/// The stride of a grid-stride loop.
REPA_DEVICE long long grid_stride() { return (long long)gridDim.x * blockDim.x; }

} // namespace repa
