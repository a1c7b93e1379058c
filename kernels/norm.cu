// Norm family (IBackend.Norm.cs): LayerNorm over the last axis fused with its optional affine and the adaLN modulation
// (forward and backward), and the adaLN gated residual (forward and backward). Semantics are the CPU backend's
// (Cpu/CpuBackend.Norm.cs):
//   y = (LN(x) * weight + bias) * (1 + scale[g]) + shift[g], g = row / rows_per_group, biased variance, two-pass
//   statistics; mean and rstd = 1 / sqrt(var + eps) saved per row; any of weight, bias, shift, scale may be null;
//   backward kernels ACCUMULATE into every non-null gradient.
// Variants: _f32 is fp32 throughout. _bf16 is the mixed-precision one: x, y, shift, scale, gate and the gradients of
// those activations are bf16; weight/bias and their gradients (master weights), mean/rstd and every sum are fp32.
// Launch shapes (the C# side chooses them; nothing here assumes more than what each kernel states):
//   warp-per-row kernels: blockDim = (a multiple of 32, 1, 1), any grid; warps stride over the rows.
//   column-tile kernels: blockDim = (32, 8, 1), grid = (ceil(dim / 32), any); 32 adjacent columns per block, its 8
//   thread rows split the rows of one chunk and meet in shared memory in a fixed order (deterministic, no atomics).
//   row kernels (gated_residual_forward): one block per row, any blockDim.x, any grid.
#include "common.cuh"

namespace repa {
namespace norm {

constexpr int tile_columns = 32;
constexpr int tile_rows = 8;

REPA_DEVICE long long warp_index() { return grid_start() >> 5; }
REPA_DEVICE long long warp_count() { return grid_stride() >> 5; }
REPA_DEVICE int lane_index() { return (int)(threadIdx.x & 31); }

// The adaLN coefficients of column j of one row: y = xhat * a + c, a = weight (1 + scale), c = bias (1 + scale) + shift,
// the CPU's folding (absent pieces are 1 for weight/scale and 0 for bias/shift).
template <typename T, typename P>
REPA_DEVICE void modulation(const P* weight, const P* bias, const T* shift_row, const T* scale_row, int j, float& a, float& c)
{
    a = scale_row != nullptr ? to_float(scale_row[j]) + 1.0f : 1.0f;
    c = bias != nullptr ? to_float(bias[j]) * a : 0.0f;
    if (shift_row != nullptr) c += to_float(shift_row[j]);
    if (weight != nullptr) a *= to_float(weight[j]);
}

// One warp per row; the row is read three times (mean, centred sum of squares, output), the second and third from L1.
template <typename T, typename P>
REPA_DEVICE void layer_norm_forward(const T* x, const P* weight, const P* bias, const T* shift, const T* scale, T* y,
                                    float* mean, float* rstd, long long rows, int dim, int rows_per_group, float eps)
{
    int lane = lane_index();
    float inv_dim = 1.0f / (float)dim;
    bool modulated = shift != nullptr || scale != nullptr;
    for (long long r = warp_index(); r < rows; r += warp_count())
    {
        const T* xr = x + r * dim;
        float s = 0.0f;
        for (int j = lane; j < dim; j += 32) s += to_float(xr[j]);
        float mu = warp_sum(s) * inv_dim;
        float q = 0.0f;
        for (int j = lane; j < dim; j += 32)
        {
            float d = to_float(xr[j]) - mu;
            q += d * d;
        }
        float rs = 1.0f / sqrtf(warp_sum(q) * inv_dim + eps);
        if (lane == 0)
        {
            mean[r] = mu;
            rstd[r] = rs;
        }
        long long g = modulated ? r / rows_per_group : 0;
        const T* shift_row = shift != nullptr ? shift + g * dim : nullptr;
        const T* scale_row = scale != nullptr ? scale + g * dim : nullptr;
        T* yr = y + r * dim;
        for (int j = lane; j < dim; j += 32)
        {
            float a, c;
            modulation(weight, bias, shift_row, scale_row, j, a, c);
            yr[j] = from_float<T>((to_float(xr[j]) - mu) * rs * a + c);
        }
    }
}

// dx += rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy (1 + scale[g]) weight. One warp per row.
template <typename T, typename P>
REPA_DEVICE void layer_norm_backward_input(const T* x, const P* weight, const T* scale, const float* mean, const float* rstd,
                                           const T* dy, T* dx, long long rows, int dim, int rows_per_group)
{
    int lane = lane_index();
    float inv_dim = 1.0f / (float)dim;
    for (long long r = warp_index(); r < rows; r += warp_count())
    {
        const T* xr = x + r * dim;
        const T* dyr = dy + r * dim;
        const T* scale_row = scale != nullptr ? scale + r / rows_per_group * dim : nullptr;
        float mu = mean[r], rs = rstd[r];
        float s1 = 0.0f, s2 = 0.0f;
        for (int j = lane; j < dim; j += 32)
        {
            float xh = (to_float(xr[j]) - mu) * rs;
            float d = to_float(dyr[j]);
            float t = scale_row != nullptr ? d * to_float(scale_row[j]) + d : d;
            if (weight != nullptr) t *= to_float(weight[j]);
            s1 += t;
            s2 += t * xh;
        }
        float m1 = warp_sum(s1) * inv_dim;
        float m2 = warp_sum(s2) * inv_dim;
        T* dxr = dx + r * dim;
        for (int j = lane; j < dim; j += 32)
        {
            float xh = (to_float(xr[j]) - mu) * rs;
            float d = to_float(dyr[j]);
            float t = scale_row != nullptr ? d * to_float(scale_row[j]) + d : d;
            if (weight != nullptr) t *= to_float(weight[j]);
            dxr[j] = from_float<T>(to_float(dxr[j]) + ((t - m1) + xh * -m2) * rs);
        }
    }
}

// Sums over chunks of rows_per_chunk consecutive rows, 32 columns per block:
//   dweight_partial[c, j] = sum dz xhat, dbias_partial[c, j] = sum dz (dz = dy (1 + scale[g])), overwritten;
//   dshift[g, j] += sum dy, dscale[g, j] += sum dy (xhat weight + bias), accumulated, which needs every chunk to be
//   exactly one group (rows_per_chunk == rows_per_group) when dshift or dscale is requested.
// The partials are then added into dweight/dbias by sum_columns_f32 (elementwise.cu) with outer = 1,
// reduce = chunks, inner = dim, alpha = beta = 1: a fixed order, so the whole backward is deterministic.
template <typename T, typename P>
REPA_DEVICE void layer_norm_backward_params(const T* x, const P* weight, const P* bias, const T* scale, const float* mean,
                                            const float* rstd, const T* dy, float* dweight_partial, float* dbias_partial,
                                            T* dshift, T* dscale, long long rows, int dim, int rows_per_group,
                                            int rows_per_chunk)
{
    __shared__ float partial[4][tile_rows][tile_columns + 1];
    int column = blockIdx.x * tile_columns + threadIdx.x;
    long long chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
    bool grouped = scale != nullptr || dshift != nullptr || dscale != nullptr;
    for (long long c = blockIdx.y; c < chunks; c += gridDim.y)
    {
        long long first = c * rows_per_chunk;
        long long end = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
        float sum_dw = 0.0f, sum_db = 0.0f, sum_shift = 0.0f, sum_scale = 0.0f;
        if (column < dim)
        {
            float w = weight != nullptr ? to_float(weight[column]) : 1.0f;
            float b = bias != nullptr ? to_float(bias[column]) : 0.0f;
            for (long long r = first + threadIdx.y; r < end; r += tile_rows)
            {
                long long at = r * dim + column;
                float xh = (to_float(x[at]) - mean[r]) * rstd[r];
                float d = to_float(dy[at]);
                sum_shift += d;
                sum_scale += d * (xh * w + b);
                float dz = d;
                if (scale != nullptr) dz = d * to_float(scale[r / rows_per_group * dim + column]) + d;
                sum_dw += dz * xh;
                sum_db += dz;
            }
        }
        partial[0][threadIdx.y][threadIdx.x] = sum_dw;
        partial[1][threadIdx.y][threadIdx.x] = sum_db;
        partial[2][threadIdx.y][threadIdx.x] = sum_shift;
        partial[3][threadIdx.y][threadIdx.x] = sum_scale;
        __syncthreads();
        // Thread row k < 4 folds sum k, in a fixed order over the 8 thread rows.
        if (threadIdx.y < 4 && column < dim)
        {
            int k = threadIdx.y;
            float total = 0.0f;
            REPA_UNROLL
            for (int i = 0; i < tile_rows; ++i) total += partial[k][i][threadIdx.x];
            long long g = grouped ? first / rows_per_group : 0;
            if (k == 0 && dweight_partial != nullptr) dweight_partial[c * dim + column] = total;
            if (k == 1 && dbias_partial != nullptr) dbias_partial[c * dim + column] = total;
            if (k == 2 && dshift != nullptr) dshift[g * dim + column] = from_float<T>(to_float(dshift[g * dim + column]) + total);
            if (k == 3 && dscale != nullptr) dscale[g * dim + column] = from_float<T>(to_float(dscale[g * dim + column]) + total);
        }
        __syncthreads();
    }
}

// output = x + gate[g] * y; output may alias x. One block per row (grid-stride over rows), threads over columns: no
// 64-bit division per element.
template <typename T>
REPA_DEVICE void gated_residual_forward(const T* x, const T* y, const T* gate, T* output, long long rows, int dim,
                                        int rows_per_group)
{
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const T* gate_row = gate + r / rows_per_group * dim;
        long long base = r * dim;
        for (int j = threadIdx.x; j < dim; j += blockDim.x)
            output[base + j] = from_float<T>(to_float(y[base + j]) * to_float(gate_row[j]) + to_float(x[base + j]));
    }
}

// dx += dout; dy += gate[g] dout; dgate[g] += sum over the group's rows of y dout. One block per (32 columns, group):
// grid.y strides over the groups. dx may alias dy: each thread updates dx then dy of its own elements, in that order.
template <typename T>
REPA_DEVICE void gated_residual_backward(const T* y, const T* gate, const T* dout, T* dx, T* dy, T* dgate, long long rows,
                                         int dim, int rows_per_group)
{
    __shared__ float partial[tile_rows][tile_columns + 1];
    int column = blockIdx.x * tile_columns + threadIdx.x;
    long long groups = rows / rows_per_group;
    for (long long g = blockIdx.y; g < groups; g += gridDim.y)
    {
        float sum = 0.0f;
        if (column < dim)
        {
            float gv = to_float(gate[g * dim + column]);
            for (long long r = g * rows_per_group + threadIdx.y; r < (g + 1) * rows_per_group; r += tile_rows)
            {
                long long at = r * dim + column;
                float d = to_float(dout[at]);
                if (dx != nullptr) dx[at] = from_float<T>(to_float(dx[at]) + d);
                if (dy != nullptr) dy[at] = from_float<T>(d * gv + to_float(dy[at]));
                if (dgate != nullptr) sum += to_float(y[at]) * d;
            }
        }
        if (dgate == nullptr) continue; // uniform over the block: no barrier is skipped by some threads only
        partial[threadIdx.y][threadIdx.x] = sum;
        __syncthreads();
        if (threadIdx.y == 0 && column < dim)
        {
            float total = 0.0f;
            REPA_UNROLL
            for (int i = 0; i < tile_rows; ++i) total += partial[i][threadIdx.x];
            dgate[g * dim + column] = from_float<T>(to_float(dgate[g * dim + column]) + total);
        }
        __syncthreads();
    }
}

} // namespace norm
} // namespace repa

using repa::bf16;

// ---- LayerNorm (+ affine, + adaLN modulation) ---------------------------------------------------------------------
// weight, bias, shift, scale: null when absent. rows_per_group: rows per shift/scale row (ignored when both are null).

extern "C" __global__ void layer_norm_forward_f32(const float* x, const float* weight, const float* bias, const float* shift,
                                                  const float* scale, float* y, float* mean, float* rstd, long long rows,
                                                  int dim, int rows_per_group, float eps)
{
    repa::norm::layer_norm_forward(x, weight, bias, shift, scale, y, mean, rstd, rows, dim, rows_per_group, eps);
}
REPA_KERNEL(layer_norm_forward_f32);

extern "C" __global__ void layer_norm_forward_bf16(const bf16* x, const float* weight, const float* bias, const bf16* shift,
                                                   const bf16* scale, bf16* y, float* mean, float* rstd, long long rows,
                                                   int dim, int rows_per_group, float eps)
{
    repa::norm::layer_norm_forward(x, weight, bias, shift, scale, y, mean, rstd, rows, dim, rows_per_group, eps);
}
REPA_KERNEL(layer_norm_forward_bf16);

// The input gradient (dx non-null); launch only when dx is requested.
extern "C" __global__ void layer_norm_backward_input_f32(const float* x, const float* weight, const float* scale,
                                                         const float* mean, const float* rstd, const float* dy, float* dx,
                                                         long long rows, int dim, int rows_per_group)
{
    repa::norm::layer_norm_backward_input(x, weight, scale, mean, rstd, dy, dx, rows, dim, rows_per_group);
}
REPA_KERNEL(layer_norm_backward_input_f32);

extern "C" __global__ void layer_norm_backward_input_bf16(const bf16* x, const float* weight, const bf16* scale,
                                                          const float* mean, const float* rstd, const bf16* dy, bf16* dx,
                                                          long long rows, int dim, int rows_per_group)
{
    repa::norm::layer_norm_backward_input(x, weight, scale, mean, rstd, dy, dx, rows, dim, rows_per_group);
}
REPA_KERNEL(layer_norm_backward_input_bf16);

// The parameter and modulation gradients; launch when any of dweight, dbias, dshift, dscale is requested, with
// dweight_partial / dbias_partial = fp32 scratch [chunks, dim] (null when that gradient is not requested), then fold
// them with sum_columns_f32. bias is read only for dscale (null = no bias). blockDim must be (32, 8): the launch bounds
// (256 threads, 4 blocks per SM) keep it at 64 registers or fewer (82 without).
extern "C" __global__ void __launch_bounds__(256, 4) layer_norm_backward_params_f32(
    const float* x, const float* weight, const float* bias, const float* scale, const float* mean, const float* rstd,
    const float* dy, float* dweight_partial, float* dbias_partial, float* dshift, float* dscale, long long rows, int dim,
    int rows_per_group, int rows_per_chunk)
{
    repa::norm::layer_norm_backward_params(x, weight, bias, scale, mean, rstd, dy, dweight_partial, dbias_partial, dshift,
                                           dscale, rows, dim, rows_per_group, rows_per_chunk);
}
REPA_KERNEL(layer_norm_backward_params_f32);

extern "C" __global__ void __launch_bounds__(256, 4) layer_norm_backward_params_bf16(
    const bf16* x, const float* weight, const float* bias, const bf16* scale, const float* mean, const float* rstd,
    const bf16* dy, float* dweight_partial, float* dbias_partial, bf16* dshift, bf16* dscale, long long rows, int dim,
    int rows_per_group, int rows_per_chunk)
{
    repa::norm::layer_norm_backward_params(x, weight, bias, scale, mean, rstd, dy, dweight_partial, dbias_partial, dshift,
                                           dscale, rows, dim, rows_per_group, rows_per_chunk);
}
REPA_KERNEL(layer_norm_backward_params_bf16);

// ---- adaLN gated residual -----------------------------------------------------------------------------------------

extern "C" __global__ void gated_residual_forward_f32(const float* x, const float* y, const float* gate, float* output,
                                                      long long rows, int dim, int rows_per_group)
{
    repa::norm::gated_residual_forward(x, y, gate, output, rows, dim, rows_per_group);
}
REPA_KERNEL(gated_residual_forward_f32);

extern "C" __global__ void gated_residual_forward_bf16(const bf16* x, const bf16* y, const bf16* gate, bf16* output,
                                                       long long rows, int dim, int rows_per_group)
{
    repa::norm::gated_residual_forward(x, y, gate, output, rows, dim, rows_per_group);
}
REPA_KERNEL(gated_residual_forward_bf16);

extern "C" __global__ void gated_residual_backward_f32(const float* y, const float* gate, const float* dout, float* dx,
                                                       float* dy, float* dgate, long long rows, int dim, int rows_per_group)
{
    repa::norm::gated_residual_backward(y, gate, dout, dx, dy, dgate, rows, dim, rows_per_group);
}
REPA_KERNEL(gated_residual_backward_f32);

extern "C" __global__ void gated_residual_backward_bf16(const bf16* y, const bf16* gate, const bf16* dout, bf16* dx,
                                                        bf16* dy, bf16* dgate, long long rows, int dim, int rows_per_group)
{
    repa::norm::gated_residual_backward(y, gate, dout, dx, dy, dgate, rows, dim, rows_per_group);
}
REPA_KERNEL(gated_residual_backward_bf16);
