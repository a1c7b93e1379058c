// Embed family (IBackend.Embed.cs): table lookup (the class-label embedding) with its scatter-add backward, and DiT's
// sinusoidal timestep embedding. Semantics are the CPU backend's (Cpu/CpuBackend.Embed.cs); backward kernels
// ACCUMULATE.
// Variants: _f32 is fp32 throughout. _bf16 writes (forward) or reads (backward) the bf16 activation y / dy, while the
// table and its gradient (master weights), the timesteps t and their gradient are fp32.
// Launch shapes:
//   embedding_forward, timestep_embedding_forward: one block per row (grid-stride over rows), any blockDim.x.
//   embedding_backward: grid = (any, ceil(dim / blockDim.x)); grid.x strides over id positions, grid.y picks a slice
//     of blockDim.x columns.
//   timestep_embedding_backward: one warp per row, blockDim = (a multiple of 32, 1, 1), any grid.
#include "common.cuh"

namespace repa {
namespace embed {

// y[i, :] = table[ids[i], :]. An id outside [0, vocab) gives a row of zeros (never an out-of-bounds read) and lowers
// *first_bad to its position (atomicMin): the caller sets *first_bad = ~0ull before the launch and, when it comes back
// lower, throws naming ids[*first_bad] and that position, as the CPU backend does for the first bad id.
template <typename T>
REPA_DEVICE void embedding_forward(const float* table, const int* ids, T* y, long long count, int vocab, int dim,
                                   unsigned long long* first_bad)
{
    for (long long i = blockIdx.x; i < count; i += gridDim.x)
    {
        int id = ids[i];
        bool valid = (unsigned int)id < (unsigned int)vocab;
        if (!valid && threadIdx.x == 0) atomicMin(first_bad, (unsigned long long)i);
        const float* row = table + (long long)(valid ? id : 0) * dim;
        T* yr = y + i * dim;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) yr[j] = from_float<T>(valid ? row[j] : 0.0f);
    }
}

// dtable[ids[i], :] += dy[i, :], deterministic without atomics: the block at the FIRST position i of an id owns that
// table row (its threads vote with __syncthreads_or on whether the id occurs before i) and adds dy of every position
// of the id in position order, starting from the row's old value: the very order of additions of the CPU backend, so
// the fp32 result is bitwise the CPU's. Work: O(count) id reads per position, which suits label ids (count = batch);
// out-of-range ids (the forward reported them) are skipped.
template <typename T>
REPA_DEVICE void embedding_backward(const int* ids, const T* dy, float* dtable, long long count, int vocab, int dim)
{
    int column = blockIdx.y * blockDim.x + threadIdx.x;
    for (long long i = blockIdx.x; i < count; i += gridDim.x)
    {
        int id = ids[i];
        if ((unsigned int)id >= (unsigned int)vocab) continue; // the same for the whole block
        int seen = 0;
        for (long long k = threadIdx.x; k < i; k += blockDim.x) seen |= ids[k] == id;
        if (__syncthreads_or(seen)) continue;
        if (column >= dim) continue;
        float* target = dtable + (long long)id * dim + column;
        float acc = *target;
        for (long long k = i; k < count; ++k)
            if (ids[k] == id) acc += to_float(dy[k * dim + column]);
        *target = acc;
    }
}

// f_k = exp(-ln(max_period) k / half) in fp64, rounded once to fp32 (as the CPU backend's frequency table).
REPA_DEVICE float timestep_frequency(double log_max_period, int k, int half)
{
    return (float)exp(-log_max_period * k / half);
}

// y[r, :] = [cos(t_r f_0) .. cos(t_r f_{half-1}) | sin(t_r f_0) .. sin(t_r f_{half-1}) (| 0 when dim is odd)].
template <typename T>
REPA_DEVICE void timestep_embedding_forward(const float* t, T* y, long long count, int dim, double max_period)
{
    int half = dim / 2;
    double log_max_period = log(max_period);
    for (long long r = blockIdx.x; r < count; r += gridDim.x)
    {
        float tr = t[r];
        T* yr = y + r * dim;
        for (int k = threadIdx.x; k < half; k += blockDim.x)
        {
            float arg = timestep_frequency(log_max_period, k, half) * tr;
            yr[k] = from_float<T>(cosf(arg));
            yr[half + k] = from_float<T>(sinf(arg));
        }
        if ((dim & 1) != 0 && threadIdx.x == 0) yr[dim - 1] = from_float<T>(0.0f);
    }
}

// dt[r] += sum_k f_k (cos(t_r f_k) dy[r, half + k] - sin(t_r f_k) dy[r, k]). One warp per row.
template <typename T>
REPA_DEVICE void timestep_embedding_backward(const float* t, const T* dy, float* dt, long long count, int dim, double max_period)
{
    int half = dim / 2;
    double log_max_period = log(max_period);
    int lane = (int)(threadIdx.x & 31);
    for (long long r = grid_start() >> 5; r < count; r += grid_stride() >> 5)
    {
        float tr = t[r];
        const T* g = dy + r * dim;
        float acc = 0.0f;
        for (int k = lane; k < half; k += 32)
        {
            float f = timestep_frequency(log_max_period, k, half);
            float arg = f * tr;
            acc += f * (cosf(arg) * to_float(g[half + k]) - sinf(arg) * to_float(g[k]));
        }
        acc = warp_sum(acc);
        if (lane == 0) dt[r] += acc;
    }
}

} // namespace embed
} // namespace repa

using repa::bf16;

// ---- embedding lookup ---------------------------------------------------------------------------------------------

extern "C" __global__ void embedding_forward_f32(const float* table, const int* ids, float* y, long long count, int vocab,
                                                 int dim, unsigned long long* first_bad)
{
    repa::embed::embedding_forward(table, ids, y, count, vocab, dim, first_bad);
}
REPA_KERNEL(embedding_forward_f32);

extern "C" __global__ void embedding_forward_bf16(const float* table, const int* ids, bf16* y, long long count, int vocab,
                                                  int dim, unsigned long long* first_bad)
{
    repa::embed::embedding_forward(table, ids, y, count, vocab, dim, first_bad);
}
REPA_KERNEL(embedding_forward_bf16);

extern "C" __global__ void embedding_backward_f32(const int* ids, const float* dy, float* dtable, long long count, int vocab,
                                                  int dim)
{
    repa::embed::embedding_backward(ids, dy, dtable, count, vocab, dim);
}
REPA_KERNEL(embedding_backward_f32);

extern "C" __global__ void embedding_backward_bf16(const int* ids, const bf16* dy, float* dtable, long long count, int vocab,
                                                   int dim)
{
    repa::embed::embedding_backward(ids, dy, dtable, count, vocab, dim);
}
REPA_KERNEL(embedding_backward_bf16);

// ---- sinusoidal timestep embedding ----------------------------------------------------------------------------------

extern "C" __global__ void timestep_embedding_forward_f32(const float* t, float* y, long long count, int dim, double max_period)
{
    repa::embed::timestep_embedding_forward(t, y, count, dim, max_period);
}
REPA_KERNEL(timestep_embedding_forward_f32);

extern "C" __global__ void timestep_embedding_forward_bf16(const float* t, bf16* y, long long count, int dim, double max_period)
{
    repa::embed::timestep_embedding_forward(t, y, count, dim, max_period);
}
REPA_KERNEL(timestep_embedding_forward_bf16);

extern "C" __global__ void timestep_embedding_backward_f32(const float* t, const float* dy, float* dt, long long count, int dim,
                                                           double max_period)
{
    repa::embed::timestep_embedding_backward(t, dy, dt, count, dim, max_period);
}
REPA_KERNEL(timestep_embedding_backward_f32);

extern "C" __global__ void timestep_embedding_backward_bf16(const float* t, const bf16* dy, float* dt, long long count, int dim,
                                                            double max_period)
{
    repa::embed::timestep_embedding_backward(t, dy, dt, count, dim, max_period);
}
REPA_KERNEL(timestep_embedding_backward_bf16);
