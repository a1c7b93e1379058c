// Sampler family (IBackend.Sampler.cs): one fused step of REPA's flow samplers (samplers.py) on the float64 state:
// the model output (fp32, bf16 or fp64, widened exactly) -> optional SDE drift from the velocity -> optional
// classifier-free guidance combine of the doubled batch's halves -> Euler / Heun / Euler-Maruyama update, the last with
// its standard normal noise drawn here from Philox4x32-10 (no noise buffer in memory).
// Everything but the noise is BITWISE the CPU backend's (Cpu/CpuBackend.Sampler.cs): the same coefficients (formed in
// fp64 by the caller), the same order of operations, products as __dmul_rn and sums as __dadd_rn so that nothing is
// contracted into a fused multiply-add. The noise uses Philox.cs's counter/key layout and words bit for bit; its
// Box-Muller transform (log, sqrt, sincos in fp64) equals Philox.Normal up to the last-ulp differences of the device's
// log and sincos (the emulator's are the host libm's, as .NET's).
// Launch: any grid and block; thread work unit = a "quad", the (up to) 4 elements that share one Philox block
// (element index offset + k lies in block (offset + k) / 4), grid-stride over ((offset & 3) + n + 3) / 4 quads.
#include "common.cuh"

using repa::bf16;

namespace repa {
namespace sampler {

/// The step's coefficients, passed by value: the C# CudaBackend.FlowStepParameters (96 bytes, this field order).
struct FlowStepParameters
{
    int update;   // 0 Euler, 1 Heun, 2 Euler-Maruyama
    int guided;   // the model output holds [cond (n); uncond (n)]
    int drift;    // turn the velocity into the SDE drift
    int reserved;
    double dt, guidance_scale, ratio, variance, half_diffusion, noise_scale, sqrt_dt;
    unsigned long long seed, stream, offset;
};

REPA_DEVICE double widen(float v) { return (double)v; }
REPA_DEVICE double widen(repa::bf16 v) { return (double)repa::to_float(v); }
REPA_DEVICE double widen(double v) { return v; }

/// Philox4x32-10 (Philox.Block): key = seed (word 0 low, word 1 high), counter = (block lo, block hi, stream lo,
/// stream hi); out = (c0, c1, c2, c3) after 10 rounds with the Weyl key bump between rounds.
REPA_DEVICE void philox_block(unsigned long long key, unsigned long long counter_hi, unsigned long long counter_lo,
                              unsigned int out[4])
{
    unsigned int c0 = (unsigned int)counter_lo, c1 = (unsigned int)(counter_lo >> 32);
    unsigned int c2 = (unsigned int)counter_hi, c3 = (unsigned int)(counter_hi >> 32);
    unsigned int k0 = (unsigned int)key, k1 = (unsigned int)(key >> 32);
    REPA_UNROLL
    for (int round = 0; round < 10; round++)
    {
        if (round > 0)
        {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        unsigned long long p0 = (unsigned long long)0xD2511F53u * c0, p1 = (unsigned long long)0xCD9E8D57u * c2;
        unsigned int n0 = (unsigned int)(p1 >> 32) ^ c1 ^ k0;
        unsigned int n2 = (unsigned int)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (unsigned int)p1;
        c2 = n2;
        c3 = (unsigned int)p0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/// Philox.Normal's pair (NormalF64.Pair): r = sqrt(-2 ln((a + 1) 2^-32)), t = (2 pi / 2^32) (b + 1/2); z0 = r sin t,
/// z1 = r cos t.
REPA_DEVICE void box_muller(unsigned int a, unsigned int b, double& z0, double& z1)
{
    const double two_to_minus_32 = 1.0 / 4294967296.0;
    const double angle_unit = 2.0 * 3.141592653589793 / 4294967296.0; // (2 pi) 2^-32, as the C# constant folds
    double r = sqrt(__dmul_rn(-2.0, log(__dmul_rn((double)a + 1.0, two_to_minus_32))));
    double s, c;
    sincos(__dmul_rn(angle_unit, (double)b + 0.5), &s, &c);
    z0 = __dmul_rn(r, s);
    z1 = __dmul_rn(r, c);
}

/// The velocity itself, or the drift v - h ((r v - x) / variance).
REPA_DEVICE double direction_of(const FlowStepParameters& k, double v, double x)
{
    if (k.drift == 0) return v;
    double score = __dadd_rn(__dmul_rn(k.ratio, v), -x) / k.variance;
    return __dadd_rn(v, -__dmul_rn(k.half_diffusion, score));
}

template <typename T>
REPA_DEVICE void flow_step(const FlowStepParameters& k, const double* x, const T* __restrict__ model_output,
                           double* direction, double* destination, long long n)
{
    long long head = (long long)(k.offset & 3ull);
    long long quads = (head + n + 3) >> 2;
    for (long long q = repa::grid_start(); q < quads; q += repa::grid_stride())
    {
        long long first = 4 * q - head; // element of word 0 of this quad's Philox block (may be < 0)
        double eps[4] = {0.0, 0.0, 0.0, 0.0};
        if (k.update == 2)
        {
            unsigned int words[4];
            philox_block(k.seed, k.stream, (k.offset >> 2) + (unsigned long long)q, words);
            // A pair is drawn when one of its elements is in [0, n).
            if (first + 1 >= 0 && first < n) box_muller(words[0], words[1], eps[0], eps[1]);
            if (first + 3 >= 0 && first + 2 < n) box_muller(words[2], words[3], eps[2], eps[3]);
        }
        REPA_UNROLL
        for (int j = 0; j < 4; j++)
        {
            long long i = first + j;
            if (i < 0 || i >= n) continue;
            double xi = x[i];
            double d = direction_of(k, widen(model_output[i]), xi);
            if (k.guided != 0)
            {
                double u = direction_of(k, widen(model_output[n + i]), xi);
                d = __dadd_rn(u, __dmul_rn(k.guidance_scale, __dadd_rn(d, -u)));
            }
            double y;
            if (k.update == 0)
            {
                if (direction != nullptr) direction[i] = d;
                y = __dadd_rn(xi, __dmul_rn(k.dt, d));
            }
            else if (k.update == 1)
            {
                y = __dadd_rn(xi, __dmul_rn(k.dt, __dadd_rn(__dmul_rn(0.5, direction[i]), __dmul_rn(0.5, d))));
            }
            else
            {
                y = __dadd_rn(__dadd_rn(xi, __dmul_rn(d, k.dt)), __dmul_rn(k.noise_scale, __dmul_rn(eps[j], k.sqrt_dt)));
            }
            destination[i] = y;
        }
    }
}

} // namespace sampler
} // namespace repa

using repa::sampler::FlowStepParameters;

// destination[i] = x[i] moved by one sampler step (see IBackend.FlowStep); x and destination may alias (in place);
// direction: Euler writes d there when not null, Heun reads the saved d.
extern "C" __global__ void flow_step_f32(FlowStepParameters k, const double* x, const float* __restrict__ model_output,
                                         double* direction, double* destination, long long n)
{
    repa::sampler::flow_step(k, x, model_output, direction, destination, n);
}
REPA_KERNEL(flow_step_f32);

extern "C" __global__ void flow_step_bf16(FlowStepParameters k, const double* x, const bf16* __restrict__ model_output,
                                          double* direction, double* destination, long long n)
{
    repa::sampler::flow_step(k, x, model_output, direction, destination, n);
}
REPA_KERNEL(flow_step_bf16);

extern "C" __global__ void flow_step_f64(FlowStepParameters k, const double* x, const double* __restrict__ model_output,
                                         double* direction, double* destination, long long n)
{
    repa::sampler::flow_step(k, x, model_output, direction, destination, n);
}
REPA_KERNEL(flow_step_f64);
