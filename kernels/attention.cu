// Attention family (IBackend.Attention.cs): fused multi-head softmax attention, flash-attention style. Semantics
// are the CPU backend's (Cpu/CpuBackend.Attention.cs):
//   qkv [N, T, 3D] with features [3, heads, head_dim] (D = heads * head_dim); output [N, T, D];
//   lse[n, h, t] = log sum_s exp(scale q_t . k_s); output_t = sum_s exp(scale q_t . k_s - lse_t) v_s.
//   The backward ACCUMULATES into d_qkv (qkv's layout): with P = exp(scale Q K^T - lse), Di = rowsum(dO * O),
//   dS = P * (dO V^T - Di): dQ += scale dS K, dK += scale dS^T Q, dV += P^T dO.
// No T x T matrix ever reaches device memory: the forward keeps a running max and sum per query (online softmax, fp32)
// and the backward recomputes P from q, k and the saved lse. Every sum is fp32 and in a fixed order; no atomics, so the
// results are deterministic.
// Variants: _f32 is fp32 throughout. _bf16: qkv, output, d_output and d_qkv are bf16 (loaded to fp32, stored rounded
// once); lse bf16 too (what a bf16 autograd graph allocates). _bf16_f32: as _bf16 with lse in fp32 (more accurate
// backward). Scores, probabilities, statistics and accumulators are fp32 in every variant.
// Tiling of the CUDA-core kernels (fp32; bf16 where no mma kernel applies): a block of 128 threads owns 32 rows
// (queries in the forward and the dQ pass, keys in the dK/dV pass) of one (batch, head) pair; 4 adjacent lanes share a
// row and each holds a quarter of its head_dim features in registers, as float4 chunks interleaved so that the 4 lanes
// read 64 consecutive bytes of a shared row. The other operand streams through shared memory in tiles of 32 rows
// (fp32, row stride 128 floats); a dot product is 4 partial dots joined by two shuffles.
// Launch (every kernel): block (128, 1, 1), grid (ceil(tokens / 32), min(batch * heads, 65535)); grid.y strides over
// the pairs. head_dim <= 128.
// Tensor cores (bf16 qkv only, sm_80+): attention_forward_mma_bf16(_f32) for any head_dim <= 128 and
// attention_backward_{query,key}_mma_bf16(_f32) for head_dim <= 80, in namespace mma below.
// Backward: attention_backward_query first (dQ, and Di into the fp32 scratch delta [N, heads, T]), then
// attention_backward_key (dK, dV; reads delta). Each dQ/dK/dV row is written by the one block that owns it.
#include "common.cuh"

namespace repa {
namespace attention {

constexpr int tile = 32;                               // rows per block, rows per shared tile
constexpr int parts = 4;                               // lanes per row
constexpr int block_threads = tile * parts;            // 128
constexpr int max_head_dim = 128;
constexpr int row_vecs = max_head_dim / 4;             // float4 slots per shared row
constexpr int chunks = max_head_dim / (4 * parts);     // float4 chunks per thread: 8

struct alignas(16) vec4 { float x, y, z, w; };

REPA_DEVICE vec4 zero4() { vec4 v; v.x = v.y = v.z = v.w = 0.0f; return v; }

REPA_DEVICE float dot4(vec4 a, vec4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }

REPA_DEVICE void axpy4(float a, vec4 x, vec4& y)
{
    y.x += a * x.x;
    y.y += a * x.y;
    y.z += a * x.z;
    y.w += a * x.w;
}

/// The float4 slot of a shared row that chunk c of lane `part` holds: features 4 (part + 4 c) .. + 3.
REPA_DEVICE int slot(int part, int c) { return part + parts * c; }

/// Features d .. d + 3 of one row (zeros past head_dim).
template <typename T>
REPA_DEVICE vec4 load4(const T* row, int d, int head_dim)
{
    vec4 v;
    v.x = d < head_dim ? to_float(row[d]) : 0.0f;
    v.y = d + 1 < head_dim ? to_float(row[d + 1]) : 0.0f;
    v.z = d + 2 < head_dim ? to_float(row[d + 2]) : 0.0f;
    v.w = d + 3 < head_dim ? to_float(row[d + 3]) : 0.0f;
    return v;
}

/// row[d .. d + 3] += scale * v, for the features below head_dim.
template <typename T>
REPA_DEVICE void add4(T* row, int d, int head_dim, float scale, vec4 v)
{
    if (d < head_dim) row[d] = from_float<T>(to_float(row[d]) + scale * v.x);
    if (d + 1 < head_dim) row[d + 1] = from_float<T>(to_float(row[d + 1]) + scale * v.y);
    if (d + 2 < head_dim) row[d + 2] = from_float<T>(to_float(row[d + 2]) + scale * v.z);
    if (d + 3 < head_dim) row[d + 3] = from_float<T>(to_float(row[d + 3]) + scale * v.w);
}

template <typename T>
REPA_DEVICE void store4(T* row, int d, int head_dim, vec4 v)
{
    if (d < head_dim) row[d] = from_float<T>(v.x);
    if (d + 1 < head_dim) row[d + 1] = from_float<T>(v.y);
    if (d + 2 < head_dim) row[d + 2] = from_float<T>(v.z);
    if (d + 3 < head_dim) row[d + 3] = from_float<T>(v.w);
}

/// Sum over the 4 lanes of one row (adjacent lanes of a warp; every lane of the block must call it).
REPA_DEVICE float row_sum(float v)
{
    v += __shfl_xor_sync(full_warp, v, 1);
    v += __shfl_xor_sync(full_warp, v, 2);
    return v;
}

/// This thread's chunks of a row (zeros for a row past the tokens).
template <typename T>
REPA_DEVICE void load_row(const T* row, bool live, int part, int head_dim, vec4 (&r)[chunks])
{
    REPA_UNROLL
    for (int c = 0; c < chunks; ++c)
    {
        int d = 4 * slot(part, c);
        r[c] = live && d < head_dim ? load4(row, d, head_dim) : zero4();
    }
}

/// Rows first .. first + 31 (row stride ld) into a shared tile, as fp32; rows past the tokens are zeros. Only the slots
/// below head_dim are written, and only those are ever read.
template <typename T>
REPA_DEVICE void load_tile(vec4* dst, const T* base, long long ld, int first, int tokens, int head_dim)
{
    int used = (head_dim + 3) / 4;
    for (int i = threadIdx.x; i < tile * row_vecs; i += block_threads)
    {
        int r = i / row_vecs, s = i % row_vecs;
        if (s >= used) continue;
        int t = first + r;
        dst[i] = t < tokens ? load4(base + (long long)t * ld, 4 * s, head_dim) : zero4();
    }
}

/// Partial dot of this thread's chunks with shared row `row` of a tile.
REPA_DEVICE float partial_dot(const vec4 (&r)[chunks], const vec4* tile_rows, int row, int part, int head_dim)
{
    float sum = 0.0f;
    REPA_UNROLL
    for (int c = 0; c < chunks; ++c)
        if (4 * slot(part, c) < head_dim) sum += dot4(r[c], tile_rows[row * row_vecs + slot(part, c)]);
    return sum;
}

template <typename T, typename L>
REPA_DEVICE void forward(const T* qkv, T* output, L* lse, int batch, int tokens, int heads, int head_dim, float scale)
{
    __shared__ vec4 keys[tile * row_vecs];
    __shared__ vec4 values[tile * row_vecs];
    int width = heads * head_dim;
    long long ld = 3LL * width;
    int row = threadIdx.x / parts, part = threadIdx.x % parts;
    long long pairs = (long long)batch * heads;
    for (long long pair = blockIdx.y; pair < pairs; pair += gridDim.y)
    {
        int n = (int)(pair / heads), h = (int)(pair % heads);
        const T* head = qkv + (long long)n * tokens * ld + (long long)h * head_dim;
        int t = blockIdx.x * tile + row;
        bool live = t < tokens;
        vec4 q[chunks], o[chunks];
        load_row(head + (long long)t * ld, live, part, head_dim, q);
        REPA_UNROLL
        for (int c = 0; c < chunks; ++c) o[c] = zero4();
        float running_max = bits_float(0xff800000u); // -inf: the first tile's correction is exp(-inf) = 0
        float running_sum = 0.0f;
        for (int first = 0; first < tokens; first += tile)
        {
            __syncthreads(); // the previous tile's readers are done
            load_tile(keys, head + width, ld, first, tokens, head_dim);
            load_tile(values, head + 2 * width, ld, first, tokens, head_dim);
            __syncthreads();
            float s[tile];
            float tile_max = bits_float(0xff800000u);
            REPA_UNROLL
            for (int j = 0; j < tile; ++j)
            {
                float dot = row_sum(partial_dot(q, keys, j, part, head_dim)) * scale;
                s[j] = first + j < tokens ? dot : bits_float(0xff800000u);
                tile_max = fmaxf(tile_max, s[j]);
            }
            float new_max = fmaxf(running_max, tile_max); // finite: every tile holds at least one key
            float correction = expf(running_max - new_max);
            running_sum *= correction;
            REPA_UNROLL
            for (int c = 0; c < chunks; ++c)
            {
                o[c].x *= correction;
                o[c].y *= correction;
                o[c].z *= correction;
                o[c].w *= correction;
            }
            REPA_UNROLL
            for (int j = 0; j < tile; ++j)
            {
                float p = expf(s[j] - new_max); // 0 for the masked keys
                running_sum += p;
                REPA_UNROLL
                for (int c = 0; c < chunks; ++c)
                    if (4 * slot(part, c) < head_dim) axpy4(p, values[j * row_vecs + slot(part, c)], o[c]);
            }
            running_max = new_max;
        }
        if (live)
        {
            float inverse = 1.0f / running_sum;
            T* out = output + ((long long)n * tokens + t) * width + (long long)h * head_dim;
            REPA_UNROLL
            for (int c = 0; c < chunks; ++c)
            {
                vec4 v = o[c];
                v.x *= inverse;
                v.y *= inverse;
                v.z *= inverse;
                v.w *= inverse;
                store4(out, 4 * slot(part, c), head_dim, v);
            }
            if (part == 0) lse[pair * tokens + t] = from_float<L>(running_max + logf(running_sum));
        }
    }
}

// dQ += scale sum_s P_ts (dP_ts - D_t) k_s for this block's 32 queries; writes D_t = dO_t . O_t into delta.
template <typename T, typename L>
REPA_DEVICE void backward_query(const T* qkv, const T* output, const T* d_output, const L* lse, T* d_qkv, float* delta,
                                int batch, int tokens, int heads, int head_dim, float scale)
{
    __shared__ vec4 keys[tile * row_vecs];
    __shared__ vec4 values[tile * row_vecs];
    int width = heads * head_dim;
    long long ld = 3LL * width;
    int row = threadIdx.x / parts, part = threadIdx.x % parts;
    long long pairs = (long long)batch * heads;
    for (long long pair = blockIdx.y; pair < pairs; pair += gridDim.y)
    {
        int n = (int)(pair / heads), h = (int)(pair % heads);
        long long head_offset = (long long)n * tokens * ld + (long long)h * head_dim;
        const T* head = qkv + head_offset;
        int t = blockIdx.x * tile + row;
        bool live = t < tokens;
        long long out_offset = ((long long)n * tokens + t) * width + (long long)h * head_dim;
        vec4 q[chunks], d_o[chunks], dq[chunks];
        load_row(head + (long long)t * ld, live, part, head_dim, q);
        load_row(d_output + out_offset, live, part, head_dim, d_o);
        float d_partial = 0.0f;
        REPA_UNROLL
        for (int c = 0; c < chunks; ++c)
        {
            int d = 4 * slot(part, c);
            if (live && d < head_dim) d_partial += dot4(d_o[c], load4(output + out_offset, d, head_dim));
            dq[c] = zero4();
        }
        float d_t = row_sum(d_partial);
        float lse_t = live ? to_float(lse[pair * tokens + t]) : 0.0f;
        if (live && part == 0) delta[pair * tokens + t] = d_t;
        for (int first = 0; first < tokens; first += tile)
        {
            __syncthreads();
            load_tile(keys, head + width, ld, first, tokens, head_dim);
            load_tile(values, head + 2 * width, ld, first, tokens, head_dim);
            __syncthreads();
            int count = tokens - first < tile ? tokens - first : tile;
            for (int j = 0; j < count; ++j)
            {
                float score = row_sum(partial_dot(q, keys, j, part, head_dim));
                float dp = row_sum(partial_dot(d_o, values, j, part, head_dim));
                float ds = expf(score * scale - lse_t) * (dp - d_t);
                REPA_UNROLL
                for (int c = 0; c < chunks; ++c)
                    if (4 * slot(part, c) < head_dim) axpy4(ds, keys[j * row_vecs + slot(part, c)], dq[c]);
            }
        }
        if (live)
        {
            T* dq_row = d_qkv + head_offset + (long long)t * ld;
            REPA_UNROLL
            for (int c = 0; c < chunks; ++c) add4(dq_row, 4 * slot(part, c), head_dim, scale, dq[c]);
        }
    }
}

// dK += scale sum_t dS_ts q_t and dV += sum_t P_ts dO_t for this block's 32 keys, over every query.
template <typename T, typename L>
REPA_DEVICE void backward_key(const T* qkv, const T* d_output, const L* lse, const float* delta, T* d_qkv, int batch,
                              int tokens, int heads, int head_dim, float scale)
{
    __shared__ vec4 queries[tile * row_vecs];
    __shared__ vec4 d_outputs[tile * row_vecs];
    __shared__ float lse_tile[tile];
    __shared__ float delta_tile[tile];
    int width = heads * head_dim;
    long long ld = 3LL * width;
    int row = threadIdx.x / parts, part = threadIdx.x % parts;
    long long pairs = (long long)batch * heads;
    for (long long pair = blockIdx.y; pair < pairs; pair += gridDim.y)
    {
        int n = (int)(pair / heads), h = (int)(pair % heads);
        long long head_offset = (long long)n * tokens * ld + (long long)h * head_dim;
        const T* head = qkv + head_offset;
        const T* d_out_head = d_output + (long long)n * tokens * width + (long long)h * head_dim;
        int s = blockIdx.x * tile + row;
        bool live = s < tokens;
        vec4 k[chunks], v[chunks], dk[chunks], dv[chunks];
        load_row(head + width + (long long)s * ld, live, part, head_dim, k);
        load_row(head + 2 * width + (long long)s * ld, live, part, head_dim, v);
        REPA_UNROLL
        for (int c = 0; c < chunks; ++c)
        {
            dk[c] = zero4();
            dv[c] = zero4();
        }
        for (int first = 0; first < tokens; first += tile)
        {
            __syncthreads();
            load_tile(queries, head, ld, first, tokens, head_dim);
            load_tile(d_outputs, d_out_head, width, first, tokens, head_dim);
            if (threadIdx.x < tile)
            {
                int t = first + threadIdx.x;
                lse_tile[threadIdx.x] = t < tokens ? to_float(lse[pair * tokens + t]) : 0.0f;
                delta_tile[threadIdx.x] = t < tokens ? delta[pair * tokens + t] : 0.0f;
            }
            __syncthreads();
            int count = tokens - first < tile ? tokens - first : tile;
            for (int i = 0; i < count; ++i)
            {
                float score = row_sum(partial_dot(k, queries, i, part, head_dim));
                float dp = row_sum(partial_dot(v, d_outputs, i, part, head_dim));
                float p = expf(score * scale - lse_tile[i]);
                float ds = p * (dp - delta_tile[i]);
                REPA_UNROLL
                for (int c = 0; c < chunks; ++c)
                {
                    if (4 * slot(part, c) >= head_dim) continue;
                    axpy4(p, d_outputs[i * row_vecs + slot(part, c)], dv[c]);
                    axpy4(ds, queries[i * row_vecs + slot(part, c)], dk[c]);
                }
            }
        }
        if (live)
        {
            T* dk_row = d_qkv + head_offset + width + (long long)s * ld;
            T* dv_row = dk_row + width;
            REPA_UNROLL
            for (int c = 0; c < chunks; ++c)
            {
                add4(dk_row, 4 * slot(part, c), head_dim, scale, dk[c]);
                add4(dv_row, 4 * slot(part, c), head_dim, 1.0f, dv[c]);
            }
        }
    }
}

// ---- tensor-core forward -------------------------------------------------------------------------------------------
// A block of 4 warps owns 64 queries of one (batch, head) pair, 16 per warp (one MMA row tile). Each warp keeps its
// Q tile as bf16 A fragments (common.cuh's mma_bf16_m16n8k16 layout) for the whole pass. Key tiles of 64 keys stream
// through shared memory: K row-major (a B fragment of S = Q K^T is two consecutive features of one key: one 32-bit
// load) and V transposed (V^T[feature][key], so that a B fragment of O += P V is two consecutive keys of one feature).
// Per key tile a warp computes S (16 x 64, fp32, 8 n-tiles x head_dim / 16 k-steps of MMA), the online softmax in fp32
// (base 2: scores pre-multiplied by scale log2 e), then O (16 x head_dim, fp32 accumulators in registers) += P V with P
// rounded to bf16 straight from the S accumulators (a lane's C fragments of two adjacent key n-tiles are its A fragment
// over those 16 keys). The row sums add the fp32 probabilities (before rounding), and lse = ln 2 (max + log2 sum).
// head_dim: any up to 128. The QK^T k-dimension is padded to a multiple of 16 with zeros (head_dim 72: 5 k-steps of
// 16, the last half zeros); the PV n-dimension takes ceil(head_dim / 8) n-tiles of 8 features and features past
// head_dim are computed from zeros and never stored. Keys past the tokens are zero rows with score -inf; queries past
// the tokens are zero rows, computed and never stored.
// Launch: block (128, 1, 1), grid (ceil(tokens / 64), min(batch * heads, 65535)); grid.y strides over the pairs.
namespace mma {

constexpr int warps = 4;
constexpr int block_threads = 32 * warps;   // 128
constexpr int query_tile = 16 * warps;      // 64 queries per block
constexpr int key_tile = 64;                // keys per shared tile
constexpr int key_ntiles = key_tile / 8;    // 8 n-tiles of S
constexpr int max_ksteps = max_head_dim / 16; // 8 k-steps of QK^T
constexpr int max_ntiles = max_head_dim / 8;  // 16 n-tiles of O
// Shared rows padded by 4 words: a fragment load (8 rows g x 4 words t) hits 32 different banks when the row stride
// is 4 mod 32 words.
constexpr int key_words = max_head_dim / 2 + 4; // 68 words per K row (bf16 pairs of features)
constexpr int value_words = key_tile / 2 + 4;   // 36 words per V^T row (bf16 pairs of keys)

/// Two consecutive bf16 of a qkv row (features d, d + 1; zero past head_dim), as one b32 register.
REPA_DEVICE unsigned int load_pair(const bf16* row, int d, int head_dim, bool aligned_pairs)
{
    if (aligned_pairs && d + 1 < head_dim)
    {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
        return *reinterpret_cast<const unsigned int*>(row + d);
#else
        unsigned int word;
        __builtin_memcpy(&word, row + d, sizeof word);
        return word;
#endif
    }
    unsigned int low = d < head_dim ? row[d].bits : 0u;
    unsigned int high = d + 1 < head_dim ? row[d + 1].bits : 0u;
    return low | (high << 16);
}

/// Two consecutive 16-bit halves of shared memory (4-byte aligned) as one b32 register, the first in the low half.
REPA_DEVICE unsigned int shared_pair(const unsigned short* p)
{
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    return *reinterpret_cast<const unsigned int*>(p);
#else
    unsigned int word; // memcpy: no type punning for g++'s aliasing rules
    __builtin_memcpy(&word, p, sizeof word);
    return word;
#endif
}

REPA_DEVICE unsigned int low_half(unsigned int pair) { return pair & 0xffffu; }
REPA_DEVICE unsigned int high_half(unsigned int pair) { return pair >> 16; }

template <typename L>
REPA_DEVICE void forward(const bf16* qkv, bf16* output, L* lse, int batch, int tokens, int heads, int head_dim,
                         float scale)
{
    __shared__ unsigned int keys[key_tile * key_words];            // K[key][feature pair], 17 KiB
    __shared__ __align__(16) unsigned short values_t[max_head_dim * value_words * 2]; // V^T[feature][key], 18 KiB
    int width = heads * head_dim;
    long long ld = 3LL * width;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, t = lane & 3;
    int ksteps = (head_dim + 15) / 16, ntiles = (head_dim + 7) / 8;
    int pairs_per_row = 8 * ksteps; // feature pairs of a padded K row
    // 32-bit loads of feature pairs need even head_dim (then every pair starts at an even element) and a 4-byte
    // aligned base.
    bool aligned_pairs = (head_dim & 1) == 0 && (reinterpret_cast<unsigned long long>(qkv) & 3u) == 0;
    const float log2e = 1.4426950408889634f;
    float scale_log2 = scale * log2e;
    const float negative_infinity = bits_float(0xff800000u);
    long long pair_count = (long long)batch * heads;
    for (long long pair = blockIdx.y; pair < pair_count; pair += gridDim.y)
    {
        int n = (int)(pair / heads), h = (int)(pair % heads);
        const bf16* head = qkv + (long long)n * tokens * ld + (long long)h * head_dim;
        int row0 = blockIdx.x * query_tile + 16 * warp; // this warp's first query
        int row_g = row0 + g, row_g8 = row0 + g + 8;

        // Q as A fragments: a[ks][0] = Q[g][16 ks + 2t ..], [1] = Q[g + 8][..], [2] = Q[g][16 ks + 2t + 8 ..], [3].
        unsigned int q[max_ksteps][4];
        REPA_UNROLL
        for (int ks = 0; ks < max_ksteps; ++ks)
        {
            if (ks >= ksteps) continue; // (continue, not break: the loop stays fully unrolled)
            int d = 16 * ks + 2 * t;
            const bf16* qg = head + (long long)row_g * ld;
            const bf16* qg8 = head + (long long)row_g8 * ld;
            q[ks][0] = row_g < tokens ? load_pair(qg, d, head_dim, aligned_pairs) : 0u;
            q[ks][1] = row_g8 < tokens ? load_pair(qg8, d, head_dim, aligned_pairs) : 0u;
            q[ks][2] = row_g < tokens ? load_pair(qg, d + 8, head_dim, aligned_pairs) : 0u;
            q[ks][3] = row_g8 < tokens ? load_pair(qg8, d + 8, head_dim, aligned_pairs) : 0u;
        }
        float o[max_ntiles][4];
        REPA_UNROLL
        for (int nt = 0; nt < max_ntiles; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
        // Running statistics of rows g and g + 8 (base 2). The sums are this lane's share (its columns); the 4 lanes of
        // a row add theirs at the end.
        float max_g = negative_infinity, max_g8 = negative_infinity, sum_g = 0.0f, sum_g8 = 0.0f;

        for (int first = 0; first < tokens; first += key_tile)
        {
            __syncthreads(); // the previous tile's readers are done
            for (int i = threadIdx.x; i < key_tile * pairs_per_row; i += block_threads)
            {
                int r = i / pairs_per_row, c = i % pairs_per_row, s = first + r;
                const bf16* key_row = head + width + (long long)s * ld;
                unsigned int kp = 0u, vp = 0u;
                if (s < tokens)
                {
                    kp = load_pair(key_row, 2 * c, head_dim, aligned_pairs);
                    vp = load_pair(key_row + width, 2 * c, head_dim, aligned_pairs);
                }
                keys[r * key_words + c] = kp;
                values_t[(2 * c) * (2 * value_words) + r] = (unsigned short)low_half(vp);
                values_t[(2 * c + 1) * (2 * value_words) + r] = (unsigned short)high_half(vp);
            }
            __syncthreads();

            // S = Q K^T for this warp's 16 queries and the tile's keys (n-tiles wholly past the tokens skipped: the
            // condition is the same for every lane of the warp).
            float s[key_ntiles][4];
            REPA_UNROLL
            for (int kt = 0; kt < key_ntiles; ++kt)
            {
                s[kt][0] = s[kt][1] = s[kt][2] = s[kt][3] = 0.0f;
                if (first + 8 * kt >= tokens) continue;
                const unsigned int* key_g = keys + (8 * kt + g) * key_words;
                REPA_UNROLL
                for (int ks = 0; ks < max_ksteps; ++ks)
                {
                    if (ks >= ksteps) continue;
                    unsigned int b[2] = {key_g[8 * ks + t], key_g[8 * ks + 4 + t]};
                    mma_bf16_m16n8k16(s[kt], q[ks], b, s[kt]);
                }
            }

            // Online softmax: scale to base 2, mask keys past the tokens, new running maxima (finite: every tile has
            // a key), rescale what was accumulated.
            float tile_max_g = negative_infinity, tile_max_g8 = negative_infinity;
            REPA_UNROLL
            for (int kt = 0; kt < key_ntiles; ++kt)
            {
                REPA_UNROLL
                for (int i = 0; i < 4; ++i)
                {
                    int key = first + 8 * kt + 2 * t + (i & 1);
                    s[kt][i] = key < tokens ? s[kt][i] * scale_log2 : negative_infinity;
                }
                tile_max_g = fmaxf(tile_max_g, fmaxf(s[kt][0], s[kt][1]));
                tile_max_g8 = fmaxf(tile_max_g8, fmaxf(s[kt][2], s[kt][3]));
            }
            tile_max_g = fmaxf(tile_max_g, __shfl_xor_sync(full_warp, tile_max_g, 1));
            tile_max_g = fmaxf(tile_max_g, __shfl_xor_sync(full_warp, tile_max_g, 2));
            tile_max_g8 = fmaxf(tile_max_g8, __shfl_xor_sync(full_warp, tile_max_g8, 1));
            tile_max_g8 = fmaxf(tile_max_g8, __shfl_xor_sync(full_warp, tile_max_g8, 2));
            float new_max_g = fmaxf(max_g, tile_max_g), new_max_g8 = fmaxf(max_g8, tile_max_g8);
            float correction_g = exp2f(max_g - new_max_g), correction_g8 = exp2f(max_g8 - new_max_g8);
            max_g = new_max_g;
            max_g8 = new_max_g8;
            sum_g *= correction_g;
            sum_g8 *= correction_g8;
            REPA_UNROLL
            for (int nt = 0; nt < max_ntiles; ++nt)
            {
                o[nt][0] *= correction_g;
                o[nt][1] *= correction_g;
                o[nt][2] *= correction_g8;
                o[nt][3] *= correction_g8;
            }
            REPA_UNROLL
            for (int kt = 0; kt < key_ntiles; ++kt)
            {
                s[kt][0] = exp2f(s[kt][0] - max_g); // 0 for the masked keys
                s[kt][1] = exp2f(s[kt][1] - max_g);
                s[kt][2] = exp2f(s[kt][2] - max_g8);
                s[kt][3] = exp2f(s[kt][3] - max_g8);
                sum_g += s[kt][0] + s[kt][1];
                sum_g8 += s[kt][2] + s[kt][3];
            }

            // O += P V over the tile's keys, 16 at a time: P's A fragment is the C fragments of key n-tiles 2kk and
            // 2kk + 1 rounded to bf16 pairs; V^T rows give the B fragments.
            REPA_UNROLL
            for (int kk = 0; kk < key_ntiles / 2; ++kk)
            {
                if (first + 16 * kk >= tokens) continue;
                unsigned int p[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                                     pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                     pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
                REPA_UNROLL
                for (int nt = 0; nt < max_ntiles; ++nt)
                {
                    if (nt >= ntiles) continue;
                    const unsigned short* value_g = values_t + (8 * nt + g) * (2 * value_words);
                    unsigned int b[2] = {shared_pair(value_g + 16 * kk + 2 * t),
                                         shared_pair(value_g + 16 * kk + 8 + 2 * t)};
                    mma_bf16_m16n8k16(o[nt], p, b, o[nt]);
                }
            }
        }

        sum_g += __shfl_xor_sync(full_warp, sum_g, 1);
        sum_g += __shfl_xor_sync(full_warp, sum_g, 2);
        sum_g8 += __shfl_xor_sync(full_warp, sum_g8, 1);
        sum_g8 += __shfl_xor_sync(full_warp, sum_g8, 2);
        float inverse_g = 1.0f / sum_g, inverse_g8 = 1.0f / sum_g8;
        bf16* out_g = output + ((long long)n * tokens + row_g) * width + (long long)h * head_dim;
        bf16* out_g8 = out_g + 8LL * width;
        REPA_UNROLL
        for (int nt = 0; nt < max_ntiles; ++nt)
        {
            if (nt >= ntiles) continue;
            int d = 8 * nt + 2 * t;
            if (row_g < tokens)
            {
                if (d < head_dim) out_g[d] = from_float<bf16>(o[nt][0] * inverse_g);
                if (d + 1 < head_dim) out_g[d + 1] = from_float<bf16>(o[nt][1] * inverse_g);
            }
            if (row_g8 < tokens)
            {
                if (d < head_dim) out_g8[d] = from_float<bf16>(o[nt][2] * inverse_g8);
                if (d + 1 < head_dim) out_g8[d + 1] = from_float<bf16>(o[nt][3] * inverse_g8);
            }
        }
        const float ln2 = 0.6931471805599453f;
        if (t == 0 && row_g < tokens) lse[pair * tokens + row_g] = from_float<L>(ln2 * (max_g + log2f(sum_g)));
        if (t == 0 && row_g8 < tokens) lse[pair * tokens + row_g8] = from_float<L>(ln2 * (max_g8 + log2f(sum_g8)));
    }
}

// ---- tensor-core backward ------------------------------------------------------------------------------------------
// The CUDA-core backward's two passes and contract (delta = Di in an fp32 scratch, each dQ / dK / dV row written by the
// one block that owns it, no atomics: deterministic), with every tile product on the tensor cores. head_dim <= 80
// (SiT-XL's 72, and 64): the key pass keeps K and V fragments and the dK and dV accumulators of 16 rows in registers,
// which for 128 would spill; larger head dims take the CUDA-core backward. Blocks of 4 warps own 64 rows (16 per warp);
// the other operand streams through shared memory in tiles of 32 rows, each both row-major (B fragments over features)
// and transposed (B fragments over rows), rows padded so that fragment loads are free of bank conflicts.
// Rounded to bf16 for the MMA, besides the bf16 inputs: P (for dV += P^T dO) and dS (for dQ += dS K, dK += dS^T Q);
// P, dP, dS themselves are fp32 from fp32 products.
constexpr int backward_max_head_dim = 80;
constexpr int backward_ksteps = backward_max_head_dim / 16; // 5
constexpr int backward_ntiles = backward_max_head_dim / 8;  // 10
constexpr int backward_tile = 32;                           // rows of a shared tile
constexpr int backward_tile_ntiles = backward_tile / 8;     // 4
constexpr int row_words = backward_max_head_dim / 2 + 4;    // 44 words per row-major row (44 = 12 mod 32)
constexpr int column_halves = backward_tile + 8;            // 40 halves (20 words, 20 mod 32) per transposed row

/// Rows first .. first + 31 of a qkv / dO slice into a row-major tile of feature pairs and, when transposed is not
/// null, into a transposed tile (feature-major). Zeros past the tokens and past head_dim (up to the padded width).
REPA_DEVICE void load_backward_tile(unsigned int* rows, unsigned short* transposed, const bf16* base, long long ld,
                                    int first, int tokens, int head_dim, bool aligned_pairs)
{
    int pairs_per_row = 8 * ((head_dim + 15) / 16);
    for (int i = threadIdx.x; i < backward_tile * pairs_per_row; i += block_threads)
    {
        int r = i / pairs_per_row, c = i % pairs_per_row, row = first + r;
        unsigned int pair = row < tokens ? load_pair(base + (long long)row * ld, 2 * c, head_dim, aligned_pairs) : 0u;
        rows[r * row_words + c] = pair;
        if (transposed)
        {
            transposed[(2 * c) * column_halves + r] = (unsigned short)low_half(pair);
            transposed[(2 * c + 1) * column_halves + r] = (unsigned short)high_half(pair);
        }
    }
}

/// A fragments (16 rows from row0, features padded to 16) of a qkv / dO slice; zeros past the tokens.
REPA_DEVICE void load_a_fragments(unsigned int (&a)[backward_ksteps][4], const bf16* base, long long ld, int row0,
                                  int tokens, int head_dim, bool aligned_pairs)
{
    int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    int ksteps = (head_dim + 15) / 16;
    const bf16* row_g = base + (long long)(row0 + g) * ld;
    const bf16* row_g8 = row_g + 8 * ld;
    bool live_g = row0 + g < tokens, live_g8 = row0 + g + 8 < tokens;
    REPA_UNROLL
    for (int ks = 0; ks < backward_ksteps; ++ks)
    {
        int d = 16 * ks + 2 * t;
        bool used = ks < ksteps;
        a[ks][0] = used && live_g ? load_pair(row_g, d, head_dim, aligned_pairs) : 0u;
        a[ks][1] = used && live_g8 ? load_pair(row_g8, d, head_dim, aligned_pairs) : 0u;
        a[ks][2] = used && live_g ? load_pair(row_g, d + 8, head_dim, aligned_pairs) : 0u;
        a[ks][3] = used && live_g8 ? load_pair(row_g8, d + 8, head_dim, aligned_pairs) : 0u;
    }
}

/// c[nt] = A (16 x head_dim, fragments a) times the 8-row n-tiles of a row-major shared tile, transposed: c = A R^T.
REPA_DEVICE void product_with_rows(float (&c)[backward_tile_ntiles][4], const unsigned int (&a)[backward_ksteps][4],
                                   const unsigned int* rows, int ksteps)
{
    int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    REPA_UNROLL
    for (int nt = 0; nt < backward_tile_ntiles; ++nt)
    {
        c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.0f;
        const unsigned int* row = rows + (8 * nt + g) * row_words;
        REPA_UNROLL
        for (int ks = 0; ks < backward_ksteps; ++ks)
        {
            if (ks >= ksteps) continue;
            unsigned int b[2] = {row[8 * ks + t], row[8 * ks + 4 + t]};
            mma_bf16_m16n8k16(c[nt], a[ks], b, c[nt]);
        }
    }
}

/// acc += X (16 x 32, fp32 C fragments rounded to bf16) times the 32 rows of a tile held transposed (feature-major).
REPA_DEVICE void accumulate_times_rows(float (&acc)[backward_ntiles][4], const float (&x)[backward_tile_ntiles][4],
                                       const unsigned short* transposed, int ntiles)
{
    int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    REPA_UNROLL
    for (int kk = 0; kk < backward_tile_ntiles / 2; ++kk)
    {
        unsigned int a[4] = {pack_bf16x2(x[2 * kk][0], x[2 * kk][1]), pack_bf16x2(x[2 * kk][2], x[2 * kk][3]),
                             pack_bf16x2(x[2 * kk + 1][0], x[2 * kk + 1][1]),
                             pack_bf16x2(x[2 * kk + 1][2], x[2 * kk + 1][3])};
        REPA_UNROLL
        for (int nt = 0; nt < backward_ntiles; ++nt)
        {
            if (nt >= ntiles) continue;
            const unsigned short* column = transposed + (8 * nt + g) * column_halves;
            unsigned int b[2] = {shared_pair(column + 16 * kk + 2 * t), shared_pair(column + 16 * kk + 8 + 2 * t)};
            mma_bf16_m16n8k16(acc[nt], a, b, acc[nt]);
        }
    }
}

/// The dot product of two bf16 pairs, in fp32.
REPA_DEVICE float dot_bf16x2(unsigned int a, unsigned int b)
{
    return bf16_bits_to_float((unsigned short)low_half(a)) * bf16_bits_to_float((unsigned short)low_half(b)) +
           bf16_bits_to_float((unsigned short)high_half(a)) * bf16_bits_to_float((unsigned short)high_half(b));
}

/// row[d], row[d + 1] += scale (v0, v1) for the features below head_dim (bf16 read, fp32 add, one rounding).
REPA_DEVICE void add_pair(bf16* row, int d, int head_dim, float scale, float v0, float v1)
{
    if (d < head_dim) row[d] = from_float<bf16>(to_float(row[d]) + scale * v0);
    if (d + 1 < head_dim) row[d + 1] = from_float<bf16>(to_float(row[d + 1]) + scale * v1);
}

/// dQ += scale dS K for this block's 64 queries; writes Di = dO . O into delta. Launch as the forward.
template <typename L>
REPA_DEVICE void backward_query(const bf16* qkv, const bf16* output, const bf16* d_output, const L* lse, bf16* d_qkv,
                                float* delta, int batch, int tokens, int heads, int head_dim, float scale)
{
    __shared__ unsigned int keys[backward_tile * row_words];
    __shared__ unsigned int values[backward_tile * row_words];
    __shared__ __align__(16) unsigned short keys_t[backward_max_head_dim * column_halves];
    int width = heads * head_dim;
    long long ld = 3LL * width;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, t = lane & 3;
    int ksteps = (head_dim + 15) / 16, ntiles = (head_dim + 7) / 8;
    bool aligned_pairs = (head_dim & 1) == 0 && (reinterpret_cast<unsigned long long>(qkv) & 3u) == 0 &&
                         (reinterpret_cast<unsigned long long>(d_output) & 3u) == 0 &&
                         (reinterpret_cast<unsigned long long>(output) & 3u) == 0;
    const float log2e = 1.4426950408889634f;
    float scale_log2 = scale * log2e;
    long long pair_count = (long long)batch * heads;
    for (long long pair = blockIdx.y; pair < pair_count; pair += gridDim.y)
    {
        int n = (int)(pair / heads), h = (int)(pair % heads);
        const bf16* head = qkv + (long long)n * tokens * ld + (long long)h * head_dim;
        long long out_offset = (long long)n * tokens * width + (long long)h * head_dim;
        int row0 = blockIdx.x * query_tile + 16 * warp;
        int row_g = row0 + g, row_g8 = row0 + g + 8;
        unsigned int q[backward_ksteps][4], d_o[backward_ksteps][4];
        load_a_fragments(q, head, ld, row0, tokens, head_dim, aligned_pairs);
        load_a_fragments(d_o, d_output + out_offset, width, row0, tokens, head_dim, aligned_pairs);
        // Di of rows g and g + 8: this lane's features of dO (its A fragments) times the same features of O, then the
        // 4 lanes of the row add.
        float di_g = 0.0f, di_g8 = 0.0f;
        {
            const bf16* o_g = output + out_offset + (long long)row_g * width;
            const bf16* o_g8 = o_g + 8LL * width;
            REPA_UNROLL
            for (int ks = 0; ks < backward_ksteps; ++ks)
            {
                if (ks >= ksteps) continue;
                REPA_UNROLL
                for (int half = 0; half < 2; ++half)
                {
                    int d = 16 * ks + 2 * t + 8 * half;
                    unsigned int og = row_g < tokens ? load_pair(o_g, d, head_dim, aligned_pairs) : 0u;
                    unsigned int og8 = row_g8 < tokens ? load_pair(o_g8, d, head_dim, aligned_pairs) : 0u;
                    di_g += dot_bf16x2(d_o[ks][2 * half], og);
                    di_g8 += dot_bf16x2(d_o[ks][2 * half + 1], og8);
                }
            }
        }
        di_g += __shfl_xor_sync(full_warp, di_g, 1);
        di_g += __shfl_xor_sync(full_warp, di_g, 2);
        di_g8 += __shfl_xor_sync(full_warp, di_g8, 1);
        di_g8 += __shfl_xor_sync(full_warp, di_g8, 2);
        if (t == 0 && row_g < tokens) delta[pair * tokens + row_g] = di_g;
        if (t == 0 && row_g8 < tokens) delta[pair * tokens + row_g8] = di_g8;
        float lse_g = row_g < tokens ? to_float(lse[pair * tokens + row_g]) * log2e : 0.0f;
        float lse_g8 = row_g8 < tokens ? to_float(lse[pair * tokens + row_g8]) * log2e : 0.0f;

        float dq[backward_ntiles][4];
        REPA_UNROLL
        for (int nt = 0; nt < backward_ntiles; ++nt) dq[nt][0] = dq[nt][1] = dq[nt][2] = dq[nt][3] = 0.0f;
        for (int first = 0; first < tokens; first += backward_tile)
        {
            __syncthreads();
            load_backward_tile(keys, keys_t, head + width, ld, first, tokens, head_dim, aligned_pairs);
            load_backward_tile(values, nullptr, head + 2 * width, ld, first, tokens, head_dim, aligned_pairs);
            __syncthreads();
            float s[backward_tile_ntiles][4], dp[backward_tile_ntiles][4];
            product_with_rows(s, q, keys, ksteps);
            product_with_rows(dp, d_o, values, ksteps);
            // dS = P (dP - Di), P = exp(scale S - lse) (base 2); 0 for the keys past the tokens.
            REPA_UNROLL
            for (int kt = 0; kt < backward_tile_ntiles; ++kt)
            {
                REPA_UNROLL
                for (int i = 0; i < 4; ++i)
                {
                    int key = first + 8 * kt + 2 * t + (i & 1);
                    float p = key < tokens ? exp2f(s[kt][i] * scale_log2 - (i < 2 ? lse_g : lse_g8)) : 0.0f;
                    s[kt][i] = p * (dp[kt][i] - (i < 2 ? di_g : di_g8));
                }
            }
            accumulate_times_rows(dq, s, keys_t, ntiles);
        }
        bf16* dq_g = d_qkv + (long long)n * tokens * ld + (long long)h * head_dim + (long long)row_g * ld;
        bf16* dq_g8 = dq_g + 8 * ld;
        REPA_UNROLL
        for (int nt = 0; nt < backward_ntiles; ++nt)
        {
            if (nt >= ntiles) continue;
            int d = 8 * nt + 2 * t;
            if (row_g < tokens) add_pair(dq_g, d, head_dim, scale, dq[nt][0], dq[nt][1]);
            if (row_g8 < tokens) add_pair(dq_g8, d, head_dim, scale, dq[nt][2], dq[nt][3]);
        }
    }
}

/// dK += scale dS^T Q and dV += P^T dO for this block's 64 keys, over every query (reads delta). Launch as the forward.
template <typename L>
REPA_DEVICE void backward_key(const bf16* qkv, const bf16* d_output, const L* lse, const float* delta, bf16* d_qkv,
                              int batch, int tokens, int heads, int head_dim, float scale)
{
    __shared__ unsigned int queries[backward_tile * row_words];
    __shared__ unsigned int d_outputs[backward_tile * row_words];
    __shared__ __align__(16) unsigned short queries_t[backward_max_head_dim * column_halves];
    __shared__ __align__(16) unsigned short d_outputs_t[backward_max_head_dim * column_halves];
    __shared__ float lse_tile[backward_tile];
    __shared__ float delta_tile[backward_tile];
    int width = heads * head_dim;
    long long ld = 3LL * width;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, t = lane & 3;
    int ksteps = (head_dim + 15) / 16, ntiles = (head_dim + 7) / 8;
    bool aligned_pairs = (head_dim & 1) == 0 && (reinterpret_cast<unsigned long long>(qkv) & 3u) == 0 &&
                         (reinterpret_cast<unsigned long long>(d_output) & 3u) == 0;
    const float log2e = 1.4426950408889634f;
    float scale_log2 = scale * log2e;
    long long pair_count = (long long)batch * heads;
    for (long long pair = blockIdx.y; pair < pair_count; pair += gridDim.y)
    {
        int n = (int)(pair / heads), h = (int)(pair % heads);
        const bf16* head = qkv + (long long)n * tokens * ld + (long long)h * head_dim;
        const bf16* d_out_head = d_output + (long long)n * tokens * width + (long long)h * head_dim;
        int row0 = blockIdx.x * query_tile + 16 * warp; // this warp's first key
        int key_g = row0 + g, key_g8 = row0 + g + 8;
        unsigned int k[backward_ksteps][4], v[backward_ksteps][4];
        load_a_fragments(k, head + width, ld, row0, tokens, head_dim, aligned_pairs);
        load_a_fragments(v, head + 2 * width, ld, row0, tokens, head_dim, aligned_pairs);
        float dk[backward_ntiles][4], dv[backward_ntiles][4];
        REPA_UNROLL
        for (int nt = 0; nt < backward_ntiles; ++nt)
        {
            dk[nt][0] = dk[nt][1] = dk[nt][2] = dk[nt][3] = 0.0f;
            dv[nt][0] = dv[nt][1] = dv[nt][2] = dv[nt][3] = 0.0f;
        }
        for (int first = 0; first < tokens; first += backward_tile)
        {
            __syncthreads();
            load_backward_tile(queries, queries_t, head, ld, first, tokens, head_dim, aligned_pairs);
            load_backward_tile(d_outputs, d_outputs_t, d_out_head, width, first, tokens, head_dim, aligned_pairs);
            if (threadIdx.x < backward_tile)
            {
                int query = first + threadIdx.x;
                lse_tile[threadIdx.x] = query < tokens ? to_float(lse[pair * tokens + query]) * log2e : 0.0f;
                delta_tile[threadIdx.x] = query < tokens ? delta[pair * tokens + query] : 0.0f;
            }
            __syncthreads();
            // S^T = K Q^T and dP^T = V dO^T: rows are this warp's keys, columns the tile's queries.
            float s[backward_tile_ntiles][4], dp[backward_tile_ntiles][4];
            product_with_rows(s, k, queries, ksteps);
            product_with_rows(dp, v, d_outputs, ksteps);
            REPA_UNROLL
            for (int qt = 0; qt < backward_tile_ntiles; ++qt)
            {
                REPA_UNROLL
                for (int i = 0; i < 4; ++i)
                {
                    int column = 8 * qt + 2 * t + (i & 1);
                    float p = first + column < tokens ? exp2f(s[qt][i] * scale_log2 - lse_tile[column]) : 0.0f;
                    s[qt][i] = p;                                     // P^T
                    dp[qt][i] = p * (dp[qt][i] - delta_tile[column]); // dS^T
                }
            }
            accumulate_times_rows(dv, s, d_outputs_t, ntiles);
            accumulate_times_rows(dk, dp, queries_t, ntiles);
        }
        bf16* dk_g = d_qkv + (long long)n * tokens * ld + (long long)h * head_dim + width + (long long)key_g * ld;
        bf16* dk_g8 = dk_g + 8 * ld;
        REPA_UNROLL
        for (int nt = 0; nt < backward_ntiles; ++nt)
        {
            if (nt >= ntiles) continue;
            int d = 8 * nt + 2 * t;
            if (key_g < tokens)
            {
                add_pair(dk_g, d, head_dim, scale, dk[nt][0], dk[nt][1]);
                add_pair(dk_g + width, d, head_dim, 1.0f, dv[nt][0], dv[nt][1]);
            }
            if (key_g8 < tokens)
            {
                add_pair(dk_g8, d, head_dim, scale, dk[nt][2], dk[nt][3]);
                add_pair(dk_g8 + width, d, head_dim, 1.0f, dv[nt][2], dv[nt][3]);
            }
        }
    }
}

} // namespace mma

} // namespace attention
} // namespace repa

using repa::bf16;

extern "C" __global__ void attention_forward_f32(const float* qkv, float* output, float* lse, int batch, int tokens,
                                                 int heads, int head_dim, float scale)
{
    repa::attention::forward<float, float>(qkv, output, lse, batch, tokens, heads, head_dim, scale);
}
REPA_KERNEL(attention_forward_f32);

extern "C" __global__ void attention_backward_query_f32(const float* qkv, const float* output, const float* d_output,
                                                        const float* lse, float* d_qkv, float* delta, int batch,
                                                        int tokens, int heads, int head_dim, float scale)
{
    repa::attention::backward_query<float, float>(qkv, output, d_output, lse, d_qkv, delta, batch, tokens, heads,
                                                  head_dim, scale);
}
REPA_KERNEL(attention_backward_query_f32);

extern "C" __global__ void attention_backward_key_f32(const float* qkv, const float* d_output, const float* lse,
                                                      const float* delta, float* d_qkv, int batch, int tokens,
                                                      int heads, int head_dim, float scale)
{
    repa::attention::backward_key<float, float>(qkv, d_output, lse, delta, d_qkv, batch, tokens, heads, head_dim,
                                                scale);
}
REPA_KERNEL(attention_backward_key_f32);

extern "C" __global__ void attention_forward_bf16(const bf16* qkv, bf16* output, bf16* lse, int batch, int tokens,
                                                  int heads, int head_dim, float scale)
{
    repa::attention::forward<bf16, bf16>(qkv, output, lse, batch, tokens, heads, head_dim, scale);
}
REPA_KERNEL(attention_forward_bf16);

extern "C" __global__ void attention_backward_query_bf16(const bf16* qkv, const bf16* output, const bf16* d_output,
                                                         const bf16* lse, bf16* d_qkv, float* delta, int batch,
                                                         int tokens, int heads, int head_dim, float scale)
{
    repa::attention::backward_query<bf16, bf16>(qkv, output, d_output, lse, d_qkv, delta, batch, tokens, heads,
                                                head_dim, scale);
}
REPA_KERNEL(attention_backward_query_bf16);

extern "C" __global__ void attention_backward_key_bf16(const bf16* qkv, const bf16* d_output, const bf16* lse,
                                                       const float* delta, bf16* d_qkv, int batch, int tokens,
                                                       int heads, int head_dim, float scale)
{
    repa::attention::backward_key<bf16, bf16>(qkv, d_output, lse, delta, d_qkv, batch, tokens, heads, head_dim,
                                              scale);
}
REPA_KERNEL(attention_backward_key_bf16);

extern "C" __global__ void attention_forward_bf16_f32(const bf16* qkv, bf16* output, float* lse, int batch, int tokens,
                                                      int heads, int head_dim, float scale)
{
    repa::attention::forward<bf16, float>(qkv, output, lse, batch, tokens, heads, head_dim, scale);
}
REPA_KERNEL(attention_forward_bf16_f32);

extern "C" __global__ void attention_backward_query_bf16_f32(const bf16* qkv, const bf16* output, const bf16* d_output,
                                                             const float* lse, bf16* d_qkv, float* delta, int batch,
                                                             int tokens, int heads, int head_dim, float scale)
{
    repa::attention::backward_query<bf16, float>(qkv, output, d_output, lse, d_qkv, delta, batch, tokens, heads,
                                                 head_dim, scale);
}
REPA_KERNEL(attention_backward_query_bf16_f32);

extern "C" __global__ void attention_backward_key_bf16_f32(const bf16* qkv, const bf16* d_output, const float* lse,
                                                           const float* delta, bf16* d_qkv, int batch, int tokens,
                                                           int heads, int head_dim, float scale)
{
    repa::attention::backward_key<bf16, float>(qkv, d_output, lse, delta, d_qkv, batch, tokens, heads, head_dim,
                                               scale);
}
REPA_KERNEL(attention_backward_key_bf16_f32);


extern "C" __global__ void attention_forward_mma_bf16(const bf16* qkv, bf16* output, bf16* lse, int batch, int tokens,
                                                      int heads, int head_dim, float scale)
{
    repa::attention::mma::forward<bf16>(qkv, output, lse, batch, tokens, heads, head_dim, scale);
}
REPA_KERNEL(attention_forward_mma_bf16);

extern "C" __global__ void attention_forward_mma_bf16_f32(const bf16* qkv, bf16* output, float* lse, int batch,
                                                          int tokens, int heads, int head_dim, float scale)
{
    repa::attention::mma::forward<float>(qkv, output, lse, batch, tokens, heads, head_dim, scale);
}
REPA_KERNEL(attention_forward_mma_bf16_f32);

extern "C" __global__ void attention_backward_query_mma_bf16(const bf16* qkv, const bf16* output, const bf16* d_output,
                                                             const bf16* lse, bf16* d_qkv, float* delta, int batch,
                                                             int tokens, int heads, int head_dim, float scale)
{
    repa::attention::mma::backward_query<bf16>(qkv, output, d_output, lse, d_qkv, delta, batch, tokens, heads,
                                               head_dim, scale);
}
REPA_KERNEL(attention_backward_query_mma_bf16);

extern "C" __global__ void attention_backward_key_mma_bf16(const bf16* qkv, const bf16* d_output, const bf16* lse,
                                                           const float* delta, bf16* d_qkv, int batch, int tokens,
                                                           int heads, int head_dim, float scale)
{
    repa::attention::mma::backward_key<bf16>(qkv, d_output, lse, delta, d_qkv, batch, tokens, heads, head_dim, scale);
}
REPA_KERNEL(attention_backward_key_mma_bf16);

extern "C" __global__ void attention_backward_query_mma_bf16_f32(const bf16* qkv, const bf16* output,
                                                                 const bf16* d_output, const float* lse, bf16* d_qkv,
                                                                 float* delta, int batch, int tokens, int heads,
                                                                 int head_dim, float scale)
{
    repa::attention::mma::backward_query<float>(qkv, output, d_output, lse, d_qkv, delta, batch, tokens, heads,
                                                head_dim, scale);
}
REPA_KERNEL(attention_backward_query_mma_bf16_f32);

extern "C" __global__ void attention_backward_key_mma_bf16_f32(const bf16* qkv, const bf16* d_output, const float* lse,
                                                               const float* delta, bf16* d_qkv, int batch, int tokens,
                                                               int heads, int head_dim, float scale)
{
    repa::attention::mma::backward_key<float>(qkv, d_output, lse, delta, d_qkv, batch, tokens, heads, head_dim, scale);
}
REPA_KERNEL(attention_backward_key_mma_bf16_f32);
