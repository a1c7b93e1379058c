// Optimiser family (IBackend.Optim.cs): the squared norm behind the global gradient-norm clip (deterministic, two
// passes, fp64), a fused torch.optim.AdamW step that applies the clip as a gradient scale, and the parameter EMA.
// Everything is fp32 (master weights, gradients and optimiser state), with fp64 sums; AdamW can also write the bf16
// copy of the updated parameters that bf16 GEMMs read, in the same pass.
// AdamW and the EMA are BITWISE the CPU backend's (Cpu/CpuBackend.Optim.cs): the same scalars (formed in fp64 by the
// caller and rounded once to fp32, see AdamWScalars there), the same order of operations, and __fmul_rn/__fadd_rn/
// __fdiv_rn/__fsqrt_rn so that the compiler cannot contract anything into a fused multiply-add.
// Launch shapes: element kernels take any grid and block (grid-stride); sum_of_squares_partial_f32 takes blockDim =
// (a multiple of 32, at most 1024, 1, 1) and writes one partial per block; sum_of_squares_finish runs as ONE block of
// the same kind. The result depends only on the grid and block sizes, which the caller derives from n alone.
#include "common.cuh"

using repa::bf16;

// partial[blockIdx.x] = sum over the block's grid-stride share of x[i]^2, in fp64 (fp32 squares are exact in fp64).
extern "C" __global__ void sum_of_squares_partial_f32(const float* __restrict__ x, long long n, double* __restrict__ partial)
{
    __shared__ double scratch[32];
    double acc = 0.0;
    for (long long i = repa::grid_start(); i < n; i += repa::grid_stride())
    {
        double e = x[i];
        acc += e * e;
    }
    acc = repa::block_sum_double(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
REPA_KERNEL(sum_of_squares_partial_f32);

// *total = sum of partial[0, count) (accumulate == 0), or *total += it (accumulate != 0: several tensors' squared norms
// add up on the device and the host reads one double). One block.
extern "C" __global__ void sum_of_squares_finish(const double* __restrict__ partial, int count, double* __restrict__ total,
                                                 int accumulate)
{
    __shared__ double scratch[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
    acc = repa::block_sum_double(acc, scratch);
    if (threadIdx.x == 0) *total = accumulate != 0 ? *total + acc : acc;
}
REPA_KERNEL(sum_of_squares_finish);

// One AdamW step over n elements, in the CPU backend's order:
//   g = grad_scale grad; p = param decay (decay = 1 - lr wd); m = beta1 m + (1 - beta1) g;
//   v = beta2 v + ((1 - beta2) g) g; param = p + (neg_step_size m) / (sqrt(v) / sqrt_bias2 + eps)
// with neg_step_size = -lr / (1 - beta1^step) and sqrt_bias2 = sqrt(1 - beta2^step). param_bf16: null, or [n] bf16 that
// receives the updated parameters rounded to nearest even.
REPA_DEVICE void adamw_elements(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                                float* __restrict__ v, long long n, float grad_scale, float decay, float beta1,
                                float beta2, float one_minus_beta1, float one_minus_beta2, float sqrt_bias2, float eps,
                                float neg_step_size, bf16* __restrict__ param_bf16)
{
    for (long long i = repa::grid_start(); i < n; i += repa::grid_stride())
    {
        float g = __fmul_rn(grad_scale, grad[i]);
        float p = __fmul_rn(param[i], decay);
        float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(one_minus_beta1, g));
        float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(one_minus_beta2, g), g));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), sqrt_bias2), eps);
        p = __fadd_rn(p, __fdiv_rn(__fmul_rn(neg_step_size, mi), denom));
        param[i] = p;
        m[i] = mi;
        v[i] = vi;
        if (param_bf16 != nullptr) param_bf16[i] = repa::from_float<bf16>(p);
    }
}

extern "C" __global__ void adamw_step_f32(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                                          float* __restrict__ v, long long n, float grad_scale, float decay, float beta1,
                                          float beta2, float one_minus_beta1, float one_minus_beta2, float sqrt_bias2,
                                          float eps, float neg_step_size, bf16* __restrict__ param_bf16)
{
    adamw_elements(param, grad, m, v, n, grad_scale, decay, beta1, beta2, one_minus_beta1, one_minus_beta2, sqrt_bias2,
                   eps, neg_step_size, param_bf16);
}
REPA_KERNEL(adamw_step_f32);

// adamw_step_f32 with the step's varying scalars read from device memory (a CUDA graph replays it unchanged):
// scalars = {sum of squares of every gradient, -lr / (1 - beta1^step), sqrt(1 - beta2^step), 1 - lr wd}, fp64. The clip
// scale is torch's clip_grad_norm_ coefficient min(max_norm / (norm + 1e-6), 1) in fp64 (NaN stays NaN, as torch.clamp),
// no clip when max_norm <= 0; every scalar is rounded once to fp32, as the host does for adamw_step_f32.
extern "C" __global__ void adamw_step_device_f32(float* __restrict__ param, const float* __restrict__ grad,
                                                 float* __restrict__ m, float* __restrict__ v, long long n,
                                                 const double* __restrict__ scalars, double max_norm, float beta1,
                                                 float beta2, float one_minus_beta1, float one_minus_beta2, float eps,
                                                 bf16* __restrict__ param_bf16)
{
    float grad_scale = 1.0f;
    if (max_norm > 0.0)
    {
        double q = __ddiv_rn(max_norm, __dadd_rn(__dsqrt_rn(scalars[0]), 1e-6));
        grad_scale = (float)(q != q ? q : (q < 1.0 ? q : 1.0));
    }
    adamw_elements(param, grad, m, v, n, grad_scale, (float)scalars[3], beta1, beta2, one_minus_beta1, one_minus_beta2,
                   (float)scalars[2], eps, (float)scalars[1], param_bf16);
}
REPA_KERNEL(adamw_step_device_f32);

// accumulator[0] += (double)x[0] / divisor: a step's loss figures summed over its micro-batches on the device, in the
// host's fp64 arithmetic (x fp32 is exact in fp64). One thread.
extern "C" __global__ void accumulate_scalar_f32(const float* __restrict__ x, double* __restrict__ accumulator, double divisor)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) *accumulator = __dadd_rn(*accumulator, __ddiv_rn((double)x[0], divisor));
}
REPA_KERNEL(accumulate_scalar_f32);

extern "C" __global__ void accumulate_scalar_f64(const double* __restrict__ x, double* __restrict__ accumulator, double divisor)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) *accumulator = __dadd_rn(*accumulator, __ddiv_rn(x[0], divisor));
}
REPA_KERNEL(accumulate_scalar_f64);

// ema = ema decay + (1 - decay) param (PyTorch's ema.mul_(d).add_(p, alpha=1 - d)); one_minus_decay = (float)(1 - decay)
// formed in fp64.
extern "C" __global__ void ema_update_f32(float* __restrict__ ema, const float* __restrict__ param, long long n, float decay,
                                          float one_minus_decay)
{
    for (long long i = repa::grid_start(); i < n; i += repa::grid_stride())
        ema[i] = __fadd_rn(__fmul_rn(ema[i], decay), __fmul_rn(one_minus_decay, param[i]));
}
REPA_KERNEL(ema_update_f32);
