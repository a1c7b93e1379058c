// The cuBLASLt half of librepa_cuda_emu.so: descriptors, layouts, the heuristic and cublasLtMatmul for the GEMMs with
// epilogues that CudaBackend uses (cublasLt.h semantics): D = epilogue(alpha op(A) op(B) + beta C) with DEFAULT, BIAS
// (bias[row of D] added), GELU (tanh approximation) with or without bias, *_AUX (the GELU input stored to the aux
// matrix), BGRADA / BGRADB (the bias gradient: sums of op(A)'s rows / op(B)'s columns over k, written to the bias
// pointer). Products accumulate in fp32, the epilogue runs on the fp32 value and D, aux and the bias gradient are
// rounded once to their type (the output type), as the library does. Constraints the library states and a real GPU
// would enforce are enforced here too (aux leading dimension a multiple of 8 and >= the rows of D; batch count 1;
// C's layout equal to D's), so code cannot pass the emulator and fail on a device.
#include <cmath>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "emu_internal.h"

struct cublasLtContext {};

struct cublasLtMatmulDescEmu {
  int compute = CUBLAS_COMPUTE_32F;
  int scale = CUDA_R_32F;
  int trans_a = CUBLAS_OP_N;
  int trans_b = CUBLAS_OP_N;
  unsigned epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};

struct cublasLtMatrixLayoutEmu {
  int type;
  uint64_t rows, cols;
  int64_t ld;
  int batch = 1;
};

struct cublasLtMatmulPreferenceEmu {
  uint64_t max_workspace = 0;
};

namespace repa_emu {
namespace {

std::mutex lt_mutex;
std::set<const void*>& live_objects() {
  static auto* objects = new std::set<const void*>();
  return *objects;
}
void track(const void* object) {
  std::lock_guard<std::mutex> lock(lt_mutex);
  live_objects().insert(object);
}
bool untrack(const void* object) {
  std::lock_guard<std::mutex> lock(lt_mutex);
  return live_objects().erase(object) != 0;
}
bool live(const void* object) {
  std::lock_guard<std::mutex> lock(lt_mutex);
  return object != nullptr && live_objects().count(object) != 0;
}

cublasStatus_t fail_lt(cublasStatus_t status, std::string message) {
  last_error() = std::move(message);
  return status;
}

template <typename T>
cublasStatus_t read_attribute(const char* function, int attribute, const void* value, size_t size, T& target) {
  if (value == nullptr || size != sizeof(T))
    return fail_lt(CUBLAS_STATUS_INVALID_VALUE, std::string(function) + ": attribute " + std::to_string(attribute) +
                                                    " takes " + std::to_string(sizeof(T)) + " bytes, got " +
                                                    std::to_string(size));
  std::memcpy(&target, value, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

bool known_epilogue(unsigned e) {
  switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT:
    case CUBLASLT_EPILOGUE_BIAS:
    case CUBLASLT_EPILOGUE_GELU:
    case CUBLASLT_EPILOGUE_GELU_AUX:
    case CUBLASLT_EPILOGUE_GELU_BIAS:
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS:
    case CUBLASLT_EPILOGUE_BGRADA:
    case CUBLASLT_EPILOGUE_BGRADB:
      return true;
    default:
      return false;
  }
}
bool adds_bias(unsigned e) { return (e & CUBLASLT_EPILOGUE_BIAS) != 0 && e < 256; }
bool applies_gelu(unsigned e) { return (e & CUBLASLT_EPILOGUE_GELU) != 0; }
bool stores_aux(unsigned e) { return (e & 128) != 0; }

// The problem a descriptor and four layouts describe, checked as cublasLtMatmul checks it.
struct Problem {
  bool ta, tb;
  int m, n, k;
  cudaDataType in, out;
};

cublasStatus_t check_problem(const char* function, const cublasLtMatmulDescEmu* desc, const cublasLtMatrixLayoutEmu* a,
                             const cublasLtMatrixLayoutEmu* b, const cublasLtMatrixLayoutEmu* c,
                             const cublasLtMatrixLayoutEmu* d, Problem& p) {
  const std::string f = function;
  if (!live(desc) || !live(a) || !live(b) || !live(c) || !live(d))
    return fail_lt(CUBLAS_STATUS_INVALID_VALUE, f + ": a descriptor or layout is not live");
  if (desc->scale != CUDA_R_32F || !(desc->compute == CUBLAS_COMPUTE_32F || desc->compute == CUBLAS_COMPUTE_32F_PEDANTIC))
    return fail_lt(CUBLAS_STATUS_NOT_SUPPORTED, f + ": only CUBLAS_COMPUTE_32F with CUDA_R_32F scales is emulated");
  if (!known_epilogue(desc->epilogue))
    return fail_lt(CUBLAS_STATUS_NOT_SUPPORTED, f + ": epilogue " + std::to_string(desc->epilogue) + " is not emulated");
  if (a->batch != 1 || b->batch != 1 || c->batch != 1 || d->batch != 1)
    return fail_lt(CUBLAS_STATUS_NOT_SUPPORTED, f + ": batched layouts are not emulated");
  p.ta = desc->trans_a != CUBLAS_OP_N;
  p.tb = desc->trans_b != CUBLAS_OP_N;
  p.m = static_cast<int>(d->rows);
  p.n = static_cast<int>(d->cols);
  p.k = static_cast<int>(p.ta ? a->rows : a->cols);
  const uint64_t a_m = p.ta ? a->cols : a->rows, b_k = p.tb ? b->cols : b->rows, b_n = p.tb ? b->rows : b->cols;
  if (a_m != d->rows || b_n != d->cols || b_k != static_cast<uint64_t>(p.k) || c->rows != d->rows || c->cols != d->cols)
    return fail_lt(CUBLAS_STATUS_INVALID_VALUE, f + ": the shapes of op(A) " + std::to_string(a_m) + "x" +
                                                    std::to_string(p.k) + ", op(B) " + std::to_string(b_k) + "x" +
                                                    std::to_string(b_n) + " and D " + std::to_string(d->rows) + "x" +
                                                    std::to_string(d->cols) + " do not chain");
  if (c->type != d->type || c->ld != d->ld)
    return fail_lt(CUBLAS_STATUS_NOT_SUPPORTED, f + ": C's layout must equal D's");
  p.in = a->type;
  p.out = d->type;
  const bool in_ok = a->type == b->type && (a->type == CUDA_R_32F || a->type == CUDA_R_16BF || a->type == CUDA_R_16F);
  const bool out_ok = d->type == CUDA_R_32F || (a->type != CUDA_R_32F && d->type == a->type);
  if (!in_ok || !out_ok)
    return fail_lt(CUBLAS_STATUS_NOT_SUPPORTED, f + ": types A " + std::to_string(a->type) + ", B " +
                                                    std::to_string(b->type) + ", D " + std::to_string(d->type) +
                                                    " are not emulated");
  for (const cublasLtMatrixLayoutEmu* l : {a, b, c, d})
    if (l->ld < static_cast<int64_t>(std::max<uint64_t>(1, l->rows)))
      return fail_lt(CUBLAS_STATUS_INVALID_VALUE, f + ": a leading dimension is smaller than its matrix's rows");
  if (stores_aux(desc->epilogue) && (desc->aux_ld % 8 != 0 || desc->aux_ld < static_cast<int64_t>(d->rows)))
    return fail_lt(CUBLAS_STATUS_NOT_SUPPORTED, f + ": the GELU aux leading dimension " +
                                                    std::to_string(desc->aux_ld) +
                                                    " must be a multiple of 8 and at least the rows of D (" +
                                                    std::to_string(d->rows) + ")");
  return CUBLAS_STATUS_SUCCESS;
}

std::size_t span_bytes(uint64_t rows, uint64_t cols, int64_t ld, cudaDataType type) {
  if (rows == 0 || cols == 0) return 0;
  return ((cols - 1) * static_cast<uint64_t>(ld) + rows) * element_bytes(type);
}

float gelu_tanh(float x) {
  const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + std::tanh(inner));
}


// One cublasLtMatmul's work, by value.
struct LtWork {
  Problem p;
  float alpha, beta;
  unsigned epilogue;
  void* bias;
  void* aux;
  int64_t aux_ld;
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  const void* c;
  int64_t ldc;
  void* d;
  int64_t ldd;
  bool products;
};

void run_lt(const LtWork& w) {
  const Problem& p = w.p;
  const unsigned e = w.epilogue;
  // fp32 accumulators, column-major m x n; beta C enters before the epilogue.
  const std::size_t m = static_cast<std::size_t>(p.m), n = static_cast<std::size_t>(p.n);
  std::vector<float> acc(m * n, 0.0f);
  if (w.beta != 0.0f)
    for (std::size_t j = 0; j < n; ++j)
      for (std::size_t i = 0; i < m; ++i) acc[i + j * m] = load_element(w.c, i + j * w.ldc, p.out);
  if (w.products)
    gemm_to_fp32(p.ta, p.tb, p.m, p.n, p.k, w.alpha, w.a, p.in, static_cast<int>(w.lda), w.b, p.in,
                 static_cast<int>(w.ldb), w.beta, acc.data(), p.m);
  else
    for (float& v : acc) v *= w.beta;
  for (std::size_t j = 0; j < n; ++j)
    for (std::size_t i = 0; i < m; ++i) {
      float v = acc[i + j * m];
      if (adds_bias(e)) v += load_element(w.bias, i, p.out);
      if (stores_aux(e)) store_element(w.aux, i + j * static_cast<std::size_t>(w.aux_ld), p.out, v);
      if (applies_gelu(e)) v = gelu_tanh(v);
      store_element(w.d, i + j * static_cast<std::size_t>(w.ldd), p.out, v);
    }
  // Bias gradients: op(A)'s row sums (BGRADA, length m) or op(B)'s column sums (BGRADB, length n), over k in order.
  if (e == CUBLASLT_EPILOGUE_BGRADA || e == CUBLASLT_EPILOGUE_BGRADB) {
    const bool on_a = e == CUBLASLT_EPILOGUE_BGRADA;
    const std::size_t count = on_a ? m : n, ld = static_cast<std::size_t>(on_a ? w.lda : w.ldb);
    const void* source = on_a ? w.a : w.b;
    // op(A)(i, q) = A[i + q lda] (N) or A[q + i lda] (T); op(B)(q, j) = B[q + j ldb] (N) or B[j + q ldb] (T).
    const bool outer_is_column = on_a ? p.ta : !p.tb;
    for (std::size_t index = 0; index < count; ++index) {
      float sum = 0.0f;
      for (std::size_t q = 0; q < static_cast<std::size_t>(p.k); ++q)
        sum += load_element(source, outer_is_column ? q + index * ld : index + q * ld, p.in);
      store_element(w.bias, index, p.out, sum);
    }
  }
}
}  // namespace
}  // namespace repa_emu

using namespace repa_emu;

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (handle == nullptr) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, "cublasLtCreate: null pointer");
  *handle = new cublasLtContext();
  track(*handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  if (!untrack(handle)) return fail_lt(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtDestroy: not a live handle");
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute_type,
                                        cudaDataType scale_type) {
  if (desc == nullptr) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescCreate: null pointer");
  *desc = new cublasLtMatmulDescEmu();
  (*desc)->compute = compute_type;
  (*desc)->scale = scale_type;
  track(*desc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  if (!untrack(desc)) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescDestroy: not a live descriptor");
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, int attribute, const void* value, size_t size) {
  const char* f = "cublasLtMatmulDescSetAttribute";
  if (!live(desc)) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, std::string(f) + ": not a live descriptor");
  switch (attribute) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return read_attribute(f, attribute, value, size, desc->compute);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return read_attribute(f, attribute, value, size, desc->scale);
    case CUBLASLT_MATMUL_DESC_TRANSA: return read_attribute(f, attribute, value, size, desc->trans_a);
    case CUBLASLT_MATMUL_DESC_TRANSB: return read_attribute(f, attribute, value, size, desc->trans_b);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return read_attribute(f, attribute, value, size, desc->epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return read_attribute(f, attribute, value, size, desc->bias);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return read_attribute(f, attribute, value, size, desc->aux);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return read_attribute(f, attribute, value, size, desc->aux_ld);
    default:
      return fail_lt(CUBLAS_STATUS_INVALID_VALUE,
                     std::string(f) + ": attribute " + std::to_string(attribute) + " is not emulated");
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (layout == nullptr) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutCreate: null pointer");
  *layout = new cublasLtMatrixLayoutEmu{type, rows, cols, ld};
  track(*layout);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  if (!untrack(layout)) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutDestroy: not a live layout");
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, int attribute, const void* value,
                                                size_t size) {
  const char* f = "cublasLtMatrixLayoutSetAttribute";
  if (!live(layout)) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, std::string(f) + ": not a live layout");
  if (attribute == CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT) return read_attribute(f, attribute, value, size, layout->batch);
  return fail_lt(CUBLAS_STATUS_INVALID_VALUE,
                 std::string(f) + ": attribute " + std::to_string(attribute) + " is not emulated");
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* preference) {
  if (preference == nullptr) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceCreate: null pointer");
  *preference = new cublasLtMatmulPreferenceEmu();
  track(*preference);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t preference) {
  if (!untrack(preference))
    return fail_lt(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceDestroy: not a live preference");
  delete preference;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t preference, int attribute,
                                                    const void* value, size_t size) {
  const char* f = "cublasLtMatmulPreferenceSetAttribute";
  if (!live(preference)) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, std::string(f) + ": not a live preference");
  if (attribute == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES)
    return read_attribute(f, attribute, value, size, preference->max_workspace);
  uint32_t ignored;  // search mode: one algorithm either way
  if (attribute == CUBLASLT_MATMUL_PREF_SEARCH_MODE) return read_attribute(f, attribute, value, size, ignored);
  return fail_lt(CUBLAS_STATUS_INVALID_VALUE,
                 std::string(f) + ": attribute " + std::to_string(attribute) + " is not emulated");
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t preference, int requested,
                                              cublasLtMatmulHeuristicResult_t* results, int* returned) {
  const char* f = "cublasLtMatmulAlgoGetHeuristic";
  if (!live(handle)) return fail_lt(CUBLAS_STATUS_NOT_INITIALIZED, std::string(f) + ": not a live handle");
  if (!live(preference) || requested < 1 || results == nullptr || returned == nullptr)
    return fail_lt(CUBLAS_STATUS_INVALID_VALUE, std::string(f) + ": bad preference, count or result pointers");
  *returned = 0;
  Problem p;
  if (cublasStatus_t s = check_problem(f, desc, a, b, c, d, p)) return s;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  results[0].algo.data[0] = 1;  // the one emulated algorithm
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* a,
                              cublasLtMatrixLayout_t a_layout, const void* b, cublasLtMatrixLayout_t b_layout,
                              const void* beta, const void* c, cublasLtMatrixLayout_t c_layout, void* d,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t*, void*, size_t,
                              cudaStream_t stream) {
  const std::string f = "cublasLtMatmul";
  if (!live(handle)) return fail_lt(CUBLAS_STATUS_NOT_INITIALIZED, f + ": not a live handle");
  if (alpha == nullptr || beta == nullptr) return fail_lt(CUBLAS_STATUS_INVALID_VALUE, f + ": null alpha or beta");
  Problem p;
  if (cublasStatus_t s = check_problem(f.c_str(), desc, a_layout, b_layout, c_layout, d_layout, p)) return s;
  if (p.m == 0 || p.n == 0) return CUBLAS_STATUS_SUCCESS;
  const float alpha32 = *static_cast<const float*>(alpha), beta32 = *static_cast<const float*>(beta);
  const unsigned e = desc->epilogue;
  const bool products = alpha32 != 0.0f && p.k > 0;
  // Every pointer the call dereferences must lie inside one device allocation.
  struct Range {
    const void* pointer;
    std::size_t bytes;
    const char* name;
  };
  std::vector<Range> ranges = {{d, span_bytes(d_layout->rows, d_layout->cols, d_layout->ld, p.out), "D"}};
  if (products) {
    ranges.push_back({a, span_bytes(a_layout->rows, a_layout->cols, a_layout->ld, p.in), "A"});
    ranges.push_back({b, span_bytes(b_layout->rows, b_layout->cols, b_layout->ld, p.in), "B"});
  }
  if (beta32 != 0.0f) ranges.push_back({c, span_bytes(c_layout->rows, c_layout->cols, c_layout->ld, p.out), "C"});
  if (adds_bias(e)) ranges.push_back({desc->bias, p.m * element_bytes(p.out), "the bias"});
  if (e == CUBLASLT_EPILOGUE_BGRADA) ranges.push_back({desc->bias, p.m * element_bytes(p.out), "the bias gradient"});
  if (e == CUBLASLT_EPILOGUE_BGRADB) ranges.push_back({desc->bias, p.n * element_bytes(p.out), "the bias gradient"});
  if (stores_aux(e))
    ranges.push_back({desc->aux, span_bytes(static_cast<uint64_t>(p.m), static_cast<uint64_t>(p.n), desc->aux_ld, p.out),
                      "the aux matrix"});
  for (const Range& r : ranges)
    if (r.bytes != 0 && (r.pointer == nullptr || !is_device_range(r.pointer, r.bytes)))
      return fail_lt(CUBLAS_STATUS_EXECUTION_FAILED,
                     f + ": " + r.name + " (" + std::to_string(r.bytes) + " bytes) is not inside one cuMemAlloc allocation");

  // Everything the work needs, by value (descriptor attributes and scalars as they are now), so that a capture records
  // the call as the library's does; then run it, or append it to the capturing stream's graph.
  LtWork work{p, alpha32, beta32, e, desc->bias, desc->aux, desc->aux_ld, a, static_cast<int64_t>(a_layout->ld), b,
              static_cast<int64_t>(b_layout->ld), c, static_cast<int64_t>(c_layout->ld), d,
              static_cast<int64_t>(d_layout->ld), products};
  bool capturing = false;
  if (stream_work(f.c_str(), stream, capturing) != CUDA_SUCCESS)
    return fail_lt(CUBLAS_STATUS_EXECUTION_FAILED, last_error());
  if (capturing) {
    capture_append(stream, [work](std::string&) {
      run_lt(work);
      return CUDA_SUCCESS;
    });
    return CUBLAS_STATUS_SUCCESS;
  }
  run_lt(work);
  return CUBLAS_STATUS_SUCCESS;
}
