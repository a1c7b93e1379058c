// Self-test of the CUDA emulator through its exported C API (CTest: emu_selftest, emu_nvrtc_entries). It launches the
// test kernels of emu_test_kernels.cu and checks them against host references, checks the failure paths (deadlock,
// trap, unknown kernel, bad pointers) and GEMM, and prints the cost of a coroutine switch.
//   emu_selftest                     all checks
//   emu_selftest --nvrtc file.cu     compile file.cu with NVRTC (dlopen'ed; exit 77 when absent) and resolve the PTX's
//                                    .entry names through cuModuleLoadData / cuModuleGetFunction
#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "emu_api.h"

namespace {

int failures = 0;

#define CHECK(condition, ...)                                    \
  do {                                                           \
    if (!(condition)) {                                          \
      ++failures;                                                \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #condition); \
      std::printf(__VA_ARGS__);                                  \
      std::printf("\n");                                         \
    }                                                            \
  } while (0)

#define CU(call)                                                                                  \
  do {                                                                                            \
    const CUresult r_ = (call);                                                                   \
    if (r_ != CUDA_SUCCESS) {                                                                     \
      std::printf("FAIL %s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call, r_, repaEmuLastError()); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

struct Buffer {
  CUdeviceptr pointer = 0;
  explicit Buffer(std::size_t bytes) { CU(cuMemAlloc_v2(&pointer, bytes)); }
  ~Buffer() { cuMemFree_v2(pointer); }
  template <class T>
  void upload(const std::vector<T>& v) { CU(cuMemcpyHtoD_v2(pointer, v.data(), v.size() * sizeof(T))); }
  template <class T>
  std::vector<T> download(std::size_t count) {
    std::vector<T> v(count);
    CU(cuMemcpyDtoH_v2(v.data(), pointer, count * sizeof(T)));
    return v;
  }
};

CUmodule module_of_all_kernels() {
  std::string ptx = ".version 7.8\n.target sm_80\n.address_size 64\n";
  for (int i = 0; i < repaEmuKernelCount(); ++i) ptx += ".visible .entry " + std::string(repaEmuKernelName(i)) + "(\n)\n{\n\tret;\n}\n";
  CUmodule module;
  CU(cuModuleLoadData(&module, ptx.c_str()));
  return module;
}

CUfunction function(CUmodule module, const char* name) {
  CUfunction f;
  CU(cuModuleGetFunction(&f, module, name));
  return f;
}

void test_transpose(CUmodule m) {
  const int rows = 45, cols = 70;
  std::vector<float> in(static_cast<std::size_t>(rows) * cols);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i) * 0.5f - 3.0f;
  Buffer a(in.size() * 4), b(in.size() * 4);
  a.upload(in);
  CUdeviceptr pa = a.pointer, pb = b.pointer;
  int r = rows, c = cols;
  void* params[] = {&pa, &pb, &r, &c};
  CU(cuLaunchKernel(function(m, "emu_test_transpose"), (cols + 31) / 32, (rows + 31) / 32, 1, 32, 8, 1, 0, nullptr,
                    params, nullptr));
  const auto out = b.download<float>(in.size());
  int bad = 0;
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) bad += out[static_cast<std::size_t>(j) * rows + i] != in[static_cast<std::size_t>(i) * cols + j];
  CHECK(bad == 0, "%d transposed elements differ", bad);
}

void test_warp_shuffles(CUmodule m) {
  const int threads = 96;
  std::vector<int> in(threads);
  for (int t = 0; t < threads; ++t) in[t] = (t * 7919) % 101 - 50;
  Buffer a(threads * 4), b(threads * 5 * 4);
  a.upload(in);
  CUdeviceptr pa = a.pointer, pb = b.pointer;
  void* params[] = {&pa, &pb};
  CU(cuLaunchKernel(function(m, "emu_test_warp_shuffles"), 1, 1, 1, threads, 1, 1, 0, nullptr, params, nullptr));
  const auto out = b.download<int>(threads * 5);
  int bad = 0;
  for (int t = 0; t < threads; ++t) {
    const int base = t & ~31, lane = t & 31;
    int sum = 0, scan = 0, segment = 0;
    for (int l = 0; l < 32; ++l) sum += in[base + l];
    for (int l = 0; l <= lane; ++l) scan += in[base + l];
    for (int l = lane & ~7; l < (lane & ~7) + 8; ++l) segment += in[base + l];
    bad += out[5 * t] != sum;
    bad += lane == 0 && out[5 * t + 1] != sum;
    bad += out[5 * t + 2] != scan;
    bad += out[5 * t + 3] != in[base + (lane + 3) % 32];
    bad += out[5 * t + 4] != segment;
  }
  CHECK(bad == 0, "%d shuffle results differ", bad);
}

void test_histogram(CUmodule m) {
  const int n = 100000, bins = 37;
  std::vector<int> values(n);
  std::vector<unsigned> expected(bins, 0);
  for (int i = 0; i < n; ++i) {
    values[i] = static_cast<int>((static_cast<unsigned>(i) * 2654435761u) % bins);
    ++expected[static_cast<std::size_t>(values[i])];
  }
  Buffer v(n * 4), h(bins * 4);
  v.upload(values);
  CU(cuMemsetD32_v2(h.pointer, 0, bins));
  CUdeviceptr pv = v.pointer, ph = h.pointer;
  int count = n, nb = bins;
  void* params[] = {&pv, &count, &ph, &nb};
  CU(cuLaunchKernel(function(m, "emu_test_histogram"), 64, 1, 1, 128, 1, 1, 0, nullptr, params, nullptr));
  CHECK(h.download<unsigned>(bins) == expected, "histogram differs");
}

void test_dynamic_shared_with_extra(CUmodule m) {
  const int n = 1000, block = 128;
  std::vector<float> in(n);
  for (int i = 0; i < n; ++i) in[i] = static_cast<float>(i);
  Buffer a(n * 4), b(n * 4);
  a.upload(in);
  CU(cuMemsetD32_v2(b.pointer, 0, n));
  // Arguments packed CUDA-style in one buffer (pointer, pointer, int): cuLaunchKernel's `extra` path.
  struct {
    CUdeviceptr in, out;
    int n;
  } packed{a.pointer, b.pointer, n};
  std::size_t size = sizeof packed;
  void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, &packed, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
  CU(cuLaunchKernel(function(m, "emu_test_dynamic_shared"), (n + block - 1) / block, 1, 1, block, 1, 1, block * 4,
                    nullptr, nullptr, extra));
  const auto out = b.download<float>(n);
  int bad = 0;
  for (int blk = 0; blk * block < n; ++blk)
    for (int t = 0; t < block; ++t) {
      const int j = blk * block + (block - 1 - t), i = blk * block + t;
      if (j < n) bad += out[j] != (i < n ? in[i] : 0.0f);
    }
  CHECK(bad == 0, "%d reversed elements differ", bad);
}

void test_mma(CUmodule m) {
  // repa::mma_bf16_m16n8k16 (kernels/common.cuh) against a plain matrix product. The fragments are packed here from
  // the PTX ISA's statement of the layout ("Matrix Fragments for mma.m16n8k16 with floating point type"), written out
  // independently of the emulator's gather: g = lane / 4, t = lane % 4;
  //   A (16 x 16, row): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..2t+1], a2 = A[g][2t+8..2t+9], a3 = A[g+8][2t+8..2t+9]
  //   B (16 x 8, col):  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]          (lower index in the low 16 bits)
  //   C, D (16 x 8):    c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
  // Values are multiples of 1/8 in [-1, 1], so bf16 holds them and every fp32 sum is exact: the result must be exact.
  const int warps = 3, lanes = 32 * warps;
  std::vector<float> a_matrix(warps * 256), b_matrix(warps * 128), c_matrix(warps * 128);
  unsigned seed = 12345u;
  auto next = [&seed]() {
    seed = seed * 1664525u + 1013904223u;
    return static_cast<float>(static_cast<int>((seed >> 16) % 17u) - 8) / 8.0f;
  };
  for (float& v : a_matrix) v = next();
  for (float& v : b_matrix) v = next();
  for (float& v : c_matrix) v = next();
  auto bits = [](float v) {
    std::uint32_t u;
    std::memcpy(&u, &v, 4);
    return u >> 16;  // exact: the values have at most 4 significant bits
  };
  auto pair = [&bits](float low, float high) { return bits(low) | (bits(high) << 16); };
  std::vector<std::uint32_t> a_frag(lanes * 4), b_frag(lanes * 2);
  std::vector<float> c_frag(lanes * 4);
  for (int w = 0; w < warps; ++w) {
    const float* A = &a_matrix[w * 256];  // A[r][k] = A[16 r + k]
    const float* B = &b_matrix[w * 128];  // B[k][n] = B[8 k + n]
    const float* C = &c_matrix[w * 128];  // C[r][n] = C[8 r + n]
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4, l = 32 * w + lane;
      a_frag[4 * l + 0] = pair(A[16 * g + 2 * t], A[16 * g + 2 * t + 1]);
      a_frag[4 * l + 1] = pair(A[16 * (g + 8) + 2 * t], A[16 * (g + 8) + 2 * t + 1]);
      a_frag[4 * l + 2] = pair(A[16 * g + 2 * t + 8], A[16 * g + 2 * t + 9]);
      a_frag[4 * l + 3] = pair(A[16 * (g + 8) + 2 * t + 8], A[16 * (g + 8) + 2 * t + 9]);
      b_frag[2 * l + 0] = pair(B[8 * (2 * t) + g], B[8 * (2 * t + 1) + g]);
      b_frag[2 * l + 1] = pair(B[8 * (2 * t + 8) + g], B[8 * (2 * t + 9) + g]);
      c_frag[4 * l + 0] = C[8 * g + 2 * t];
      c_frag[4 * l + 1] = C[8 * g + 2 * t + 1];
      c_frag[4 * l + 2] = C[8 * (g + 8) + 2 * t];
      c_frag[4 * l + 3] = C[8 * (g + 8) + 2 * t + 1];
    }
  }
  Buffer da(a_frag.size() * 4), db(b_frag.size() * 4), dc(c_frag.size() * 4), dd(c_frag.size() * 4);
  da.upload(a_frag);
  db.upload(b_frag);
  dc.upload(c_frag);
  CUdeviceptr pa = da.pointer, pb = db.pointer, pc = dc.pointer, pd = dd.pointer;
  void* params[] = {&pa, &pb, &pc, &pd};
  // One block of 3 warps: each warp meets in its own slots of the exchange table.
  CU(cuLaunchKernel(function(m, "emu_mma_bf16_m16n8k16"), 1, 1, 1, lanes, 1, 1, 0, nullptr, params, nullptr));
  const auto d_frag = dd.download<float>(lanes * 4);
  int bad = 0;
  for (int w = 0; w < warps; ++w) {
    const float* A = &a_matrix[w * 256];
    const float* B = &b_matrix[w * 128];
    const float* C = &c_matrix[w * 128];
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4, l = 32 * w + lane;
      for (int i = 0; i < 4; ++i) {
        const int row = i < 2 ? g : g + 8, column = 2 * t + (i & 1);
        double expected = C[8 * row + column];
        for (int k = 0; k < 16; ++k) expected += 2.0 * A[16 * row + k] * B[8 * k + column];
        if (d_frag[4 * l + i] != static_cast<float>(expected)) {
          if (bad < 5)
            std::printf("mma: warp %d lane %d d[%d] (row %d, column %d) = %g, expected %g\n", w, lane, i, row, column,
                        d_frag[4 * l + i], expected);
          ++bad;
        }
      }
    }
  }
  CHECK(bad == 0, "%d of %d MMA results differ from 2 A B + C", bad, lanes * 4);
}

void test_failures(CUmodule m) {
  Buffer out(64 * 4);
  CUdeviceptr po = out.pointer;
  int half = 16;
  void* params[] = {&po, &half};
  CUresult r = cuLaunchKernel(function(m, "emu_test_deadlock"), 2, 1, 1, 32, 1, 1, 0, nullptr, params, nullptr);
  CHECK(r == CUDA_ERROR_LAUNCH_FAILED, "deadlock returned %d", r);
  CHECK(std::strstr(repaEmuLastError(), "deadlock") != nullptr, "message: %s", repaEmuLastError());
  std::printf("deadlock message: %s\n", repaEmuLastError());

  void* params2[] = {&po};
  r = cuLaunchKernel(function(m, "emu_test_divergent_collectives"), 1, 1, 1, 64, 1, 1, 0, nullptr, params2, nullptr);
  CHECK(r == CUDA_ERROR_LAUNCH_FAILED, "divergent collectives returned %d", r);

  std::vector<int> values(300, 1);
  values[211] = 7;
  Buffer v(300 * 4);
  v.upload(values);
  CUdeviceptr pv = v.pointer;
  int n = 300, poison = 7;
  void* params3[] = {&pv, &n, &poison};
  r = cuLaunchKernel(function(m, "emu_test_trap"), 3, 1, 1, 128, 1, 1, 0, nullptr, params3, nullptr);
  CHECK(r == CUDA_ERROR_ASSERT, "trap returned %d", r);
  CHECK(std::strstr(repaEmuLastError(), "__trap()") != nullptr, "message: %s", repaEmuLastError());
  // The emulator keeps working after a failed launch.
  poison = 8;
  CU(cuLaunchKernel(function(m, "emu_test_trap"), 3, 1, 1, 128, 1, 1, 0, nullptr, params3, nullptr));

  CUfunction f;
  r = cuModuleGetFunction(&f, m, "no_such_kernel");
  CHECK(r == CUDA_ERROR_NOT_FOUND, "unknown name returned %d", r);
  int host[4];
  r = cuMemcpyHtoD_v2(reinterpret_cast<CUdeviceptr>(host), host, sizeof host);
  CHECK(r == CUDA_ERROR_INVALID_VALUE, "copy to host memory returned %d", r);
  r = cuMemcpyDtoH_v2(host, out.pointer + 60 * 4, 8 * 4);
  CHECK(r == CUDA_ERROR_INVALID_VALUE, "copy past the allocation's end returned %d", r);
}

void test_gemm() {
  cublasHandle_t handle;
  CHECK(cublasCreate_v2(&handle) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
  const int m = 37, n = 29, k = 41, lda = 45, ldb = 50, ldc = 40;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int a_cols = ta ? m : k, b_cols = tb ? k : n;
      std::vector<float> a(static_cast<std::size_t>(lda) * a_cols), b(static_cast<std::size_t>(ldb) * b_cols),
          c(static_cast<std::size_t>(ldc) * n);
      for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::sin(static_cast<float>(i));
      for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::cos(static_cast<float>(i) * 0.7f);
      for (std::size_t i = 0; i < c.size(); ++i) c[i] = static_cast<float>(i % 5);
      Buffer da(a.size() * 4), db(b.size() * 4), dc(c.size() * 4);
      da.upload(a);
      db.upload(b);
      dc.upload(c);
      const float alpha = 1.5f, beta = -0.5f;
      const cublasStatus_t s = cublasSgemm_v2(handle, ta, tb, m, n, k, &alpha, reinterpret_cast<const float*>(da.pointer), lda,
                                        reinterpret_cast<const float*>(db.pointer), ldb, &beta,
                                        reinterpret_cast<float*>(dc.pointer), ldc);
      CHECK(s == CUBLAS_STATUS_SUCCESS, "sgemm %d%d: %s", ta, tb, repaEmuLastError());
      const auto out = dc.download<float>(c.size());
      double worst = 0;
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {
          double s2 = 0;
          for (int p = 0; p < k; ++p) {
            const double av = ta ? a[static_cast<std::size_t>(p) + static_cast<std::size_t>(i) * lda]
                                 : a[static_cast<std::size_t>(i) + static_cast<std::size_t>(p) * lda];
            const double bv = tb ? b[static_cast<std::size_t>(j) + static_cast<std::size_t>(p) * ldb]
                                 : b[static_cast<std::size_t>(p) + static_cast<std::size_t>(j) * ldb];
            s2 += av * bv;
          }
          const std::size_t at = static_cast<std::size_t>(i) + static_cast<std::size_t>(j) * ldc;
          worst = std::fmax(worst, std::fabs(alpha * s2 + beta * c[at] - out[at]));
        }
      CHECK(worst < 1e-4, "sgemm %d%d worst error %g", ta, tb, worst);
    }
  CHECK(cublasDestroy_v2(handle) == CUBLAS_STATUS_SUCCESS, "cublasDestroy");
}

// Cost of the emulator's machinery: a launch of many blocks whose threads do almost nothing but warp shuffles.
void report_switch_cost(CUmodule m) {
  const int blocks = 256, threads = 256;
  Buffer a(blocks * threads * 4), b(blocks * threads * 5 * 4);
  CU(cuMemsetD32_v2(a.pointer, 1, blocks * threads));
  CUdeviceptr pa = a.pointer, pb = b.pointer;
  void* params[] = {&pa, &pb};
  CUfunction f = function(m, "emu_test_warp_shuffles");
  CU(cuLaunchKernel(f, blocks, 1, 1, threads, 1, 1, 0, nullptr, params, nullptr));
  const auto start = std::chrono::steady_clock::now();
  CU(cuLaunchKernel(f, blocks, 1, 1, threads, 1, 1, 0, nullptr, params, nullptr));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // 5 + 5 + 5 + 4 + 1 collectives per thread (xor, down, up, xor width 8, idx): ~20 suspensions per thread.
  const double switches = 20.0 * blocks * threads;
  std::printf("warp-shuffle launch: %d blocks x %d threads in %.1f ms on %d workers (%.0f ns per suspension)\n",
              blocks, threads, seconds * 1e3, repaEmuWorkerCount(), seconds * 1e9 * repaEmuWorkerCount() / switches);
}

// ---- NVRTC --------------------------------------------------------------------------------------------------------------
int nvrtc_entries(const char* path) {
  void* lib = nullptr;
  for (const char* name : {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"})
    if ((lib = dlopen(name, RTLD_NOW)) != nullptr) break;
  if (lib == nullptr) {
    std::printf("skipped: no libnvrtc to compile %s with\n", path);
    return 77;
  }
  using Program = void*;
  auto create = reinterpret_cast<int (*)(Program*, const char*, const char*, int, const char* const*, const char* const*)>(
      dlsym(lib, "nvrtcCreateProgram"));
  auto compile = reinterpret_cast<int (*)(Program, int, const char* const*)>(dlsym(lib, "nvrtcCompileProgram"));
  auto log_size = reinterpret_cast<int (*)(Program, std::size_t*)>(dlsym(lib, "nvrtcGetProgramLogSize"));
  auto log = reinterpret_cast<int (*)(Program, char*)>(dlsym(lib, "nvrtcGetProgramLog"));
  auto ptx_size = reinterpret_cast<int (*)(Program, std::size_t*)>(dlsym(lib, "nvrtcGetPTXSize"));
  auto ptx = reinterpret_cast<int (*)(Program, char*)>(dlsym(lib, "nvrtcGetPTX"));
  if (!create || !compile || !log_size || !log || !ptx_size || !ptx) {
    std::printf("FAIL: libnvrtc lacks the nvrtc* functions\n");
    return 1;
  }
  std::ifstream file(path);
  std::stringstream source;
  source << file.rdbuf();
  Program program = nullptr;
  if (create(&program, source.str().c_str(), path, 0, nullptr, nullptr) != 0) {
    std::printf("FAIL: nvrtcCreateProgram\n");
    return 1;
  }
  const char* options[] = {"--gpu-architecture=compute_80", "-std=c++17", "-default-device"};
  const int compiled = compile(program, 3, options);
  std::size_t size = 0;
  log_size(program, &size);
  std::string text(size, '\0');
  log(program, &text[0]);
  if (compiled != 0) {
    std::printf("FAIL: NVRTC rejected %s:\n%s\n", path, text.c_str());
    return 1;
  }
  ptx_size(program, &size);
  std::string code(size, '\0');
  ptx(program, &code[0]);

  CU(cuInit(0));
  CUcontext context;
  CU(cuCtxCreate_v2(&context, 0, 0));
  CUmodule module;
  CU(cuModuleLoadData(&module, code.c_str()));
  int resolved = 0;
  for (int i = 0; i < repaEmuKernelCount(); ++i) {
    const char* name = repaEmuKernelName(i);
    if (std::strncmp(name, "emu_test_", 9) != 0) continue;
    CUfunction f;
    const CUresult r = cuModuleGetFunction(&f, module, name);
    CHECK(r == CUDA_SUCCESS, "%s from NVRTC's PTX: %s", name, repaEmuLastError());
    resolved += r == CUDA_SUCCESS;
  }
  std::printf("NVRTC compiled %s (%zu bytes of PTX); %d test kernels resolved through its .entry names\n", path,
              code.size(), resolved);
  CU(cuCtxDestroy_v2(context));
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "--nvrtc") == 0) return nvrtc_entries(argv[2]);
  CU(cuInit(0));
  CUdevice device;
  CU(cuDeviceGet(&device, 0));
  char name[128];
  CU(cuDeviceGetName(name, sizeof name, device));
  CUcontext context;
  CU(cuCtxCreate_v2(&context, 0, device));
  CUmodule module = module_of_all_kernels();
  test_transpose(module);
  test_warp_shuffles(module);
  test_histogram(module);
  test_dynamic_shared_with_extra(module);
  test_mma(module);
  test_failures(module);
  test_gemm();
  report_switch_cost(module);
  CU(cuModuleUnload(module));
  CU(cuCtxDestroy_v2(context));
  std::printf("%s: %d kernels registered; %s\n", name, repaEmuKernelCount(), failures == 0 ? "all checks passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
