// The cuBLAS half of librepa_cuda_emu.so: column-major GEMM with cuBLAS's argument rules. C = alpha op(A) op(B) +
// beta C with op = identity or transpose (CUBLAS_OP_C is the transpose for real types); beta == 0 means C is not read
// (NaN in C does not propagate); alpha == 0 or k == 0 means A and B are not read. Inputs fp32, bf16 or fp16, C fp32 (or
// the 16-bit input type), products accumulated in fp32. Work is split into 64 x 64 tiles of C over the thread pool;
// each tile packs its rows of op(A) and columns of op(B) contiguously and runs 4 x 4 register blocks.
#include <algorithm>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "emu_internal.h"

struct cublasContext {
  CUstream stream = nullptr;
  cublasMath_t math = 0;
  cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
};

namespace repa_emu {
namespace {

std::mutex handles_mutex;
std::set<cublasHandle_t>& handles() {
  static auto* h = new std::set<cublasHandle_t>();
  return *h;
}
bool live(cublasHandle_t handle) {
  std::lock_guard<std::mutex> lock(handles_mutex);
  return handles().count(handle) != 0;
}

cublasStatus_t fail_blas(cublasStatus_t status, std::string message) {
  last_error() = std::move(message);
  return status;
}

std::size_t element_size(cudaDataType type) { return type == CUDA_R_32F ? 4 : 2; }

inline float load(const void* base, std::size_t index, cudaDataType type) {
  switch (type) {
    case CUDA_R_32F: return static_cast<const float*>(base)[index];
    case CUDA_R_16BF: return bf16_bits_to_float(static_cast<const std::uint16_t*>(base)[index]);
    default: return half_bits_to_float(static_cast<const std::uint16_t*>(base)[index]);
  }
}
inline void store(void* base, std::size_t index, cudaDataType type, float value) {
  switch (type) {
    case CUDA_R_32F: static_cast<float*>(base)[index] = value; break;
    case CUDA_R_16BF: static_cast<std::uint16_t*>(base)[index] = float_to_bf16_bits(value); break;
    default: static_cast<std::uint16_t*>(base)[index] = float_to_half_bits(value); break;
  }
}

struct Gemm {
  bool trans_a, trans_b;
  int m, n, k;
  float alpha, beta;
  const char* a;
  cudaDataType a_type;
  int lda;
  long long stride_a;
  const char* b;
  cudaDataType b_type;
  int ldb;
  long long stride_b;
  char* c;
  cudaDataType c_type;
  int ldc;
  long long stride_c;
  int batch;
};

constexpr int kTile = 64;

typedef float v4f __attribute__((vector_size(16)));
inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline float sum4(v4f v) { return (v[0] + v[1]) + (v[2] + v[3]); }

float dot(const float* x, const float* y, int k) {
  v4f acc = {0, 0, 0, 0};
  int p = 0;
  for (; p + 4 <= k; p += 4) acc += load4(x + p) * load4(y + p);
  float s = sum4(acc);
  for (; p < k; ++p) s += x[p] * y[p];
  return s;
}

// 4 rows of op(A) (packed, stride k) against 4 columns of op(B) (packed, stride k).
void dot4x4(const float* a, const float* b, int k, float out[4][4]) {
  v4f acc[4][4] = {};
  int p = 0;
  for (; p + 4 <= k; p += 4) {
    const v4f a0 = load4(a + p), a1 = load4(a + k + p), a2 = load4(a + 2 * k + p), a3 = load4(a + 3 * k + p);
    for (int j = 0; j < 4; ++j) {
      const v4f bj = load4(b + j * k + p);
      acc[0][j] += a0 * bj;
      acc[1][j] += a1 * bj;
      acc[2][j] += a2 * bj;
      acc[3][j] += a3 * bj;
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      float s = sum4(acc[i][j]);
      for (int q = p; q < k; ++q) s += a[i * k + q] * b[j * k + q];
      out[i][j] = s;
    }
}

void run_tile(const Gemm& g, int batch, int i0, int j0, std::vector<float>& pa, std::vector<float>& pb) {
  const int rows = std::min(kTile, g.m - i0), cols = std::min(kTile, g.n - j0), k = g.k;
  char* c = g.c + static_cast<std::ptrdiff_t>(batch) * g.stride_c * static_cast<std::ptrdiff_t>(element_size(g.c_type));
  const bool products = g.alpha != 0.0f && k > 0;
  if (products) {
    const char* a = g.a + static_cast<std::ptrdiff_t>(batch) * g.stride_a * static_cast<std::ptrdiff_t>(element_size(g.a_type));
    const char* b = g.b + static_cast<std::ptrdiff_t>(batch) * g.stride_b * static_cast<std::ptrdiff_t>(element_size(g.b_type));
    pa.resize(static_cast<std::size_t>(rows) * k);
    pb.resize(static_cast<std::size_t>(cols) * k);
    // op(A)(i, p) = A[i + p lda] (N) or A[p + i lda] (T); op(B)(p, j) = B[p + j ldb] (N) or B[j + p ldb] (T).
    // The loops run along the source's contiguous dimension.
    auto at = [](std::size_t r, std::size_t c, int ld) { return r + c * static_cast<std::size_t>(ld); };
    if (g.trans_a) {
      for (int i = 0; i < rows; ++i)
        for (int p = 0; p < k; ++p) pa[static_cast<std::size_t>(i) * k + p] = load(a, at(p, i0 + i, g.lda), g.a_type);
    } else {
      for (int p = 0; p < k; ++p)
        for (int i = 0; i < rows; ++i) pa[static_cast<std::size_t>(i) * k + p] = load(a, at(i0 + i, p, g.lda), g.a_type);
    }
    if (g.trans_b) {
      for (int p = 0; p < k; ++p)
        for (int j = 0; j < cols; ++j) pb[static_cast<std::size_t>(j) * k + p] = load(b, at(j0 + j, p, g.ldb), g.b_type);
    } else {
      for (int j = 0; j < cols; ++j)
        for (int p = 0; p < k; ++p) pb[static_cast<std::size_t>(j) * k + p] = load(b, at(p, j0 + j, g.ldb), g.b_type);
    }
  }
  auto write = [&](int i, int j, float product) {
    const std::size_t index = static_cast<std::size_t>(i0 + i) + static_cast<std::size_t>(j0 + j) * g.ldc;
    float value = g.alpha * product;
    if (!products) value = 0.0f;
    if (g.beta != 0.0f) value += g.beta * load(c, index, g.c_type);  // beta == 0: C is not read
    store(c, index, g.c_type, value);
  };
  float block[4][4];
  for (int i = 0; i < rows; i += 4)
    for (int j = 0; j < cols; j += 4) {
      const int ri = std::min(4, rows - i), cj = std::min(4, cols - j);
      if (!products) {
        for (int r = 0; r < ri; ++r)
          for (int q = 0; q < cj; ++q) write(i + r, j + q, 0.0f);
      } else if (ri == 4 && cj == 4) {
        dot4x4(&pa[static_cast<std::size_t>(i) * k], &pb[static_cast<std::size_t>(j) * k], k, block);
        for (int r = 0; r < 4; ++r)
          for (int q = 0; q < 4; ++q) write(i + r, j + q, block[r][q]);
      } else {
        for (int r = 0; r < ri; ++r)
          for (int q = 0; q < cj; ++q)
            write(i + r, j + q,
                  dot(&pa[static_cast<std::size_t>(i + r) * k], &pb[static_cast<std::size_t>(j + q) * k], k));
      }
    }
}

bool valid_operation(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

// The bytes a column-major rows x cols matrix with leading dimension ld spans.
std::size_t span_bytes(int rows, int cols, int ld, cudaDataType type) {
  if (rows == 0 || cols == 0) return 0;
  return (static_cast<std::size_t>(cols - 1) * static_cast<std::size_t>(ld) + static_cast<std::size_t>(rows)) *
         element_size(type);
}

cublasStatus_t check_matrix(const char* function, const char* name, const char* base, long long stride, int batch,
                            int rows, int cols, int ld, cudaDataType type) {
  const std::size_t bytes = span_bytes(rows, cols, ld, type);
  if (bytes == 0) return CUBLAS_STATUS_SUCCESS;
  for (int i = 0; i < batch; ++i) {
    const char* p = base + static_cast<std::ptrdiff_t>(i) * stride * static_cast<std::ptrdiff_t>(element_size(type));
    if (!is_device_range(p, bytes)) {
      char text[32];
      std::snprintf(text, sizeof text, "%p", static_cast<const void*>(p));
      return fail_blas(CUBLAS_STATUS_EXECUTION_FAILED,
                       std::string(function) + ": matrix " + name + " of batch " + std::to_string(i) + " at " + text +
                           " (" + std::to_string(bytes) + " bytes) is not inside one cuMemAlloc allocation");
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

void run_gemm(const Gemm& g) {
  const std::size_t tiles_m = static_cast<std::size_t>((g.m + kTile - 1) / kTile);
  const std::size_t tiles_n = static_cast<std::size_t>((g.n + kTile - 1) / kTile);
  const std::size_t per_batch = tiles_m * tiles_n;
  parallel_for(per_batch * static_cast<std::size_t>(g.batch), [&](std::size_t item, int) {
    thread_local std::vector<float> pa, pb;
    const std::size_t tile = item % per_batch;
    run_tile(g, static_cast<int>(item / per_batch), static_cast<int>(tile % tiles_m) * kTile,
             static_cast<int>(tile / tiles_m) * kTile, pa, pb);
    return true;
  });
}

cublasStatus_t gemm(const char* function, cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                    int m, int n, int k, const void* alpha, const void* a, cudaDataType a_type, int lda,
                    long long stride_a, const void* b, cudaDataType b_type, int ldb, long long stride_b,
                    const void* beta, void* c, cudaDataType c_type, int ldc, long long stride_c, int batch) {
  const std::string f = function;
  if (!live(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, f + ": not a live cuBLAS handle");
  if (!valid_operation(transa) || !valid_operation(transb))
    return fail_blas(CUBLAS_STATUS_INVALID_VALUE, f + ": transa/transb must be CUBLAS_OP_N, _T or _C");
  if (m < 0 || n < 0 || k < 0 || batch < 0)
    return fail_blas(CUBLAS_STATUS_INVALID_VALUE, f + ": m, n, k and batchCount must be >= 0");
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  const int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m))
    return fail_blas(CUBLAS_STATUS_INVALID_VALUE, f + ": lda " + std::to_string(lda) + ", ldb " + std::to_string(ldb) +
                                                      ", ldc " + std::to_string(ldc) +
                                                      " must be at least the rows of A, B and C (" +
                                                      std::to_string(a_rows) + ", " + std::to_string(b_rows) + ", " +
                                                      std::to_string(m) + ")");
  if (alpha == nullptr || beta == nullptr)
    return fail_blas(CUBLAS_STATUS_INVALID_VALUE, f + ": alpha and beta must not be null");
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  Gemm g{ta, tb, m, n, k, *static_cast<const float*>(alpha), *static_cast<const float*>(beta),
         static_cast<const char*>(a), a_type, lda, stride_a, static_cast<const char*>(b), b_type, ldb, stride_b,
         static_cast<char*>(c), c_type, ldc, stride_c, batch};
  const bool products = g.alpha != 0.0f && k > 0;
  if (cublasStatus_t s = check_matrix(function, "C", g.c, stride_c, batch, m, n, ldc, c_type)) return s;
  if (products) {
    if (cublasStatus_t s = check_matrix(function, "A", g.a, stride_a, batch, a_rows, a_cols, lda, a_type)) return s;
    if (cublasStatus_t s = check_matrix(function, "B", g.b, stride_b, batch, b_rows, b_cols, ldb, b_type)) return s;
  }
  // On the handle's stream: recorded (alpha and beta by value) while it captures, as cuBLAS is capturable.
  bool capturing = false;
  if (stream_work(function, handle->stream, capturing) != CUDA_SUCCESS)
    return fail_blas(CUBLAS_STATUS_EXECUTION_FAILED, last_error());
  if (capturing) {
    capture_append(handle->stream, [g](std::string&) {
      run_gemm(g);
      return CUDA_SUCCESS;
    });
    return CUBLAS_STATUS_SUCCESS;
  }
  run_gemm(g);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t check_types(const char* function, cudaDataType a_type, cudaDataType b_type, cudaDataType c_type,
                           cublasComputeType_t compute) {
  const bool compute_ok = compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC ||
                          compute == CUBLAS_COMPUTE_32F_FAST_16F || compute == CUBLAS_COMPUTE_32F_FAST_16BF ||
                          compute == CUBLAS_COMPUTE_32F_FAST_TF32 || compute == CUDA_R_32F;
  if (!compute_ok)
    return fail_blas(CUBLAS_STATUS_NOT_SUPPORTED,
                     std::string(function) + ": compute type " + std::to_string(compute) +
                         " is not emulated (CUBLAS_COMPUTE_32F and its variants are)");
  const bool input_ok = a_type == b_type && (a_type == CUDA_R_32F || a_type == CUDA_R_16BF || a_type == CUDA_R_16F);
  const bool output_ok = c_type == CUDA_R_32F || (a_type != CUDA_R_32F && c_type == a_type);
  if (!input_ok || !output_ok)
    return fail_blas(CUBLAS_STATUS_NOT_SUPPORTED,
                     std::string(function) + ": types A " + std::to_string(a_type) + ", B " + std::to_string(b_type) +
                         ", C " + std::to_string(c_type) +
                         " are not emulated (A = B in fp32, bf16 or fp16; C fp32 or the 16-bit input type)");
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

void gemm_to_fp32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* a, cudaDataType a_type,
                  int lda, const void* b, cudaDataType b_type, int ldb, float beta, float* c, int ldc) {
  Gemm g{trans_a, trans_b, m, n, k, alpha, beta, static_cast<const char*>(a), a_type, lda, 0,
         static_cast<const char*>(b), b_type, ldb, 0, reinterpret_cast<char*>(c), CUDA_R_32F, ldc, 0, 1};
  const std::size_t tiles_m = static_cast<std::size_t>((m + kTile - 1) / kTile);
  const std::size_t tiles_n = static_cast<std::size_t>((n + kTile - 1) / kTile);
  parallel_for(tiles_m * tiles_n, [&](std::size_t tile, int) {
    thread_local std::vector<float> pa, pb;
    run_tile(g, 0, static_cast<int>(tile % tiles_m) * kTile, static_cast<int>(tile / tiles_m) * kTile, pa, pb);
    return true;
  });
}

float load_element(const void* base, std::size_t index, cudaDataType type) { return load(base, index, type); }
void store_element(void* base, std::size_t index, cudaDataType type, float value) { store(base, index, type, value); }
std::size_t element_bytes(cudaDataType type) { return element_size(type); }

}  // namespace repa_emu

using namespace repa_emu;

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (handle == nullptr) return fail_blas(CUBLAS_STATUS_INVALID_VALUE, "cublasCreate: null pointer");
  *handle = new cublasContext();
  std::lock_guard<std::mutex> lock(handles_mutex);
  handles().insert(*handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  std::lock_guard<std::mutex> lock(handles_mutex);
  if (!handles().count(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasDestroy: not a live handle");
  handles().erase(handle);
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetVersion_v2(cublasHandle_t handle, int* version) {
  if (!live(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasGetVersion: not a live handle");
  if (version == nullptr) return fail_blas(CUBLAS_STATUS_INVALID_VALUE, "cublasGetVersion: null pointer");
  *version = 120000;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!live(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetStream: not a live handle");
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  if (!live(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasGetStream: not a live handle");
  if (stream == nullptr) return fail_blas(CUBLAS_STATUS_INVALID_VALUE, "cublasGetStream: null pointer");
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!live(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetMathMode: not a live handle");
  const int base = mode & ~16;  // 16: CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
  if (base < 0 || base > 3) return fail_blas(CUBLAS_STATUS_INVALID_VALUE, "cublasSetMathMode: unknown mode");
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  if (!live(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasGetMathMode: not a live handle");
  if (mode == nullptr) return fail_blas(CUBLAS_STATUS_INVALID_VALUE, "cublasGetMathMode: null pointer");
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (!live(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetPointerMode: not a live handle");
  if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE)
    return fail_blas(CUBLAS_STATUS_INVALID_VALUE, "cublasSetPointerMode: unknown mode");
  handle->pointer_mode = mode;  // device memory is host memory: alpha/beta read the same either way
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t* mode) {
  if (!live(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasGetPointerMode: not a live handle");
  if (mode == nullptr) return fail_blas(CUBLAS_STATUS_INVALID_VALUE, "cublasGetPointerMode: null pointer");
  *mode = handle->pointer_mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void*, size_t) {
  if (!live(handle)) return fail_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetWorkspace: not a live handle");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                              int k, const float* alpha, const float* a, int lda, const float* b, int ldb,
                              const float* beta, float* c, int ldc) {
  return gemm("cublasSgemm", handle, transa, transb, m, n, k, alpha, a, CUDA_R_32F, lda, 0, b, CUDA_R_32F, ldb, 0,
              beta, c, CUDA_R_32F, ldc, 0, 1);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float* alpha, const float* a, int lda,
                                         long long stride_a, const float* b, int ldb, long long stride_b,
                                         const float* beta, float* c, int ldc, long long stride_c, int batch_count) {
  return gemm("cublasSgemmStridedBatched", handle, transa, transb, m, n, k, alpha, a, CUDA_R_32F, lda, stride_a, b,
              CUDA_R_32F, ldb, stride_b, beta, c, CUDA_R_32F, ldc, stride_c, batch_count);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* a, cudaDataType a_type, int lda, const void* b,
                            cudaDataType b_type, int ldb, const void* beta, void* c, cudaDataType c_type, int ldc,
                            cublasComputeType_t compute_type, cublasGemmAlgo_t) {
  if (cublasStatus_t s = check_types("cublasGemmEx", a_type, b_type, c_type, compute_type)) return s;
  return gemm("cublasGemmEx", handle, transa, transb, m, n, k, alpha, a, a_type, lda, 0, b, b_type, ldb, 0, beta, c,
              c_type, ldc, 0, 1);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* a, cudaDataType a_type,
                                          int lda, long long stride_a, const void* b, cudaDataType b_type, int ldb,
                                          long long stride_b, const void* beta, void* c, cudaDataType c_type, int ldc,
                                          long long stride_c, int batch_count, cublasComputeType_t compute_type,
                                          cublasGemmAlgo_t) {
  if (cublasStatus_t s = check_types("cublasGemmStridedBatchedEx", a_type, b_type, c_type, compute_type)) return s;
  return gemm("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, a, a_type, lda, stride_a, b,
              b_type, ldb, stride_b, beta, c, c_type, ldc, stride_c, batch_count);
}
