// Test kernels for the CUDA emulator (kernels/emu). Real CUDA C++: NVRTC compiles this file as it is (no headers),
// and the emulator build compiles it with g++ into librepa_cuda_emu.so, where EmulatorTests.cs and emu_selftest launch
// them. Every kernel exercises one part of the execution model; the expected results are computed on the host.

#ifdef REPA_CUDA_EMU
#define EMU_TEST_KERNEL(name) REPA_EMU_REGISTER(name)
#else
#define EMU_TEST_KERNEL(name) static_assert(true, "")
#endif

#define TILE 32

// Shared-memory tile transpose: out[c][r] = in[r][c] for a rows x cols row-major matrix. Block (32, 8); each block
// moves one 32 x 32 tile through shared memory (padded to 33 columns), so threads read what others wrote before the
// barrier.
extern "C" __global__ void emu_test_transpose(const float* __restrict__ in, float* __restrict__ out, int rows, int cols) {
  __shared__ float tile[TILE][TILE + 1];
  const int c0 = blockIdx.x * TILE, r0 = blockIdx.y * TILE;
  for (int dy = threadIdx.y; dy < TILE; dy += blockDim.y) {
    const int r = r0 + dy, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[dy][threadIdx.x] = in[(long long)r * cols + c];
  }
  __syncthreads();
  for (int dy = threadIdx.y; dy < TILE; dy += blockDim.y) {
    const int c = c0 + dy, r = r0 + threadIdx.x;  // output row c, column r
    if (c < cols && r < rows) out[(long long)c * rows + r] = tile[threadIdx.x][dy];
  }
}
EMU_TEST_KERNEL(emu_test_transpose);

// Block tree reduction with __syncthreads: out[blockIdx.x] = sum of the block's grid-stride share of in[0, n).
// blockDim.x must be a power of two <= 1024.
extern "C" __global__ void emu_test_block_sum(const float* __restrict__ in, float* __restrict__ out, int n) {
  __shared__ float partial[1024];
  float s = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) s += in[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}
EMU_TEST_KERNEL(emu_test_block_sum);

static __device__ __forceinline__ int warp_sum_xor(int v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Warp shuffles, 5 results per thread t (in: one int per thread):
// [5t+0] xor butterfly sum of the warp (every lane), [5t+1] __shfl_down_sync tree sum (lane 0 exact), [5t+2] inclusive
// prefix sum by __shfl_up_sync, [5t+3] the value of lane (lane + 3) % 32 by __shfl_sync, [5t+4] the xor sum within
// segments of 8 lanes (width 8).
extern "C" __global__ void emu_test_warp_shuffles(const int* __restrict__ in, int* __restrict__ out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x & 31;
  const int v = in[t];
  int down = v;
  for (int offset = 16; offset > 0; offset >>= 1) down += __shfl_down_sync(0xffffffffu, down, offset);
  int scan = v;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(0xffffffffu, scan, offset);
    if (lane >= offset) scan += other;
  }
  int segment = v;
  for (int offset = 4; offset > 0; offset >>= 1) segment += __shfl_xor_sync(0xffffffffu, segment, offset, 8);
  out[5 * t + 0] = warp_sum_xor(v);
  out[5 * t + 1] = down;
  out[5 * t + 2] = scan;
  out[5 * t + 3] = __shfl_sync(0xffffffffu, v, lane + 3);  // srcLane beyond 31 wraps modulo the width
  out[5 * t + 4] = segment;
}
EMU_TEST_KERNEL(emu_test_warp_shuffles);

// Warp-level float sum of 64-bit values (doubles move through shuffles whole): out[warp] = sum of its 32 inputs.
extern "C" __global__ void emu_test_warp_sum_double(const double* __restrict__ in, double* __restrict__ out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  double v = in[t];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0) out[t / 32] = v;
}
EMU_TEST_KERNEL(emu_test_warp_sum_double);

// Votes: out[3t] = __ballot_sync, out[3t+1] = __any_sync, out[3t+2] = __all_sync of (in[t] > 0) over the full warp;
// then the lanes with in[t] > 1 vote among themselves only (a partial mask from a ballot): out2[t] = their ballot of
// (in[t] > 2), 0 for the others.
extern "C" __global__ void emu_test_votes(const int* __restrict__ in, unsigned* __restrict__ out, unsigned* __restrict__ out2) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = in[t] > 0;
  out[3 * t + 0] = __ballot_sync(0xffffffffu, p);
  out[3 * t + 1] = (unsigned)__any_sync(0xffffffffu, p);
  out[3 * t + 2] = (unsigned)__all_sync(0xffffffffu, p);
  const unsigned group = __ballot_sync(0xffffffffu, in[t] > 1);
  unsigned inner = 0;
  if (in[t] > 1) inner = __ballot_sync(group, in[t] > 2);
  out2[t] = inner;
}
EMU_TEST_KERNEL(emu_test_votes);

// Histogram: per-block counts in shared memory by shared atomics, merged into bins by global atomics; many blocks run
// at once on the emulator's thread pool, so the global adds race for real.
extern "C" __global__ void emu_test_histogram(const int* __restrict__ values, int n, unsigned* __restrict__ bins, int nbins) {
  __shared__ unsigned local[256];
  for (int b = threadIdx.x; b < nbins; b += blockDim.x) local[b] = 0u;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) atomicAdd(&local[values[i]], 1u);
  __syncthreads();
  for (int b = threadIdx.x; b < nbins; b += blockDim.x)
    if (local[b] != 0u) atomicAdd(&bins[b], local[b]);
}
EMU_TEST_KERNEL(emu_test_histogram);

// Other atomics on global memory from every thread: results[0] atomicAdd(float) of x, results[1] atomicMax(int) of
// the keys, results[2] atomicMin(int), results[3] a counter incremented by an atomicCAS loop, results[4] atomicExch's
// last value is any key (checked by membership), results[5] atomicAdd(unsigned long long) of the keys' squares.
extern "C" __global__ void emu_test_atomics(const float* __restrict__ x, const int* __restrict__ keys, int n,
                                            float* __restrict__ sum, int* __restrict__ results,
                                            unsigned long long* __restrict__ squares) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    atomicAdd(sum, x[i]);
    atomicMax(&results[0], keys[i]);
    atomicMin(&results[1], keys[i]);
    int old = results[2], assumed;
    do {
      assumed = old;
      old = atomicCAS(&results[2], assumed, assumed + 1);
    } while (old != assumed);
    atomicExch(&results[3], keys[i]);
    atomicAdd(squares, (unsigned long long)((long long)keys[i] * keys[i]));
  }
}
EMU_TEST_KERNEL(emu_test_atomics);

// Dynamic shared memory (sized by the launch): each block reverses its blockDim.x-element chunk of in.
extern "C" __global__ void emu_test_dynamic_shared(const float* __restrict__ in, float* __restrict__ out, int n) {
  extern __shared__ float chunk[];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  chunk[threadIdx.x] = i < n ? in[i] : 0.0f;
  __syncthreads();
  const int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - threadIdx.x);
  if (j < n) out[j] = chunk[threadIdx.x];
}
EMU_TEST_KERNEL(emu_test_dynamic_shared);

// 3-D grids and blocks: thread (block b, thread t) writes 8 ints at its global linear id:
// blockIdx.xyz, threadIdx.xyz, gridDim packed as x*10000+y*100+z, blockDim packed the same way.
extern "C" __global__ void emu_test_grid3d(int* __restrict__ out) {
  const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const int id = block * (blockDim.x * blockDim.y * blockDim.z) + thread;
  int* o = out + 8 * id;
  o[0] = blockIdx.x;
  o[1] = blockIdx.y;
  o[2] = blockIdx.z;
  o[3] = threadIdx.x;
  o[4] = threadIdx.y;
  o[5] = threadIdx.z;
  o[6] = gridDim.x * 10000 + gridDim.y * 100 + gridDim.z;
  o[7] = blockDim.x * 10000 + blockDim.y * 100 + blockDim.z;
}
EMU_TEST_KERNEL(emu_test_grid3d);

// __syncthreads_count/_and/_or of (in[t] > 0) per block: out[3 * block + 0..2].
extern "C" __global__ void emu_test_sync_votes(const int* __restrict__ in, int* __restrict__ out) {
  const int p = in[blockIdx.x * blockDim.x + threadIdx.x] > 0;
  const int count = __syncthreads_count(p);
  const int all = __syncthreads_and(p);
  const int any = __syncthreads_or(p);
  if (threadIdx.x == 0) {
    out[3 * blockIdx.x + 0] = count;
    out[3 * blockIdx.x + 1] = all;
    out[3 * blockIdx.x + 2] = any;
  }
}
EMU_TEST_KERNEL(emu_test_sync_votes);

static __device__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}
static __device__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// A realistic fused kernel: row softmax of a rows x cols matrix, one block of blockDim.x threads (a multiple of 32)
// per row; warp reductions, then a cross-warp reduction through shared memory; float4 loads when cols % 4 == 0.
extern "C" __global__ void emu_test_softmax(const float* __restrict__ x, float* __restrict__ y, int cols) {
  __shared__ float scratch[32];
  const float* row = x + (long long)blockIdx.x * cols;
  float* out = y + (long long)blockIdx.x * cols;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float m = -__int_as_float(0x7f800000);  // -infinity (no math.h under NVRTC)
  if (cols % 4 == 0) {
    for (int c = 4 * threadIdx.x; c < cols; c += 4 * blockDim.x) {
      const float4 v = *reinterpret_cast<const float4*>(row + c);
      m = fmaxf(m, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
    }
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, row[c]);
  }
  m = warp_max(m);
  if (lane == 0) scratch[warp] = m;
  __syncthreads();
  m = lane < warps ? scratch[lane] : -__int_as_float(0x7f800000);
  m = warp_max(m);
  __syncthreads();
  float s = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) s += __expf(row[c] - m);
  s = warp_sum(s);
  if (lane == 0) scratch[warp] = s;
  __syncthreads();
  s = lane < warps ? scratch[lane] : 0.0f;
  s = warp_sum(s);
  const float inv = __fdividef(1.0f, s);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[c] = __expf(row[c] - m) * inv;
}
EMU_TEST_KERNEL(emu_test_softmax);

// Math built-ins, 8 results per element: __expf(x), __logf(|x| + 1), rsqrtf(x^2 + 1), tanhf(x), __fdividef(x, 3),
// __float2int_rn(4x) (ties to even; 0 unless finite), __saturatef(x), isnan(x) + 2 signbit(x).
extern "C" __global__ void emu_test_math(const float* __restrict__ x, float* __restrict__ y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  float* o = y + 8 * i;
  o[0] = __expf(v);
  o[1] = __logf(fabsf(v) + 1.0f);
  o[2] = rsqrtf(v * v + 1.0f);
  o[3] = tanhf(v);
  o[4] = __fdividef(v, 3.0f);
  o[5] = isfinite(v) ? (float)__float2int_rn(4.0f * v) : 0.0f;
  o[6] = __saturatef(v);
  o[7] = (float)((isnan(v) ? 1 : 0) + (signbit(v) ? 2 : 0));
}
EMU_TEST_KERNEL(emu_test_math);

// Deliberately broken: threads with threadIdx.x >= half return before the barrier the others wait at. On a GPU this
// is undefined (it may hang); the emulator reports it as a deadlock.
extern "C" __global__ void emu_test_deadlock(float* __restrict__ out, int half) {
  if ((int)threadIdx.x >= half) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}
EMU_TEST_KERNEL(emu_test_deadlock);

// Deliberately broken: half of each warp shuffles while the other half waits at __syncthreads.
extern "C" __global__ void emu_test_divergent_collectives(int* __restrict__ out) {
  int v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  else __syncthreads();
  out[threadIdx.x] = v;
}
EMU_TEST_KERNEL(emu_test_divergent_collectives);

// Stops the launch with __trap() when any value equals `poison` (the emulator's CUDA_ERROR_ASSERT path).
extern "C" __global__ void emu_test_trap(const int* __restrict__ values, int n, int poison) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && values[i] == poison) __trap();
}
EMU_TEST_KERNEL(emu_test_trap);
