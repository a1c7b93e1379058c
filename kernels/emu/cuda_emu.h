// CUDA built-ins for g++: this header is force-included (g++ -include) before every kernels/*.cu file so that the very
// sources NVRTC compiles for the GPU also build as C++ and run on the CPU emulator (librepa_cuda_emu.so).
//
// Execution model (see docs/notes/emulator.md): the blocks of a launch run in parallel on a fixed pool of OS threads;
// the threads of one block are cooperative coroutines on one OS thread that switch only at __syncthreads() and at
// warp collectives. Hence:
// - `__shared__` is `thread_local` (a block-scope thread_local is implicitly static): one instance per OS thread, which
//   every coroutine of the block running there sees. Plain `thread_local` rather than `static thread_local` keeps
//   `extern __shared__ T name[];` well formed; the build generates the definition of every such name (one buffer of
//   REPA_EMU_MAX_DYNAMIC_SHARED bytes per OS thread, filled with 0xFF = NaN before each block).
// - threadIdx is per coroutine, blockIdx/blockDim/gridDim per block: thread-local values the scheduler sets.
// - atomics are real atomic read-modify-writes (blocks run concurrently).
// Nothing here is used by NVRTC; the kernels see REPA_CUDA_EMU defined and __CUDA_ARCH__ undefined.
#pragma once
#ifndef REPA_CUDA_EMU_H
#define REPA_CUDA_EMU_H

#define REPA_CUDA_EMU 1

#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#define REPA_EMU_HIDDEN __attribute__((visibility("hidden")))

// ---------------------------------------------------------------------------------------------------------------------
// Declaration specifiers. A function defined in a header that several .cu files include must be inline, static or
// __forceinline__: NVRTC compiles each .cu alone, but the emulator links them all into one library.
#define __global__
#define __device__
#define __host__
#define __constant__
#define __shared__ thread_local
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
#define __device_builtin__
#ifndef __CUDACC_RTC__
#define __CUDACC_EMU__ 1
#endif

// ---------------------------------------------------------------------------------------------------------------------
// Vector types (the built-in ones of vector_types.h that kernels use), with CUDA's alignments.
#define REPA_EMU_VEC2(T, N, A)                                                                                          \
  struct __attribute__((aligned(A))) N##2 { T x, y; };                                                                 \
  static inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define REPA_EMU_VEC3(T, N)                                                                                             \
  struct N##3 { T x, y, z; };                                                                                          \
  static inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define REPA_EMU_VEC4(T, N, A)                                                                                          \
  struct __attribute__((aligned(A))) N##4 { T x, y, z, w; };                                                           \
  static inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }

REPA_EMU_VEC2(float, float, 8)
REPA_EMU_VEC3(float, float)
REPA_EMU_VEC4(float, float, 16)
REPA_EMU_VEC2(int, int, 8)
REPA_EMU_VEC3(int, int)
REPA_EMU_VEC4(int, int, 16)
REPA_EMU_VEC2(unsigned int, uint, 8)
REPA_EMU_VEC3(unsigned int, uint)
REPA_EMU_VEC4(unsigned int, uint, 16)
REPA_EMU_VEC2(unsigned short, ushort, 4)
REPA_EMU_VEC4(unsigned short, ushort, 8)
REPA_EMU_VEC2(short, short, 4)
REPA_EMU_VEC4(short, short, 8)
REPA_EMU_VEC2(unsigned char, uchar, 2)
REPA_EMU_VEC4(unsigned char, uchar, 4)
REPA_EMU_VEC2(char, char, 2)
REPA_EMU_VEC4(char, char, 4)
REPA_EMU_VEC2(double, double, 16)
REPA_EMU_VEC2(long long, longlong, 16)
REPA_EMU_VEC2(unsigned long long, ulonglong, 16)

#undef REPA_EMU_VEC2
#undef REPA_EMU_VEC3
#undef REPA_EMU_VEC4

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

static constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------------------------------
// The emulator's side of the built-ins (implemented in kernels/emu/emu_scheduler.cpp, same library).
namespace repa_emu {
namespace detail {

extern __thread uint3 tl_thread_idx REPA_EMU_HIDDEN;
extern __thread uint3 tl_block_idx REPA_EMU_HIDDEN;
extern __thread uint3 tl_block_dim REPA_EMU_HIDDEN;
extern __thread uint3 tl_grid_dim REPA_EMU_HIDDEN;

enum WarpOp : int {
  kWarpSync = 0,
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kReduceAdd,
  kReduceMin,
  kReduceMax,
  kReduceMinSigned,
  kReduceMaxSigned,
  kReduceAnd,
  kReduceOr,
  kReduceXor,
};
enum BlockOp : int { kSyncThreads = 0, kSyncCount, kSyncAnd, kSyncOr };

// A block barrier: returns the count (kSyncCount), 0/1 (kSyncAnd/Or) or 0.
REPA_EMU_HIDDEN int block_barrier(int op, int predicate);
// A warp collective among the lanes of `mask`; `value` is the lane's 64-bit payload, `arg` the source lane / delta /
// xor mask, `width` the shuffle segment. Returns this lane's 64-bit result.
REPA_EMU_HIDDEN std::uint64_t warp_collective(int op, unsigned mask, std::uint64_t value, int arg, int width);
REPA_EMU_HIDDEN unsigned active_mask();
// Ends the launch with an error (assert, __trap): the block stops, cuLaunchKernel returns CUDA_ERROR_ASSERT.
[[noreturn]] REPA_EMU_HIDDEN void device_trap(const char* what, const char* file, int line);
REPA_EMU_HIDDEN long long clock_ns();

template <class T>
inline std::uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
inline T from_bits(std::uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// Kernel registry: REPA_EMU_REGISTER(name) records the kernel's address and how to call it with the `void** params`
// of cuLaunchKernel (params[i] points at argument i, as in CUDA).
using RawKernel = void (*)();
using KernelInvoker = void (*)(RawKernel fn, void** params);
struct KernelInfo {
  const char* name;
  RawKernel fn;
  KernelInvoker invoke;
  int param_count;
  const std::size_t* param_sizes;
  const std::size_t* param_aligns;
};
REPA_EMU_HIDDEN void register_kernel(const KernelInfo& info);

template <class... Args>
struct KernelThunk {
  template <std::size_t... I>
  static void call(void (*fn)(Args...), void** params, std::index_sequence<I...>) {
    (void)params;
    fn(*static_cast<std::remove_cv_t<Args>*>(params[I])...);
  }
  static void invoke(RawKernel raw, void** params) {
    call(reinterpret_cast<void (*)(Args...)>(raw), params, std::index_sequence_for<Args...>{});
  }
  static constexpr std::size_t sizes[sizeof...(Args) + 1] = {sizeof(Args)..., 0};
  static constexpr std::size_t aligns[sizeof...(Args) + 1] = {alignof(Args)..., 1};
};

struct KernelRegistrar {
  template <class... Args>
  KernelRegistrar(const char* name, void (*fn)(Args...)) {
    register_kernel(KernelInfo{name, reinterpret_cast<RawKernel>(fn), &KernelThunk<Args...>::invoke,
                               static_cast<int>(sizeof...(Args)), KernelThunk<Args...>::sizes,
                               KernelThunk<Args...>::aligns});
  }
};

// Dynamic shared memory: the generated file defines every `extern __shared__` name as REPA_EMU_MAX_DYNAMIC_SHARED
// bytes per OS thread (the opt-in maximum of a block on sm_90) and registers it here so that the runtime can poison
// it before each block.
#define REPA_EMU_MAX_DYNAMIC_SHARED (227 * 1024)
using SharedAddress = void* (*)();
REPA_EMU_HIDDEN void register_dynamic_shared(const char* name, SharedAddress address);

}  // namespace detail
}  // namespace repa_emu

// `REPA_EMU_REGISTER(name);` after `extern "C" __global__ void name(...) {...}` makes `name` launchable through
// cuModuleGetFunction/cuLaunchKernel (kernels/common.cuh's REPA_KERNEL(name) expands to it under the emulator).
#define REPA_EMU_REGISTER(name) \
  static const ::repa_emu::detail::KernelRegistrar repa_emu_registrar_##name(#name, &name)

#define threadIdx (static_cast<const uint3&>(::repa_emu::detail::tl_thread_idx))
#define blockIdx (static_cast<const uint3&>(::repa_emu::detail::tl_block_idx))
#define blockDim (static_cast<const uint3&>(::repa_emu::detail::tl_block_dim))
#define gridDim (static_cast<const uint3&>(::repa_emu::detail::tl_grid_dim))

// ---------------------------------------------------------------------------------------------------------------------
// Synchronisation.
static inline void __syncthreads() { ::repa_emu::detail::block_barrier(::repa_emu::detail::kSyncThreads, 0); }
static inline int __syncthreads_count(int p) { return ::repa_emu::detail::block_barrier(::repa_emu::detail::kSyncCount, p); }
static inline int __syncthreads_and(int p) { return ::repa_emu::detail::block_barrier(::repa_emu::detail::kSyncAnd, p); }
static inline int __syncthreads_or(int p) { return ::repa_emu::detail::block_barrier(::repa_emu::detail::kSyncOr, p); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::repa_emu::detail::warp_collective(::repa_emu::detail::kWarpSync, mask, 0, 0, 32);
}
// Coroutines of a block interleave only at barriers and blocks share memory through the hardware's coherent caches, so
// a sequentially consistent fence is all a fence can mean here.
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline unsigned __activemask() { return ::repa_emu::detail::active_mask(); }
static inline void __nanosleep(unsigned) {}
static inline long long clock64() { return ::repa_emu::detail::clock_ns(); }
[[noreturn]] static inline void __trap() { ::repa_emu::detail::device_trap("__trap()", __FILE__, __LINE__); }
[[noreturn]] static inline void __brkpt() { ::repa_emu::detail::device_trap("__brkpt()", __FILE__, __LINE__); }

#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) ((e) ? (void)0 : ::repa_emu::detail::device_trap("assertion `" #e "` failed", __FILE__, __LINE__))
#endif

// ---------------------------------------------------------------------------------------------------------------------
// Warp shuffles and votes (any trivially copyable type of at most 8 bytes; CUDA has int, unsigned, long long, float,
// double ...).
template <class T>
static inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
  using namespace ::repa_emu::detail;
  return from_bits<T>(warp_collective(kShflIdx, mask, to_bits(var), srcLane, width));
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  using namespace ::repa_emu::detail;
  return from_bits<T>(warp_collective(kShflUp, mask, to_bits(var), static_cast<int>(delta), width));
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  using namespace ::repa_emu::detail;
  return from_bits<T>(warp_collective(kShflDown, mask, to_bits(var), static_cast<int>(delta), width));
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
  using namespace ::repa_emu::detail;
  return from_bits<T>(warp_collective(kShflXor, mask, to_bits(var), laneMask, width));
}
static inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(
      ::repa_emu::detail::warp_collective(::repa_emu::detail::kBallot, mask, predicate != 0, 0, 32));
}
static inline int __any_sync(unsigned mask, int predicate) {
  return static_cast<int>(::repa_emu::detail::warp_collective(::repa_emu::detail::kAny, mask, predicate != 0, 0, 32));
}
static inline int __all_sync(unsigned mask, int predicate) {
  return static_cast<int>(::repa_emu::detail::warp_collective(::repa_emu::detail::kAll, mask, predicate != 0, 0, 32));
}
#define REPA_EMU_REDUCE(NAME, T, OP)                                                                                    \
  static inline T NAME(unsigned mask, T value) {                                                                       \
    return static_cast<T>(::repa_emu::detail::warp_collective(::repa_emu::detail::OP, mask,                            \
                                                              static_cast<std::uint32_t>(value), 0, 32));              \
  }
REPA_EMU_REDUCE(__reduce_add_sync, unsigned, kReduceAdd)
REPA_EMU_REDUCE(__reduce_add_sync, int, kReduceAdd)
REPA_EMU_REDUCE(__reduce_min_sync, unsigned, kReduceMin)
REPA_EMU_REDUCE(__reduce_min_sync, int, kReduceMinSigned)
REPA_EMU_REDUCE(__reduce_max_sync, unsigned, kReduceMax)
REPA_EMU_REDUCE(__reduce_max_sync, int, kReduceMaxSigned)
REPA_EMU_REDUCE(__reduce_and_sync, unsigned, kReduceAnd)
REPA_EMU_REDUCE(__reduce_or_sync, unsigned, kReduceOr)
REPA_EMU_REDUCE(__reduce_xor_sync, unsigned, kReduceXor)
#undef REPA_EMU_REDUCE

// ---------------------------------------------------------------------------------------------------------------------
// Atomics: sequentially consistent read-modify-writes on the address (global or shared memory alike). They return the
// old value, as in CUDA.
namespace repa_emu {
namespace detail {
template <class T, class F>
inline T atomic_update(T* address, F update) {
  T old = __atomic_load_n(address, __ATOMIC_SEQ_CST);
  T desired = update(old);
  while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
    desired = update(old);
  return old;
}
template <class F>
inline float atomic_update_float(float* address, F update) {
  auto* bits = reinterpret_cast<std::uint32_t*>(address);
  std::uint32_t old = __atomic_load_n(bits, __ATOMIC_SEQ_CST), desired;
  do {
    float f;
    std::memcpy(&f, &old, 4);
    f = update(f);
    std::memcpy(&desired, &f, 4);
  } while (!__atomic_compare_exchange_n(bits, &old, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
  float result;
  std::memcpy(&result, &old, 4);
  return result;
}
template <class F>
inline double atomic_update_double(double* address, F update) {
  auto* bits = reinterpret_cast<std::uint64_t*>(address);
  std::uint64_t old = __atomic_load_n(bits, __ATOMIC_SEQ_CST), desired;
  do {
    double f;
    std::memcpy(&f, &old, 8);
    f = update(f);
    std::memcpy(&desired, &f, 8);
  } while (!__atomic_compare_exchange_n(bits, &old, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
  double result;
  std::memcpy(&result, &old, 8);
  return result;
}
}  // namespace detail
}  // namespace repa_emu

#define REPA_EMU_ATOMIC_INT(T)                                                                                          \
  static inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }                          \
  static inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }                          \
  static inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }                        \
  static inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }                          \
  static inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }                            \
  static inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }                          \
  static inline T atomicMin(T* a, T v) {                                                                               \
    return ::repa_emu::detail::atomic_update(a, [v](T o) { return o < v ? o : v; });                                  \
  }                                                                                                                    \
  static inline T atomicMax(T* a, T v) {                                                                               \
    return ::repa_emu::detail::atomic_update(a, [v](T o) { return o > v ? o : v; });                                   \
  }                                                                                                                    \
  static inline T atomicCAS(T* a, T compare, T v) {                                                                    \
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                            \
    return compare;                                                                                                    \
  }
REPA_EMU_ATOMIC_INT(int)
REPA_EMU_ATOMIC_INT(unsigned int)
REPA_EMU_ATOMIC_INT(unsigned long long)
REPA_EMU_ATOMIC_INT(long long)
#undef REPA_EMU_ATOMIC_INT
static inline unsigned short atomicCAS(unsigned short* a, unsigned short compare, unsigned short v) {
  __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
static inline float atomicAdd(float* a, float v) {
  return ::repa_emu::detail::atomic_update_float(a, [v](float o) { return o + v; });
}
static inline double atomicAdd(double* a, double v) {
  return ::repa_emu::detail::atomic_update_double(a, [v](double o) { return o + v; });
}
static inline float atomicExch(float* a, float v) {
  return ::repa_emu::detail::atomic_update_float(a, [v](float) { return v; });
}
static inline unsigned atomicInc(unsigned* a, unsigned limit) {
  return ::repa_emu::detail::atomic_update(a, [limit](unsigned o) { return o >= limit ? 0u : o + 1u; });
}
static inline unsigned atomicDec(unsigned* a, unsigned limit) {
  return ::repa_emu::detail::atomic_update(a, [limit](unsigned o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}

// ---------------------------------------------------------------------------------------------------------------------
// Bit reinterpretation and integer intrinsics.
static inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
static inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, 4); return x; }
static inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
static inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
static inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }
static inline int __double2hiint(double x) { return static_cast<int>(__double_as_longlong(x) >> 32); }
static inline int __double2loint(double x) { return static_cast<int>(__double_as_longlong(x) & 0xffffffff); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long bytes = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((bytes >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
static inline int __mul24(int a, int b) { return a * b; }
static inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
static inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
static inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
// Cache-hinted loads and stores are plain accesses here.
template <class T>
static inline T __ldg(const T* p) { return *p; }
template <class T>
static inline T __ldca(const T* p) { return *p; }
template <class T>
static inline T __ldcg(const T* p) { return *p; }
template <class T>
static inline T __ldcs(const T* p) { return *p; }
template <class T>
static inline T __ldlu(const T* p) { return *p; }
template <class T>
static inline T __ldcv(const T* p) { return *p; }
template <class T>
static inline void __stwb(T* p, T v) { *p = v; }
template <class T>
static inline void __stcg(T* p, T v) { *p = v; }
template <class T>
static inline void __stcs(T* p, T v) { *p = v; }
template <class T>
static inline void __stwt(T* p, T v) { *p = v; }

// CUDA's classification functions and abs overloads are in the global namespace.
using std::abs;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

// min/max overloads of CUDA's math_functions (the host's <cmath> has fminf/fmaxf but no min/max in ::).
#define REPA_EMU_MINMAX(T)                                                                                              \
  static inline T min(T a, T b) { return b < a ? b : a; }                                                              \
  static inline T max(T a, T b) { return a < b ? b : a; }
REPA_EMU_MINMAX(int)
REPA_EMU_MINMAX(unsigned int)
REPA_EMU_MINMAX(long)
REPA_EMU_MINMAX(unsigned long)
REPA_EMU_MINMAX(long long)
REPA_EMU_MINMAX(unsigned long long)
#undef REPA_EMU_MINMAX
static inline float min(float a, float b) { return std::fmin(a, b); }
static inline float max(float a, float b) { return std::fmax(a, b); }
static inline double min(double a, double b) { return std::fmin(a, b); }
static inline double max(double a, double b) { return std::fmax(a, b); }
static inline double min(float a, double b) { return std::fmin(static_cast<double>(a), b); }
static inline double max(float a, double b) { return std::fmax(static_cast<double>(a), b); }
static inline double min(double a, float b) { return std::fmin(a, static_cast<double>(b)); }
static inline double max(double a, float b) { return std::fmax(a, static_cast<double>(b)); }
static inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
static inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
static inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
static inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
static inline unsigned umin(unsigned a, unsigned b) { return min(a, b); }
static inline unsigned umax(unsigned a, unsigned b) { return max(a, b); }
static inline long long llmin(long long a, long long b) { return min(a, b); }
static inline long long llmax(long long a, long long b) { return max(a, b); }
static inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return min(a, b); }
static inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return max(a, b); }

// ---------------------------------------------------------------------------------------------------------------------
// Math intrinsics. The fast approximations of the GPU (__expf, __logf, __fdividef ...) are the exact <cmath>
// functions here: results agree with the GPU to the intrinsics' documented error, not bit for bit.
// glibc's <math.h> already declares __expf, __logf, ... (C linkage, its internal names of the same functions), so
// these are macros onto the standard functions rather than definitions.
#define __expf(x) (::expf(x))
#define __exp10f(x) (::exp10f(x))
#define __logf(x) (::logf(x))
#define __log2f(x) (::log2f(x))
#define __log10f(x) (::log10f(x))
#define __powf(x, y) (::powf((x), (y)))
#define __sinf(x) (::sinf(x))
#define __cosf(x) (::cosf(x))
#define __tanf(x) (::tanf(x))
#define __tanhf(x) (::tanhf(x))
#define __sincosf(x, s, c) (::sincosf((x), (s), (c)))
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return std::sqrt(x); }
static inline float __frsqrt_rn(float x) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(x))); }
static inline float rsqrtf(float x) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(x))); }
static inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
static inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
static inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dsqrt_rn(double x) { return std::sqrt(x); }
static inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }
static inline float sinpif(float x) { return static_cast<float>(std::sin(M_PI * static_cast<double>(x))); }
static inline float cospif(float x) { return static_cast<float>(std::cos(M_PI * static_cast<double>(x))); }
static inline double sinpi(double x) { return std::sin(M_PI * x); }
static inline double cospi(double x) { return std::cos(M_PI * x); }
static inline float normcdff(float x) { return 0.5f * std::erfc(-x * static_cast<float>(M_SQRT1_2)); }
static inline double normcdf(double x) { return 0.5 * std::erfc(-x * M_SQRT1_2); }

// Conversions with explicit rounding (the host's default rounding mode is round-to-nearest-even).
static inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
static inline int __float2int_rz(float x) { return static_cast<int>(x); }
static inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
static inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
static inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
static inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
static inline long long __float2ll_rn(float x) { return static_cast<long long>(std::nearbyint(x)); }
static inline long long __float2ll_rz(float x) { return static_cast<long long>(x); }
static inline float __int2float_rn(int x) { return static_cast<float>(x); }
static inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
static inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
static inline float __double2float_rn(double x) { return static_cast<float>(x); }
static inline int __double2int_rn(double x) { return static_cast<int>(std::nearbyint(x)); }
static inline int __double2int_rz(double x) { return static_cast<int>(x); }

// ---------------------------------------------------------------------------------------------------------------------
// bf16 / fp16 <-> fp32 on raw 16-bit patterns, for the emulator's own code (GemmEx) and tests. Kernels get their
// bf16/half types from kernels/common.cuh (the same code under NVRTC and here), so nothing of cuda_fp16.h /
// cuda_bf16.h is defined in the global namespace.
namespace repa_emu {
// bf16 is the top half of an fp32.
inline float bf16_bits_to_float(std::uint16_t h) {
  const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest, ties to even; NaN stays a (quiet) NaN.
inline std::uint16_t float_to_bf16_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}
inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t u;
  if (exponent == 0x1fu) {
    u = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    u = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    u = sign;
  } else {  // subnormal half: normalise
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    u = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest, ties to even, with overflow to infinity and gradual underflow.
inline std::uint16_t float_to_half_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);
  if (magnitude >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (magnitude >= 0x38800000u) {                                                   // normal half
    std::uint32_t v = magnitude - (112u << 23);
    v += 0xfffu + ((v >> 13) & 1u);
    return static_cast<std::uint16_t>(sign | (v >> 13));
  }
  if (magnitude < 0x33000000u) return sign;  // below half of the smallest subnormal
  const std::uint32_t exponent = magnitude >> 23;
  const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - exponent;  // value = mantissa * 2^(exponent - 150) = v * 2^-24
  std::uint32_t v = mantissa >> shift;
  const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1u);
  if (rest > halfway || (rest == halfway && (v & 1u))) ++v;
  return static_cast<std::uint16_t>(sign | v);
}
}  // namespace repa_emu

#endif  // REPA_CUDA_EMU_H
