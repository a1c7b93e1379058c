// Internals shared by the emulator's runtime files (not seen by kernels).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "cuda_emu.h"
#include "emu_api.h"

#undef assert  // the runtime's own code is host code

namespace repa_emu {

// The calling thread's last error message (repaEmuLastError) and the helper that records one.
std::string& last_error();
inline CUresult fail(CUresult code, std::string message) {
  last_error() = std::move(message);
  return code;
}

// Kernels compiled into the library (REPA_EMU_REGISTER at load time).
const detail::KernelInfo* find_kernel(const std::string& name);
int kernel_count();
const detail::KernelInfo* kernel_at(int index);
// Names registered twice with different code (two .cu files defining the same extern "C" kernel): "" when none.
std::string duplicate_kernels();

// The fixed pool of OS threads that runs blocks and GEMM tiles. run() hands out items [0, count) to the workers and
// returns when all are done or a body returned false; calls are serialised (the device runs one thing at a time).
int worker_count();
void parallel_for(std::size_t count, const std::function<bool(std::size_t item, int worker)>& body);

struct GridLaunch {
  const detail::KernelInfo* kernel;
  uint3 grid;
  uint3 block;
  unsigned shared_bytes;
  void** params;
};
// Runs every block of the grid; returns CUDA_SUCCESS or the failure (deadlock, trap) with its message in `message`.
CUresult run_grid(const GridLaunch& launch, std::string& message);

// Stream capture (CUDA graphs). A node is work recorded while its stream captured: it runs when the graph is launched
// and returns CUDA_SUCCESS or a failure with its message. Everything a node needs (kernel parameters, GEMM scalars) is
// copied into it at capture time, as the driver does.
using GraphNode = std::function<CUresult(std::string& message)>;
// Checks that work may be queued on `stream` now (a live stream, not the legacy stream while a blocking stream
// captures, not a stream whose capture was invalidated) and says whether it captures (then append the work with
// capture_append instead of running it). Takes the driver's lock.
CUresult stream_work(const char* function, CUstream stream, bool& capturing);
void capture_append(CUstream stream, GraphNode node);

// Device memory bookkeeping (emu_runtime.cpp): whether [pointer, pointer + bytes) lies inside one live allocation.
bool is_device_range(const void* pointer, std::size_t bytes);

// The cuBLAS half's GEMM core (emu_cublas.cpp) on already validated operands: column-major C = alpha op(A) op(B) +
// beta C over the worker pool, C fp32 with leading dimension ldc (any memory: used for cuBLASLt's fp32 accumulators).
void gemm_to_fp32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* a, cudaDataType a_type,
                  int lda, const void* b, cudaDataType b_type, int ldb, float beta, float* c, int ldc);
// Loads and stores of fp32 / bf16 / fp16 elements by cudaDataType.
float load_element(const void* base, std::size_t index, cudaDataType type);
void store_element(void* base, std::size_t index, cudaDataType type, float value);
std::size_t element_bytes(cudaDataType type);

}  // namespace repa_emu
