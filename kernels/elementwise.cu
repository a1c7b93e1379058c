// Element-wise family (IBackend.Elementwise.cs): GELU (tanh) and SiLU forward/backward, broadcast add/sub/mul
// (incl. the bias-add row broadcast), axpby (scale, accumulate) and sums over an axis group (bias gradients,
// broadcast reductions). Semantics are the CPU backend's (Cpu/CpuBackend.Elementwise.cs):
//   - backward kernels ACCUMULATE: dx += f'(x) * dy;
//   - beta == 0 ignores the old contents of y (NaN there does not leak), as cuBLAS does;
//   - every kernel computes in fp32; _bf16 variants store bf16 (rounded to nearest even once, at the store);
//     _bf16_f32 variants read bf16 and accumulate into fp32 (fp32 master gradients).
// Launch: any grid/block shape unless a kernel says otherwise (grid-stride loops over 64-bit counts).
// Parameter types are part of the contract with the C# backend and the emulator: long long for counts and strides,
// int for enums and small sizes, float for scalars.
#include "common.cuh"

namespace repa {

// sqrt(2 / pi) and the cubic coefficient of PyTorch's GELU(approximate="tanh").
constexpr float gelu_c = 0.7978845608028654f;
constexpr float gelu_a = 0.044715f;

REPA_DEVICE float gelu(float v)
{
    return 0.5f * v * (1.0f + tanhf(gelu_c * v * (1.0f + gelu_a * v * v)));
}

REPA_DEVICE float gelu_derivative(float v)
{
    float t = tanhf(gelu_c * v * (1.0f + gelu_a * v * v));
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * gelu_c * (1.0f + 3.0f * gelu_a * v * v);
}

REPA_DEVICE float silu(float v) { return v / (1.0f + expf(-v)); }

REPA_DEVICE float silu_derivative(float v)
{
    float s = 1.0f / (1.0f + expf(-v));
    return s * (1.0f + v * (1.0f - s));
}

template <typename T>
REPA_DEVICE void gelu_forward(const T* __restrict__ x, T* __restrict__ y, long long n)
{
    for (long long i = grid_start(); i < n; i += grid_stride()) y[i] = from_float<T>(gelu(to_float(x[i])));
}

template <typename T>
REPA_DEVICE void gelu_backward(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, long long n)
{
    for (long long i = grid_start(); i < n; i += grid_stride())
        dx[i] = from_float<T>(to_float(dx[i]) + gelu_derivative(to_float(x[i])) * to_float(dy[i]));
}

template <typename T>
REPA_DEVICE void silu_forward(const T* __restrict__ x, T* __restrict__ y, long long n)
{
    for (long long i = grid_start(); i < n; i += grid_stride()) y[i] = from_float<T>(silu(to_float(x[i])));
}

template <typename T>
REPA_DEVICE void silu_backward(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, long long n)
{
    for (long long i = grid_start(); i < n; i += grid_stride())
        dx[i] = from_float<T>(to_float(dx[i]) + silu_derivative(to_float(x[i])) * to_float(dy[i]));
}

// BinaryOp of IBackend: 0 add, 1 sub, 2 mul.
REPA_DEVICE float apply(int op, float a, float b) { return op == 0 ? a + b : op == 1 ? a - b : a * b; }

constexpr int max_broadcast_rank = 6;

/// The general broadcast: y (contiguous) has `rank` axes, stored INNERMOST FIRST: size[0] is the last axis. a and b
/// are read through element strides along those axes, 0 marking a broadcast axis. Passed by value (128 bytes: int,
/// int[6], 4 bytes padding, long long[6], long long[6]); the C# side merges adjacent axes before filling it.
struct BroadcastLayout
{
    int rank;
    int size[max_broadcast_rank];
    long long stride_a[max_broadcast_rank];
    long long stride_b[max_broadcast_rank];
};

template <typename T>
REPA_DEVICE void binary_broadcast(int op, const T* a, const T* b, T* y, BroadcastLayout layout, long long n)
{
    for (long long i = grid_start(); i < n; i += grid_stride())
    {
        long long rest = i, offset_a = 0, offset_b = 0;
        REPA_UNROLL
        for (int d = 0; d < max_broadcast_rank; ++d)
        {
            if (d < layout.rank)
            {
                long long coordinate = rest % layout.size[d];
                rest /= layout.size[d];
                offset_a += coordinate * layout.stride_a[d];
                offset_b += coordinate * layout.stride_b[d];
            }
        }
        y[i] = from_float<T>(apply(op, to_float(a[offset_a]), to_float(b[offset_b])));
    }
}

// a, b and y share one contiguous shape (residual adds, gates). y may alias a or b.
template <typename T>
REPA_DEVICE void binary_same(int op, const T* a, const T* b, T* y, long long n)
{
    for (long long i = grid_start(); i < n; i += grid_stride()) y[i] = from_float<T>(apply(op, to_float(a[i]), to_float(b[i])));
}

// a and y are [rows, columns], b is one row [columns] broadcast over the rows: the bias add. y may alias a.
template <typename T>
REPA_DEVICE void binary_rows(int op, const T* a, const T* b, T* y, long long rows, int columns)
{
    long long n = rows * columns;
    for (long long i = grid_start(); i < n; i += grid_stride())
        y[i] = from_float<T>(apply(op, to_float(a[i]), to_float(b[i % columns])));
}

// y = alpha x + beta y; beta == 0 writes alpha x whatever y held.
template <typename X, typename Y>
REPA_DEVICE void axpby(const X* __restrict__ x, Y* __restrict__ y, long long n, float alpha, float beta)
{
    for (long long i = grid_start(); i < n; i += grid_stride())
    {
        float v = alpha * to_float(x[i]);
        if (beta != 0.0f) v += beta * to_float(y[i]);
        y[i] = from_float<Y>(v);
    }
}

// y[o] = alpha sum_r x[o, r] + beta y[o] (x viewed as [outer, reduce], inner = 1): one block per row (grid-stride over
// rows), blockDim.x a multiple of 32 (at most 1024), blockDim.y = 1. Deterministic: a fixed tree per row.
template <typename X, typename Y>
REPA_DEVICE void sum_rows(const X* __restrict__ x, Y* __restrict__ y, long long outer, int reduce, float alpha, float beta)
{
    __shared__ float scratch[32];
    for (long long o = blockIdx.x; o < outer; o += gridDim.x)
    {
        const X* row = x + o * reduce;
        float s = 0.0f;
        for (int r = threadIdx.x; r < reduce; r += blockDim.x) s += to_float(row[r]);
        s = block_sum(s, scratch);
        if (threadIdx.x == 0) y[o] = from_float<Y>(beta != 0.0f ? alpha * s + beta * to_float(y[o]) : alpha * s);
    }
}

constexpr int sum_tile_columns = 32;
constexpr int sum_tile_rows = 8;

// y[o, i] = alpha sum_r x[o, r, i] + beta y[o, i] for inner > 1: block (32, 8), grid (ceil(inner / 32), any): the 32
// threads of a row read 32 adjacent columns (coalesced), the 8 rows of threads split r and meet in shared memory in a
// fixed order. Deterministic.
template <typename X, typename Y>
REPA_DEVICE void sum_columns(const X* __restrict__ x, Y* __restrict__ y, long long outer, int reduce, int inner,
                             float alpha, float beta)
{
    __shared__ float partial[sum_tile_rows][sum_tile_columns + 1];
    int column = blockIdx.x * sum_tile_columns + threadIdx.x;
    for (long long o = blockIdx.y; o < outer; o += gridDim.y)
    {
        float s = 0.0f;
        if (column < inner)
        {
            const X* base = x + o * reduce * (long long)inner + column;
            for (int r = threadIdx.y; r < reduce; r += sum_tile_rows) s += to_float(base[(long long)r * inner]);
        }
        partial[threadIdx.y][threadIdx.x] = s;
        __syncthreads();
        if (threadIdx.y == 0 && column < inner)
        {
            float total = 0.0f;
            REPA_UNROLL
            for (int k = 0; k < sum_tile_rows; ++k) total += partial[k][threadIdx.x];
            Y* out = y + o * inner + column;
            *out = from_float<Y>(beta != 0.0f ? alpha * total + beta * to_float(*out) : alpha * total);
        }
        __syncthreads();
    }
}

} // namespace repa

using repa::bf16;

// ---- activations ---------------------------------------------------------------------------------------------------

extern "C" __global__ void gelu_forward_f32(const float* __restrict__ x, float* __restrict__ y, long long n)
{
    repa::gelu_forward(x, y, n);
}
REPA_KERNEL(gelu_forward_f32);

extern "C" __global__ void gelu_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, long long n)
{
    repa::gelu_forward(x, y, n);
}
REPA_KERNEL(gelu_forward_bf16);

extern "C" __global__ void gelu_backward_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                             float* __restrict__ dx, long long n)
{
    repa::gelu_backward(x, dy, dx, n);
}
REPA_KERNEL(gelu_backward_f32);

extern "C" __global__ void gelu_backward_bf16(const bf16* __restrict__ x, const bf16* __restrict__ dy,
                                              bf16* __restrict__ dx, long long n)
{
    repa::gelu_backward(x, dy, dx, n);
}
REPA_KERNEL(gelu_backward_bf16);

extern "C" __global__ void silu_forward_f32(const float* __restrict__ x, float* __restrict__ y, long long n)
{
    repa::silu_forward(x, y, n);
}
REPA_KERNEL(silu_forward_f32);

extern "C" __global__ void silu_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, long long n)
{
    repa::silu_forward(x, y, n);
}
REPA_KERNEL(silu_forward_bf16);

extern "C" __global__ void silu_backward_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                             float* __restrict__ dx, long long n)
{
    repa::silu_backward(x, dy, dx, n);
}
REPA_KERNEL(silu_backward_f32);

extern "C" __global__ void silu_backward_bf16(const bf16* __restrict__ x, const bf16* __restrict__ dy,
                                              bf16* __restrict__ dx, long long n)
{
    repa::silu_backward(x, dy, dx, n);
}
REPA_KERNEL(silu_backward_bf16);

// ---- broadcast binary ops (op: 0 add, 1 sub, 2 mul) ----------------------------------------------------------------

extern "C" __global__ void binary_broadcast_f32(int op, const float* a, const float* b, float* y,
                                                repa::BroadcastLayout layout, long long n)
{
    repa::binary_broadcast(op, a, b, y, layout, n);
}
REPA_KERNEL(binary_broadcast_f32);

extern "C" __global__ void binary_broadcast_bf16(int op, const bf16* a, const bf16* b, bf16* y,
                                                 repa::BroadcastLayout layout, long long n)
{
    repa::binary_broadcast(op, a, b, y, layout, n);
}
REPA_KERNEL(binary_broadcast_bf16);

extern "C" __global__ void binary_same_f32(int op, const float* a, const float* b, float* y, long long n)
{
    repa::binary_same(op, a, b, y, n);
}
REPA_KERNEL(binary_same_f32);

extern "C" __global__ void binary_same_bf16(int op, const bf16* a, const bf16* b, bf16* y, long long n)
{
    repa::binary_same(op, a, b, y, n);
}
REPA_KERNEL(binary_same_bf16);

extern "C" __global__ void binary_rows_f32(int op, const float* a, const float* b, float* y, long long rows, int columns)
{
    repa::binary_rows(op, a, b, y, rows, columns);
}
REPA_KERNEL(binary_rows_f32);

extern "C" __global__ void binary_rows_bf16(int op, const bf16* a, const bf16* b, bf16* y, long long rows, int columns)
{
    repa::binary_rows(op, a, b, y, rows, columns);
}
REPA_KERNEL(binary_rows_bf16);

// ---- axpby: y = alpha x + beta y -----------------------------------------------------------------------------------

extern "C" __global__ void axpby_f32(const float* __restrict__ x, float* __restrict__ y, long long n, float alpha, float beta)
{
    repa::axpby(x, y, n, alpha, beta);
}
REPA_KERNEL(axpby_f32);

extern "C" __global__ void axpby_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, long long n, float alpha, float beta)
{
    repa::axpby(x, y, n, alpha, beta);
}
REPA_KERNEL(axpby_bf16);

extern "C" __global__ void axpby_bf16_f32(const bf16* __restrict__ x, float* __restrict__ y, long long n, float alpha,
                                          float beta)
{
    repa::axpby(x, y, n, alpha, beta);
}
REPA_KERNEL(axpby_bf16_f32);

// ---- sums over an axis group: y[o, i] = alpha sum_r x[o, r, i] + beta y[o, i] (fp32 accumulation) -----------------

extern "C" __global__ void sum_rows_f32(const float* __restrict__ x, float* __restrict__ y, long long outer, int reduce,
                                        float alpha, float beta)
{
    repa::sum_rows(x, y, outer, reduce, alpha, beta);
}
REPA_KERNEL(sum_rows_f32);

extern "C" __global__ void sum_rows_bf16_f32(const bf16* __restrict__ x, float* __restrict__ y, long long outer,
                                             int reduce, float alpha, float beta)
{
    repa::sum_rows(x, y, outer, reduce, alpha, beta);
}
REPA_KERNEL(sum_rows_bf16_f32);

extern "C" __global__ void sum_rows_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, long long outer, int reduce,
                                         float alpha, float beta)
{
    repa::sum_rows(x, y, outer, reduce, alpha, beta);
}
REPA_KERNEL(sum_rows_bf16);

extern "C" __global__ void sum_columns_f32(const float* __restrict__ x, float* __restrict__ y, long long outer,
                                           int reduce, int inner, float alpha, float beta)
{
    repa::sum_columns(x, y, outer, reduce, inner, alpha, beta);
}
REPA_KERNEL(sum_columns_f32);

extern "C" __global__ void sum_columns_bf16_f32(const bf16* __restrict__ x, float* __restrict__ y, long long outer,
                                                int reduce, int inner, float alpha, float beta)
{
    repa::sum_columns(x, y, outer, reduce, inner, alpha, beta);
}
REPA_KERNEL(sum_columns_bf16_f32);

extern "C" __global__ void sum_columns_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, long long outer,
                                            int reduce, int inner, float alpha, float beta)
{
    repa::sum_columns(x, y, outer, reduce, inner, alpha, beta);
}
REPA_KERNEL(sum_columns_bf16);
