// Loss family (IBackend.Loss.cs): the per-sample MSE, REPA's patch-wise cosine alignment, the two pieces of NT-Xent
// (row L2 normalisation, and the cross-entropy whose positive is the diagonal of the similarity matrix that a GEMM
// makes between them) and DiT's variational-bound term of the learned variance. Semantics are the CPU backend's
// (Cpu/CpuBackend.Loss.cs): every loss is per sample ([samples], fp32), summed in fp64 in a fixed order (deterministic);
// backward kernels ACCUMULATE into their gradients; a null gradient pointer is skipped.
// Variants: _f32 is fp32 throughout. _bf16 reads bf16 activations (predictions, targets, features, logits) and
// accumulates into bf16 gradients of them, while norms, dots, softmax statistics (lse) and losses are fp32 (REPA
// normalises in fp32) and the per-sample sums fp64; step_params, loss and dloss are fp32 in both.
// Launch shapes:
//   per-sample kernels (..._forward except row_l2_normalize): one block per sample (grid-stride over samples),
//     blockDim = (a multiple of 32, at most 1024, 1, 1).
//   warp-per-row kernels (cosine/row_l2 backward, row_l2 forward): blockDim = (a multiple of 32, 1, 1), any grid.
//   element kernels (mse/vlb backward): grid = (any, any): grid.y strides over samples, x over the sample's elements.
//   diagonal_cross_entropy_backward: one block per row of S (grid-stride over samples * n rows), any blockDim.x.
#include "common.cuh"

namespace repa {
namespace loss {

REPA_DEVICE long long warp_index() { return grid_start() >> 5; }
REPA_DEVICE long long warp_count() { return grid_stride() >> 5; }
REPA_DEVICE int lane_index() { return (int)(threadIdx.x & 31); }

// ln 2 (Math.Log(2.0)): VLB terms are in nats until this division.
constexpr double ln2 = 0.6931471805599453;

// ---- MSE ------------------------------------------------------------------------------------------------------------

template <typename T>
REPA_DEVICE void mse_forward(const T* p, const T* t, float* loss, int samples, long long inner)
{
    __shared__ double scratch[32];
    for (int s = blockIdx.x; s < samples; s += gridDim.x)
    {
        const T* ps = p + s * inner;
        const T* ts = t + s * inner;
        double acc = 0.0;
        for (long long i = threadIdx.x; i < inner; i += blockDim.x)
        {
            float d = to_float(ps[i]) - to_float(ts[i]);
            acc += (double)(d * d);
        }
        acc = block_sum_double(acc, scratch);
        if (threadIdx.x == 0) loss[s] = (float)(acc / (double)inner);
    }
}

// dp += 2 dloss[s] (p - t) / inner, dt -= the same.
template <typename T>
REPA_DEVICE void mse_backward(const T* p, const T* t, const float* dloss, T* dp, T* dt, int samples, long long inner)
{
    float two_over_inner = (float)(2.0 / (double)inner);
    for (int s = blockIdx.y; s < samples; s += gridDim.y)
    {
        float c = two_over_inner * dloss[s];
        long long base = s * inner;
        for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < inner; i += (long long)gridDim.x * blockDim.x)
        {
            float d = to_float(p[base + i]) - to_float(t[base + i]);
            if (dp != nullptr) dp[base + i] = from_float<T>(d * c + to_float(dp[base + i]));
            if (dt != nullptr) dt[base + i] = from_float<T>(d * -c + to_float(dt[base + i]));
        }
    }
}

// ---- cosine alignment -----------------------------------------------------------------------------------------------

// The three dots of one row, fp32, every lane of the warp gets them.
template <typename T>
REPA_DEVICE void row_dots(const T* z, const T* h, int dim, float& zz, float& hh, float& zh)
{
    zz = 0.0f;
    hh = 0.0f;
    zh = 0.0f;
    for (int j = lane_index(); j < dim; j += 32)
    {
        float a = to_float(z[j]), b = to_float(h[j]);
        zz += a * a;
        hh += b * b;
        zh += a * b;
    }
    zz = warp_sum(zz);
    hh = warp_sum(hh);
    zh = warp_sum(zh);
}

// loss[s] = -(1/tokens) sum_t <z_hat, h_hat>: one block per sample, its warps take the tokens in turn.
template <typename T>
REPA_DEVICE void cosine_alignment_forward(const T* z, const T* h, float* loss, int samples, int tokens, int dim, float eps)
{
    __shared__ double scratch[32];
    int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int s = blockIdx.x; s < samples; s += gridDim.x)
    {
        double acc = 0.0;
        for (int t = warp; t < tokens; t += warps)
        {
            long long row = ((long long)s * tokens + t) * dim;
            float zz, hh, zh;
            row_dots(z + row, h + row, dim, zz, hh, zh);
            float nz = fmaxf(sqrtf(zz), eps), nh = fmaxf(sqrtf(hh), eps);
            acc += (double)(zh / (nz * nh));
        }
        acc = block_sum_double(lane_index() == 0 ? acc : 0.0, scratch);
        if (threadIdx.x == 0) loss[s] = (float)(-acc / tokens);
    }
}

// With g = -dloss[s] / tokens and c = <z_hat, h_hat>: dz += g (h_hat - c z_hat) / |z| (g h_hat / eps where |z| <= eps),
// dh symmetrically. One warp per token row.
template <typename T>
REPA_DEVICE void cosine_alignment_backward(const T* z, const T* h, const float* dloss, T* dz, T* dh, int samples,
                                           int tokens, int dim, float eps)
{
    long long rows = (long long)samples * tokens;
    float inv_tokens = 1.0f / (float)tokens;
    for (long long r = warp_index(); r < rows; r += warp_count())
    {
        const T* zr = z + r * dim;
        const T* hr = h + r * dim;
        float zz, hh, zh;
        row_dots(zr, hr, dim, zz, hh, zh);
        float nz = sqrtf(zz), nh = sqrtf(hh);
        float nzc = fmaxf(nz, eps), nhc = fmaxf(nh, eps);
        float c = zh / (nzc * nhc);
        float g = -dloss[r / tokens] * inv_tokens;
        float cz = nz > eps ? c : 0.0f, ch = nh > eps ? c : 0.0f;
        float gz = g / nzc, gh = g / nhc;
        for (int j = lane_index(); j < dim; j += 32)
        {
            float zb = to_float(zr[j]) / nzc, hb = to_float(hr[j]) / nhc;
            long long at = r * dim + j;
            if (dz != nullptr) dz[at] = from_float<T>((zb * -cz + hb) * gz + to_float(dz[at]));
            if (dh != nullptr) dh[at] = from_float<T>((hb * -ch + zb) * gh + to_float(dh[at]));
        }
    }
}

// ---- row L2 normalisation (NT-Xent's F.normalize) ------------------------------------------------------------------

template <typename T>
REPA_DEVICE void row_l2_normalize_forward(const T* x, T* y, long long rows, int dim, float eps)
{
    for (long long r = warp_index(); r < rows; r += warp_count())
    {
        const T* xr = x + r * dim;
        float q = 0.0f;
        for (int j = lane_index(); j < dim; j += 32)
        {
            float v = to_float(xr[j]);
            q += v * v;
        }
        float n = fmaxf(sqrtf(warp_sum(q)), eps);
        for (int j = lane_index(); j < dim; j += 32) y[r * dim + j] = from_float<T>(to_float(xr[j]) / n);
    }
}

// dx += (dy - y <y, dy>) / |x| when |x| > eps, dy / eps otherwise; y = x / max(|x|, eps) recomputed.
template <typename T>
REPA_DEVICE void row_l2_normalize_backward(const T* x, const T* dy, T* dx, long long rows, int dim, float eps)
{
    for (long long r = warp_index(); r < rows; r += warp_count())
    {
        const T* xr = x + r * dim;
        const T* gr = dy + r * dim;
        float q = 0.0f;
        for (int j = lane_index(); j < dim; j += 32)
        {
            float v = to_float(xr[j]);
            q += v * v;
        }
        float n = sqrtf(warp_sum(q));
        float nc = fmaxf(n, eps);
        float yg = 0.0f;
        if (n > eps)
        {
            for (int j = lane_index(); j < dim; j += 32) yg += to_float(xr[j]) / nc * to_float(gr[j]);
            yg = warp_sum(yg);
        }
        float inv = 1.0f / nc;
        for (int j = lane_index(); j < dim; j += 32)
        {
            float v = (to_float(xr[j]) / nc) * -yg + to_float(gr[j]);
            dx[r * dim + j] = from_float<T>(v * inv + to_float(dx[r * dim + j]));
        }
    }
}

// ---- cross-entropy on the diagonal (NT-Xent) -----------------------------------------------------------------------

// lse[s, i] = logsumexp_j(scale S[s, i, j]); loss[s] = (1/n) sum_i (lse[s, i] - scale S[s, i, i]). One block per sample,
// one warp per row (max first, then the sum of exponentials: two passes over the row, the second from L1).
template <typename T>
REPA_DEVICE void diagonal_cross_entropy_forward(const T* logits, float* lse, float* loss, int samples, int n, float scale)
{
    __shared__ double scratch[32];
    int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int s = blockIdx.x; s < samples; s += gridDim.x)
    {
        double acc = 0.0;
        for (int i = warp; i < n; i += warps)
        {
            long long row = (long long)s * n + i;
            const T* sr = logits + row * n;
            float m = bits_float(0xff800000u); // -inf
            for (int j = lane_index(); j < n; j += 32) m = fmaxf(m, to_float(sr[j]) * scale);
            m = warp_max(m);
            float sum = 0.0f;
            for (int j = lane_index(); j < n; j += 32) sum += expf(to_float(sr[j]) * scale - m);
            float l = m + logf(warp_sum(sum));
            if (lane_index() == 0)
            {
                lse[row] = l;
                acc += (double)(l - scale * to_float(sr[i]));
            }
        }
        acc = block_sum_double(acc, scratch);
        if (threadIdx.x == 0) loss[s] = (float)(acc / n);
    }
}

// dS[s, i, j] += dloss[s] scale (exp(scale S - lse[s, i]) - [i == j]) / n. One block per row.
template <typename T>
REPA_DEVICE void diagonal_cross_entropy_backward(const T* logits, const float* lse, const float* dloss, T* dlogits,
                                                 int samples, int n, float scale)
{
    long long rows = (long long)samples * n;
    float inv_n = 1.0f / (float)n;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        float coeff = dloss[r / n] * scale * inv_n;
        float l = lse[r];
        int diagonal = (int)(r % n);
        for (int j = threadIdx.x; j < n; j += blockDim.x)
        {
            long long at = r * n + j;
            float g = expf(to_float(logits[at]) * scale - l) * coeff + to_float(dlogits[at]);
            if (j == diagonal) g -= coeff;
            dlogits[at] = from_float<T>(g);
        }
    }
}

// ---- DiT's variational-bound term -----------------------------------------------------------------------------------

// diffusion_utils.approx_standard_normal_cdf and its derivative.
REPA_DEVICE float approx_normal_cdf(float x, float& derivative)
{
    const float k = 0.7978845608028654f; // sqrt(2 / pi)
    const float c = 0.044715f;
    float th = tanhf(k * (x + c * (x * x * x)));
    derivative = 0.5f * (1.0f - th * th) * k * (1.0f + 3.0f * c * x * x);
    return 0.5f * (1.0f + th);
}

// normal_kl(mean1, logvar1, mean2, logvar2) in nats and its derivative in logvar2, term by term as the reference.
REPA_DEVICE float vlb_normal_kl(float mean1, float log_var1, float mean2, float log_var2, float& d_log_var2)
{
    float ratio = expf(log_var1 - log_var2), d = mean1 - mean2, scaled = d * d * expf(-log_var2);
    d_log_var2 = 0.5f * (1.0f - ratio - scaled);
    return 0.5f * (-1.0f + log_var2 - log_var1 + ratio + scaled);
}

// -discretized_gaussian_log_likelihood(x, mean, log_scale = log_var / 2) in nats and its derivative in log_var; where a
// probability is clamped at 1e-12 the derivative is 0 (torch's clamp).
REPA_DEVICE float vlb_decoder_nll(float x, float mean, float log_var, float& d_log_var)
{
    const float bin = (float)(1.0 / 255.0), floor_probability = 1e-12f;
    float centered = x - mean;
    float inv_std = expf(-(0.5f * log_var));
    float plus_in = inv_std * (centered + bin), min_in = inv_std * (centered - bin);
    float pdf_plus, pdf_min;
    float cdf_plus = approx_normal_cdf(plus_in, pdf_plus), cdf_min = approx_normal_cdf(min_in, pdf_min);
    float d_plus = pdf_plus * -0.5f * plus_in, d_min = pdf_min * -0.5f * min_in;
    float log_prob, d_log_prob;
    if (x < -0.999f)
    {
        log_prob = logf(fmaxf(cdf_plus, floor_probability));
        d_log_prob = cdf_plus >= floor_probability ? d_plus / cdf_plus : 0.0f;
    }
    else if (x > 0.999f)
    {
        float upper = 1.0f - cdf_min;
        log_prob = logf(fmaxf(upper, floor_probability));
        d_log_prob = upper >= floor_probability ? -d_min / upper : 0.0f;
    }
    else
    {
        float delta = cdf_plus - cdf_min;
        log_prob = logf(fmaxf(delta, floor_probability));
        d_log_prob = delta >= floor_probability ? (d_plus - d_min) / delta : 0.0f;
    }
    d_log_var = -d_log_prob;
    return -log_prob;
}

// The term of one element and its derivative in the raw variance value v.
template <typename T>
REPA_DEVICE float vlb_term(const T* v, const T* mean, const T* true_mean, const T* x0, long long i, float min_log,
                           float max_log, float true_log_var, bool decoder, float& d_term)
{
    float frac = (to_float(v[i]) + 1.0f) / 2.0f;
    float log_var = frac * max_log + (1.0f - frac) * min_log;
    return decoder ? vlb_decoder_nll(to_float(x0[i]), to_float(mean[i]), log_var, d_term)
                   : vlb_normal_kl(to_float(true_mean[i]), true_log_var, to_float(mean[i]), log_var, d_term);
}

// loss[s] = mean over the sample's elements of the term / ln 2. One block per sample.
template <typename T>
REPA_DEVICE void diffusion_vlb_forward(const T* v, const T* mean, const T* true_mean, const T* x0, const float* step_params,
                                       float* loss, int samples, long long inner)
{
    __shared__ double scratch[32];
    for (int s = blockIdx.x; s < samples; s += gridDim.x)
    {
        const float* sp = step_params + 4 * s;
        float min_log = sp[0], max_log = sp[1], true_log_var = sp[2];
        bool decoder = sp[3] != 0.0f;
        double acc = 0.0;
        for (long long i = s * inner + threadIdx.x; i < (s + 1) * inner; i += blockDim.x)
        {
            float d_term;
            acc += (double)vlb_term(v, mean, true_mean, x0, i, min_log, max_log, true_log_var, decoder, d_term);
        }
        acc = block_sum_double(acc, scratch);
        if (threadIdx.x == 0) loss[s] = (float)(acc / (double)inner / ln2);
    }
}

// dv += dloss[s] (max_log - min_log) / (2 inner ln 2) d term / d log_var.
template <typename T>
REPA_DEVICE void diffusion_vlb_backward(const T* v, const T* mean, const T* true_mean, const T* x0, const float* step_params,
                                        const float* dloss, T* dv, int samples, long long inner)
{
    float denominator = (float)((double)(2 * inner) * ln2);
    for (int s = blockIdx.y; s < samples; s += gridDim.y)
    {
        const float* sp = step_params + 4 * s;
        float min_log = sp[0], max_log = sp[1], true_log_var = sp[2];
        bool decoder = sp[3] != 0.0f;
        float grad_scale = dloss[s] * (max_log - min_log) / denominator;
        long long base = s * inner;
        for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < inner; i += (long long)gridDim.x * blockDim.x)
        {
            float d_term;
            vlb_term(v, mean, true_mean, x0, base + i, min_log, max_log, true_log_var, decoder, d_term);
            dv[base + i] = from_float<T>(to_float(dv[base + i]) + grad_scale * d_term);
        }
    }
}

} // namespace loss
} // namespace repa

using repa::bf16;

// ---- MSE --------------------------------------------------------------------------------------------------------------

extern "C" __global__ void mse_forward_f32(const float* prediction, const float* target, float* loss, int samples, long long inner)
{
    repa::loss::mse_forward(prediction, target, loss, samples, inner);
}
REPA_KERNEL(mse_forward_f32);

extern "C" __global__ void mse_forward_bf16(const bf16* prediction, const bf16* target, float* loss, int samples, long long inner)
{
    repa::loss::mse_forward(prediction, target, loss, samples, inner);
}
REPA_KERNEL(mse_forward_bf16);

extern "C" __global__ void mse_backward_f32(const float* prediction, const float* target, const float* dloss,
                                            float* dprediction, float* dtarget, int samples, long long inner)
{
    repa::loss::mse_backward(prediction, target, dloss, dprediction, dtarget, samples, inner);
}
REPA_KERNEL(mse_backward_f32);

extern "C" __global__ void mse_backward_bf16(const bf16* prediction, const bf16* target, const float* dloss,
                                             bf16* dprediction, bf16* dtarget, int samples, long long inner)
{
    repa::loss::mse_backward(prediction, target, dloss, dprediction, dtarget, samples, inner);
}
REPA_KERNEL(mse_backward_bf16);

// ---- cosine alignment (REPA) ------------------------------------------------------------------------------------------

extern "C" __global__ void cosine_alignment_forward_f32(const float* z, const float* h, float* loss, int samples, int tokens,
                                                        int dim, float eps)
{
    repa::loss::cosine_alignment_forward(z, h, loss, samples, tokens, dim, eps);
}
REPA_KERNEL(cosine_alignment_forward_f32);

extern "C" __global__ void cosine_alignment_forward_bf16(const bf16* z, const bf16* h, float* loss, int samples, int tokens,
                                                         int dim, float eps)
{
    repa::loss::cosine_alignment_forward(z, h, loss, samples, tokens, dim, eps);
}
REPA_KERNEL(cosine_alignment_forward_bf16);

extern "C" __global__ void cosine_alignment_backward_f32(const float* z, const float* h, const float* dloss, float* dz,
                                                         float* dh, int samples, int tokens, int dim, float eps)
{
    repa::loss::cosine_alignment_backward(z, h, dloss, dz, dh, samples, tokens, dim, eps);
}
REPA_KERNEL(cosine_alignment_backward_f32);

extern "C" __global__ void cosine_alignment_backward_bf16(const bf16* z, const bf16* h, const float* dloss, bf16* dz,
                                                          bf16* dh, int samples, int tokens, int dim, float eps)
{
    repa::loss::cosine_alignment_backward(z, h, dloss, dz, dh, samples, tokens, dim, eps);
}
REPA_KERNEL(cosine_alignment_backward_bf16);

// ---- NT-Xent: row L2 normalisation ----------------------------------------------------------------------------------

extern "C" __global__ void row_l2_normalize_forward_f32(const float* x, float* y, long long rows, int dim, float eps)
{
    repa::loss::row_l2_normalize_forward(x, y, rows, dim, eps);
}
REPA_KERNEL(row_l2_normalize_forward_f32);

extern "C" __global__ void row_l2_normalize_forward_bf16(const bf16* x, bf16* y, long long rows, int dim, float eps)
{
    repa::loss::row_l2_normalize_forward(x, y, rows, dim, eps);
}
REPA_KERNEL(row_l2_normalize_forward_bf16);

extern "C" __global__ void row_l2_normalize_backward_f32(const float* x, const float* dy, float* dx, long long rows, int dim,
                                                         float eps)
{
    repa::loss::row_l2_normalize_backward(x, dy, dx, rows, dim, eps);
}
REPA_KERNEL(row_l2_normalize_backward_f32);

extern "C" __global__ void row_l2_normalize_backward_bf16(const bf16* x, const bf16* dy, bf16* dx, long long rows, int dim,
                                                          float eps)
{
    repa::loss::row_l2_normalize_backward(x, dy, dx, rows, dim, eps);
}
REPA_KERNEL(row_l2_normalize_backward_bf16);

// ---- NT-Xent: cross-entropy on the diagonal -------------------------------------------------------------------------

extern "C" __global__ void diagonal_cross_entropy_forward_f32(const float* logits, float* lse, float* loss, int samples, int n,
                                                              float scale)
{
    repa::loss::diagonal_cross_entropy_forward(logits, lse, loss, samples, n, scale);
}
REPA_KERNEL(diagonal_cross_entropy_forward_f32);

extern "C" __global__ void diagonal_cross_entropy_forward_bf16(const bf16* logits, float* lse, float* loss, int samples, int n,
                                                               float scale)
{
    repa::loss::diagonal_cross_entropy_forward(logits, lse, loss, samples, n, scale);
}
REPA_KERNEL(diagonal_cross_entropy_forward_bf16);

extern "C" __global__ void diagonal_cross_entropy_backward_f32(const float* logits, const float* lse, const float* dloss,
                                                               float* dlogits, int samples, int n, float scale)
{
    repa::loss::diagonal_cross_entropy_backward(logits, lse, dloss, dlogits, samples, n, scale);
}
REPA_KERNEL(diagonal_cross_entropy_backward_f32);

extern "C" __global__ void diagonal_cross_entropy_backward_bf16(const bf16* logits, const float* lse, const float* dloss,
                                                                bf16* dlogits, int samples, int n, float scale)
{
    repa::loss::diagonal_cross_entropy_backward(logits, lse, dloss, dlogits, samples, n, scale);
}
REPA_KERNEL(diagonal_cross_entropy_backward_bf16);

// ---- DiT's variational-bound term (learned variance) ----------------------------------------------------------------
// step_params: fp32 [samples, 4] = (min_log, max_log, true_log_var, decoder) of each sample's timestep.

extern "C" __global__ void diffusion_vlb_forward_f32(const float* var_values, const float* mean, const float* true_mean,
                                                     const float* x0, const float* step_params, float* loss, int samples,
                                                     long long inner)
{
    repa::loss::diffusion_vlb_forward(var_values, mean, true_mean, x0, step_params, loss, samples, inner);
}
REPA_KERNEL(diffusion_vlb_forward_f32);

extern "C" __global__ void diffusion_vlb_forward_bf16(const bf16* var_values, const bf16* mean, const bf16* true_mean,
                                                      const bf16* x0, const float* step_params, float* loss, int samples,
                                                      long long inner)
{
    repa::loss::diffusion_vlb_forward(var_values, mean, true_mean, x0, step_params, loss, samples, inner);
}
REPA_KERNEL(diffusion_vlb_forward_bf16);

extern "C" __global__ void diffusion_vlb_backward_f32(const float* var_values, const float* mean, const float* true_mean,
                                                      const float* x0, const float* step_params, const float* dloss,
                                                      float* dvar_values, int samples, long long inner)
{
    repa::loss::diffusion_vlb_backward(var_values, mean, true_mean, x0, step_params, dloss, dvar_values, samples, inner);
}
REPA_KERNEL(diffusion_vlb_backward_f32);

extern "C" __global__ void diffusion_vlb_backward_bf16(const bf16* var_values, const bf16* mean, const bf16* true_mean,
                                                       const bf16* x0, const float* step_params, const float* dloss,
                                                       bf16* dvar_values, int samples, long long inner)
{
    repa::loss::diffusion_vlb_backward(var_values, mean, true_mean, x0, step_params, dloss, dvar_values, samples, inner);
}
REPA_KERNEL(diffusion_vlb_backward_bf16);
