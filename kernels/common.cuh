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

// ---- tensor-core MMA (warp level) ----------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (sm_80+): a warp computes D = A B + C with A 16 x 16 bf16 (row),
// B 16 x 8 bf16 (col), C and D 16 x 8 fp32. Each lane holds fragments; the layout is the PTX ISA's, section "Matrix
// Fragments for mma.m16n8k16 with floating point type" (PTX ISA 7.x/8.x, under 9.7.13.4 "Matrix multiply-accumulate
// operation using mma instruction"). With g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group):
//   A: 4 x b32, each 2 bf16 (element with the lower column in the low 16 bits):
//      a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]
//   B: 2 x b32 (lower k in the low half): b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]
//   C, D: 4 x f32: c[0] = C[g][2t], c[1] = C[g][2t+1], c[2] = C[g+8][2t], c[3] = C[g+8][2t+1]
// So a lane's D fragment (rows g and g+8, columns 2t and 2t+1 of an 8-column tile) packed into bf16 pairs is exactly
// its A fragment for the next product over those 16 columns (two adjacent n-tiles): the flash-attention trick of
// keeping P in registers. All 32 lanes must execute it together (it is .sync.aligned).
// Under the emulator the same semantics are computed in C++ (mma_bf16_m16n8k16 below): the products of two bf16 are
// exact in fp32 and are added to C in k order in fp32. Tensor cores add with a different (unspecified) order and
// internal rounding, so the two agree to fp32 rounding of a 16-term sum, not bit for bit.
// kernels/emu/tests (emu_mma_kernels.cu, checked by emu_selftest) holds the emulated one against a plain product with
// the layout written out independently from the PTX ISA: the emulator is what vouches for the layout used here.

/// Two bf16 (lower index in the low half) in one b32 register: the operand element type of the MMA.
REPA_DEVICE unsigned int pack_bf16x2(float low, float high)
{
    return (unsigned int)float_to_bf16_bits(low) | ((unsigned int)float_to_bf16_bits(high) << 16);
}

/// Two consecutive bf16 of memory (4-byte aligned) as one b32 register, first element in the low half.
REPA_DEVICE unsigned int load_bf16x2(const bf16* p)
{
    return (unsigned int)p[0].bits | ((unsigned int)p[1].bits << 16);
}

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)

/// d = a b + c on the tensor cores (fragments as above; d may alias c).
REPA_DEVICE void mma_bf16_m16n8k16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                   const float (&c)[4])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                   "f"(c[3]));
}

#else

/// One lane's operands, published to the other lanes of its warp for the emulated MMA.
struct mma_lane_operands
{
    unsigned int a[4];
    unsigned int b[2];
};

/// The exchange table of the emulated MMA: one slot per lane of up to 32 warps. thread_local = the block's shared
/// memory under the emulator (every coroutine of a block runs on one OS thread, one block at a time).
inline mma_lane_operands (&mma_exchange())[32][32]
{
    static thread_local mma_lane_operands table[32][32];
    return table;
}

REPA_DEVICE float mma_a_element(const mma_lane_operands* lanes, int row, int k)
{
    const mma_lane_operands& owner = lanes[(row & 7) * 4 + ((k & 7) >> 1)];
    unsigned int pair = owner.a[(row >> 3) + 2 * (k >> 3)];
    return bf16_bits_to_float((unsigned short)(k & 1 ? pair >> 16 : pair & 0xffffu));
}

REPA_DEVICE float mma_b_element(const mma_lane_operands* lanes, int k, int column)
{
    const mma_lane_operands& owner = lanes[column * 4 + ((k & 7) >> 1)];
    unsigned int pair = owner.b[k >> 3];
    return bf16_bits_to_float((unsigned short)(k & 1 ? pair >> 16 : pair & 0xffffu));
}

/// The emulator's mma.sync m16n8k16 bf16: every lane publishes its A and B fragments, the warp meets (__syncwarp, a
/// warp collective: all 32 lanes must arrive, as .aligned requires), each lane computes its own D fragment from the
/// others' operands, and the warp meets again before anyone may overwrite its slot.
REPA_DEVICE void mma_bf16_m16n8k16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                   const float (&c)[4])
{
    int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    mma_lane_operands* lanes = mma_exchange()[thread >> 5];
    int lane = thread & 31;
    for (int i = 0; i < 4; ++i) lanes[lane].a[i] = a[i];
    for (int i = 0; i < 2; ++i) lanes[lane].b[i] = b[i];
    __syncwarp();
    int g = lane >> 2, t = lane & 3;
    float result[4];
    for (int i = 0; i < 4; ++i)
    {
        int row = g + 8 * (i >> 1), column = 2 * t + (i & 1);
        float sum = c[i];
        for (int k = 0; k < 16; ++k) sum += mma_a_element(lanes, row, k) * mma_b_element(lanes, k, column);
        result[i] = sum;
    }
    __syncwarp();
    for (int i = 0; i < 4; ++i) d[i] = result[i];
}

#endif

// ---- indexing ------------------------------------------------------------------------------------------------------

/// First element of this thread in a grid-stride loop over 64-bit element counts.
REPA_DEVICE long long grid_start() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }

/// The stride of a grid-stride loop.
REPA_DEVICE long long grid_stride() { return (long long)gridDim.x * blockDim.x; }

} // namespace repa
