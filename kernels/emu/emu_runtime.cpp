// The driver-API half of librepa_cuda_emu.so: initialisation, the one emulated device, contexts, device memory (host
// memory, tracked so that bad pointers and sizes fail like they would on a GPU instead of corrupting the process),
// synchronous streams, host-clock events, modules that resolve PTX .entry names in the registry of compiled-in
// kernels, and cuLaunchKernel.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "emu_internal.h"

struct CUctx_st {
  bool primary = false;
};
struct CUfunc_st {
  const repa_emu::detail::KernelInfo* kernel = nullptr;
  CUmodule module = nullptr;
  int max_dynamic_shared = 48 * 1024;
};
struct CUmod_st {
  CUcontext context = nullptr;
  std::vector<std::string> entries;
  std::map<std::string, std::unique_ptr<CUfunc_st>> functions;
};
struct CUstream_st {
  CUcontext context = nullptr;
};
struct CUevent_st {
  unsigned flags = 0;
  bool recorded = false;
  std::chrono::steady_clock::time_point time;
};

namespace repa_emu {
namespace {

constexpr int kDefaultSharedPerBlock = 48 * 1024;
constexpr int kOptInSharedPerBlock = REPA_EMU_MAX_DYNAMIC_SHARED;
constexpr std::size_t kAllocationAlignment = 256;  // what cuMemAlloc guarantees

struct Allocation {
  std::size_t bytes;
  CUcontext context;
};

struct DriverState {
  std::mutex mutex;
  bool initialized = false;
  std::set<CUcontext> contexts;
  CUcontext primary = nullptr;
  int primary_references = 0;
  std::set<CUmodule> modules;
  std::set<CUfunction> functions;
  std::set<CUstream> streams;
  std::set<CUevent> events;
  std::map<std::uintptr_t, Allocation> allocations;
  std::size_t allocated_bytes = 0;
};
DriverState& state() {
  static DriverState* s = new DriverState();  // never destroyed: calls may come during process exit
  return *s;
}

thread_local CUcontext tl_current = nullptr;

std::size_t total_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page)
                               : std::size_t{16} << 30;
}

void compute_capability(int& major, int& minor) {
  major = 8;
  minor = 0;
  const char* text = std::getenv("REPA_EMU_CC");  // e.g. "9.0": what the emulated device reports
  if (text != nullptr && std::sscanf(text, "%d.%d", &major, &minor) != 2) {
    major = 8;
    minor = 0;
  }
}

std::string pointer_text(const void* p) {
  char text[32];
  std::snprintf(text, sizeof text, "%p", p);
  return text;
}

// Requires cuInit and a current context on this thread (the state mutex must be held).
CUresult check_context(const char* function) {
  DriverState& s = state();
  if (!s.initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, std::string(function) + ": cuInit has not been called");
  if (tl_current == nullptr || s.contexts.count(tl_current) == 0)
    return fail(CUDA_ERROR_INVALID_CONTEXT, std::string(function) +
                                                ": no valid current context on this thread (cuCtxCreate, "
                                                "cuCtxSetCurrent or a retained primary context first)");
  return CUDA_SUCCESS;
}

bool stream_ok(CUstream stream) {
  const auto raw = reinterpret_cast<std::uintptr_t>(stream);
  return raw <= 2 || state().streams.count(stream) != 0;  // 0 default, 1 legacy, 2 per-thread
}

// [pointer, pointer + bytes) inside one live allocation (the state mutex must be held).
bool in_allocation(std::uintptr_t pointer, std::size_t bytes) {
  auto& allocations = state().allocations;
  auto it = allocations.upper_bound(pointer);
  if (it == allocations.begin()) return false;
  --it;
  return pointer >= it->first && pointer - it->first <= it->second.bytes && bytes <= it->second.bytes - (pointer - it->first);
}

CUresult check_device(const char* function, const char* what, CUdeviceptr pointer, std::size_t bytes) {
  if (in_allocation(static_cast<std::uintptr_t>(pointer), bytes)) return CUDA_SUCCESS;
  return fail(CUDA_ERROR_INVALID_VALUE, std::string(function) + ": the " + what + " range [" +
                                            pointer_text(reinterpret_cast<void*>(pointer)) + ", +" +
                                            std::to_string(bytes) + " bytes) is not inside one cuMemAlloc allocation");
}

void release_context_resources(CUcontext context) {
  DriverState& s = state();
  for (auto it = s.allocations.begin(); it != s.allocations.end();) {
    if (it->second.context == context) {
      s.allocated_bytes -= it->second.bytes;
      std::free(reinterpret_cast<void*>(it->first));
      it = s.allocations.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = s.modules.begin(); it != s.modules.end();) {
    if ((*it)->context == context) {
      for (auto& f : (*it)->functions) s.functions.erase(f.second.get());
      delete *it;
      it = s.modules.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = s.streams.begin(); it != s.streams.end();) {
    if ((*it)->context == context) {
      delete *it;
      it = s.streams.erase(it);
    } else {
      ++it;
    }
  }
  if (tl_current == context) tl_current = nullptr;
}

// The .entry names of a PTX text (".visible .entry name(", ".entry name (").
std::vector<std::string> ptx_entries(const std::string& ptx) {
  std::vector<std::string> names;
  for (std::size_t at = ptx.find(".entry"); at != std::string::npos; at = ptx.find(".entry", at + 6)) {
    const bool starts_token = at == 0 || std::isspace(static_cast<unsigned char>(ptx[at - 1]));
    std::size_t p = at + 6;
    if (!starts_token || p >= ptx.size() || !std::isspace(static_cast<unsigned char>(ptx[p]))) continue;
    while (p < ptx.size() && std::isspace(static_cast<unsigned char>(ptx[p]))) ++p;
    const std::size_t begin = p;
    while (p < ptx.size() && (std::isalnum(static_cast<unsigned char>(ptx[p])) || ptx[p] == '_' || ptx[p] == '$'))
      ++p;
    if (p > begin) names.emplace_back(ptx, begin, p - begin);
  }
  return names;
}

CUresult copy_checked(const char* function, void* destination, const void* source, std::size_t bytes,
                      bool destination_device, bool source_device) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (CUresult r = check_context(function)) return r;
  if (bytes == 0) return CUDA_SUCCESS;
  if (destination_device) {
    if (CUresult r = check_device(function, "destination", reinterpret_cast<CUdeviceptr>(destination), bytes))
      return r;
  } else if (destination == nullptr) {
    return fail(CUDA_ERROR_INVALID_VALUE, std::string(function) + ": the host destination is null");
  }
  if (source_device) {
    if (CUresult r = check_device(function, "source", reinterpret_cast<CUdeviceptr>(source), bytes)) return r;
  } else if (source == nullptr) {
    return fail(CUDA_ERROR_INVALID_VALUE, std::string(function) + ": the host source is null");
  }
  std::memmove(destination, source, bytes);
  return CUDA_SUCCESS;
}

template <class T>
CUresult fill(const char* function, CUdeviceptr destination, T value, std::size_t count) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (CUresult r = check_context(function)) return r;
  if (count == 0) return CUDA_SUCCESS;
  if (destination % sizeof(T) != 0)
    return fail(CUDA_ERROR_INVALID_VALUE, std::string(function) + ": the destination is not " +
                                              std::to_string(sizeof(T)) + "-byte aligned");
  if (CUresult r = check_device(function, "destination", destination, count * sizeof(T))) return r;
  T* p = reinterpret_cast<T*>(destination);
  std::fill(p, p + count, value);
  return CUDA_SUCCESS;
}

CUresult check_event(CUevent event, const char* function) {
  if (!state().events.count(event))
    return fail(CUDA_ERROR_INVALID_HANDLE, std::string(function) + ": not a live event");
  return CUDA_SUCCESS;
}

}  // namespace

std::string& last_error() {
  thread_local std::string message;
  return message;
}

bool is_device_range(const void* pointer, std::size_t bytes) {
  std::lock_guard<std::mutex> lock(state().mutex);
  return in_allocation(reinterpret_cast<std::uintptr_t>(pointer), bytes);
}

}  // namespace repa_emu

using namespace repa_emu;

// ---- initialisation, device --------------------------------------------------------------------------------------------
CUresult cuInit(unsigned flags) {
  if (flags != 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuInit: flags must be 0");
  const std::string duplicates = duplicate_kernels();
  if (!duplicates.empty())
    return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit: kernels defined twice in librepa_cuda_emu.so: " + duplicates);
  std::lock_guard<std::mutex> lock(state().mutex);
  state().initialized = true;
  return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* version) {
  if (version == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDriverGetVersion: null pointer");
  *version = 12000;
  return CUDA_SUCCESS;
}

namespace {
struct ErrorText {
  CUresult code;
  const char* name;
  const char* text;
};
constexpr ErrorText kErrors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {CUDA_ERROR_ASSERT, "CUDA_ERROR_ASSERT", "device-side assert triggered"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};
const ErrorText* find_error(CUresult code) {
  for (const ErrorText& e : kErrors)
    if (e.code == code) return &e;
  return nullptr;
}
}  // namespace

CUresult cuGetErrorString(CUresult error, const char** text) {
  if (text == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const ErrorText* e = find_error(error);
  *text = e != nullptr ? e->text : nullptr;
  return e != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorName(CUresult error, const char** text) {
  if (text == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const ErrorText* e = find_error(error);
  *text = e != nullptr ? e->name : nullptr;
  return e != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static CUresult check_device_ordinal(const char* function, CUdevice device) {
  if (!state().initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, std::string(function) + ": cuInit has not been called");
  if (device != 0)
    return fail(CUDA_ERROR_INVALID_DEVICE, std::string(function) + ": the emulator has one device, ordinal 0");
  return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (device == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGet: null pointer");
  if (CUresult r = check_device_ordinal("cuDeviceGet", ordinal)) return r;
  *device = 0;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* count) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (count == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetCount: null pointer");
  if (!state().initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuDeviceGetCount: cuInit has not been called");
  *count = 1;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int length, CUdevice device) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (name == nullptr || length <= 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetName: bad buffer");
  if (CUresult r = check_device_ordinal("cuDeviceGetName", device)) return r;
  std::snprintf(name, static_cast<std::size_t>(length), "Repa CUDA emulator (CPU, %d threads)", worker_count());
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice device) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (value == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: null pointer");
  if (CUresult r = check_device_ordinal("cuDeviceGetAttribute", device)) return r;
  int major, minor;
  compute_capability(major, minor);
  switch (attribute) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *value = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *value = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *value = 64; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *value = 2147483647; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *value = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *value = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *value = kDefaultSharedPerBlock; break;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: *value = 65536; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *value = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: *value = 65536; break;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *value = 1000000; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = worker_count(); break;
    case CU_DEVICE_ATTRIBUTE_INTEGRATED: *value = 1; break;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: *value = 0; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *value = 1000000; break;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *value = 64; break;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *value = 1 << 20; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *value = 2048; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *value = 1; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = major; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = minor; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *value = kOptInSharedPerBlock + 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: *value = 65536; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *value = kOptInSharedPerBlock; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: *value = 32; break;
    default:
      return fail(CUDA_ERROR_INVALID_VALUE,
                  "cuDeviceGetAttribute: attribute " + std::to_string(attribute) + " is not emulated");
  }
  return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice device) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (bytes == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceTotalMem: null pointer");
  if (CUresult r = check_device_ordinal("cuDeviceTotalMem", device)) return r;
  *bytes = total_memory();
  return CUDA_SUCCESS;
}

// ---- contexts ------------------------------------------------------------------------------------------------------------
CUresult cuCtxCreate_v2(CUcontext* context, unsigned, CUdevice device) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (context == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuCtxCreate: null pointer");
  if (CUresult r = check_device_ordinal("cuCtxCreate", device)) return r;
  *context = new CUctx_st();
  state().contexts.insert(*context);
  tl_current = *context;
  return CUDA_SUCCESS;
}

CUresult cuCtxDestroy_v2(CUcontext context) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (context == nullptr || !s.contexts.count(context) || context->primary)
    return fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxDestroy: not a live context made by cuCtxCreate");
  release_context_resources(context);
  s.contexts.erase(context);
  delete context;
  return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext context) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuCtxSetCurrent: cuInit has not been called");
  if (context != nullptr && !state().contexts.count(context))
    return fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent: not a live context");
  tl_current = context;
  return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* context) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (context == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuCtxGetCurrent: null pointer");
  if (!state().initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuCtxGetCurrent: cuInit has not been called");
  *context = tl_current;
  return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void) {
  std::lock_guard<std::mutex> lock(state().mutex);
  return check_context("cuCtxSynchronize");
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice device) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (context == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDevicePrimaryCtxRetain: null pointer");
  if (CUresult r = check_device_ordinal("cuDevicePrimaryCtxRetain", device)) return r;
  if (s.primary == nullptr) {
    s.primary = new CUctx_st();
    s.primary->primary = true;
    s.contexts.insert(s.primary);
  }
  ++s.primary_references;
  *context = s.primary;
  return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (CUresult r = check_device_ordinal("cuDevicePrimaryCtxRelease", device)) return r;
  if (s.primary == nullptr || s.primary_references == 0)
    return fail(CUDA_ERROR_INVALID_CONTEXT, "cuDevicePrimaryCtxRelease: the primary context is not retained");
  if (--s.primary_references == 0) {
    release_context_resources(s.primary);
    s.contexts.erase(s.primary);
    delete s.primary;
    s.primary = nullptr;
  }
  return CUDA_SUCCESS;
}

// ---- memory --------------------------------------------------------------------------------------------------------------
CUresult cuMemAlloc_v2(CUdeviceptr* pointer, size_t bytes) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (pointer == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc: null pointer");
  if (CUresult r = check_context("cuMemAlloc")) return r;
  if (bytes == 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc: 0 bytes");
  const std::size_t rounded = (bytes + kAllocationAlignment - 1) / kAllocationAlignment * kAllocationAlignment;
  void* p = rounded >= bytes ? std::aligned_alloc(kAllocationAlignment, rounded) : nullptr;
  if (p == nullptr)
    return fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc: could not allocate " + std::to_string(bytes) + " bytes");
  s.allocations[reinterpret_cast<std::uintptr_t>(p)] = Allocation{bytes, tl_current};
  s.allocated_bytes += bytes;
  *pointer = reinterpret_cast<CUdeviceptr>(p);
  return CUDA_SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr pointer) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (CUresult r = check_context("cuMemFree")) return r;
  auto it = s.allocations.find(static_cast<std::uintptr_t>(pointer));
  if (it == s.allocations.end())
    return fail(CUDA_ERROR_INVALID_VALUE, "cuMemFree: " + pointer_text(reinterpret_cast<void*>(pointer)) +
                                              " is not the start of a live cuMemAlloc allocation");
  s.allocated_bytes -= it->second.bytes;
  std::free(reinterpret_cast<void*>(it->first));
  s.allocations.erase(it);
  return CUDA_SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (free_bytes == nullptr || total_bytes == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemGetInfo: null pointer");
  if (CUresult r = check_context("cuMemGetInfo")) return r;
  *total_bytes = total_memory();
  *free_bytes = *total_bytes > s.allocated_bytes ? *total_bytes - s.allocated_bytes : 0;
  return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr destination, const void* source, size_t bytes) {
  return copy_checked("cuMemcpyHtoD", reinterpret_cast<void*>(destination), source, bytes, true, false);
}
CUresult cuMemcpyDtoH_v2(void* destination, CUdeviceptr source, size_t bytes) {
  return copy_checked("cuMemcpyDtoH", destination, reinterpret_cast<const void*>(source), bytes, false, true);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr destination, CUdeviceptr source, size_t bytes) {
  return copy_checked("cuMemcpyDtoD", reinterpret_cast<void*>(destination), reinterpret_cast<const void*>(source),
                      bytes, true, true);
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr destination, const void* source, size_t bytes, CUstream) {
  return cuMemcpyHtoD_v2(destination, source, bytes);
}
CUresult cuMemcpyDtoHAsync_v2(void* destination, CUdeviceptr source, size_t bytes, CUstream) {
  return cuMemcpyDtoH_v2(destination, source, bytes);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr destination, CUdeviceptr source, size_t bytes, CUstream) {
  return cuMemcpyDtoD_v2(destination, source, bytes);
}
CUresult cuMemsetD8_v2(CUdeviceptr destination, unsigned char value, size_t count) {
  return fill<unsigned char>("cuMemsetD8", destination, value, count);
}
CUresult cuMemsetD32_v2(CUdeviceptr destination, unsigned value, size_t count) {
  return fill<unsigned>("cuMemsetD32", destination, value, count);
}
CUresult cuMemsetD8Async(CUdeviceptr destination, unsigned char value, size_t count, CUstream) {
  return cuMemsetD8_v2(destination, value, count);
}
CUresult cuMemsetD32Async(CUdeviceptr destination, unsigned value, size_t count, CUstream) {
  return cuMemsetD32_v2(destination, value, count);
}

// ---- streams and events (everything is synchronous: work is done when the call returns) ----------------------------------
CUresult cuStreamCreate(CUstream* stream, unsigned) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (stream == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate: null pointer");
  if (CUresult r = check_context("cuStreamCreate")) return r;
  *stream = new CUstream_st{tl_current};
  state().streams.insert(*stream);
  return CUDA_SUCCESS;
}

CUresult cuStreamDestroy_v2(CUstream stream) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().streams.count(stream)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy: not a live stream");
  state().streams.erase(stream);
  delete stream;
  return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream stream) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (CUresult r = check_context("cuStreamSynchronize")) return r;
  return stream_ok(stream) ? CUDA_SUCCESS : fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamSynchronize: not a live stream");
}

CUresult cuStreamQuery(CUstream stream) { return cuStreamSynchronize(stream); }

CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!stream_ok(stream)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent: not a live stream");
  return check_event(event, "cuStreamWaitEvent");
}

CUresult cuEventCreate(CUevent* event, unsigned flags) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (event == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuEventCreate: null pointer");
  if (CUresult r = check_context("cuEventCreate")) return r;
  *event = new CUevent_st{flags, false, {}};
  state().events.insert(*event);
  return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent event, CUstream stream) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (CUresult r = check_event(event, "cuEventRecord")) return r;
  if (!stream_ok(stream)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord: not a live stream");
  event->recorded = true;
  event->time = std::chrono::steady_clock::now();
  return CUDA_SUCCESS;
}

CUresult cuEventSynchronize(CUevent event) {
  std::lock_guard<std::mutex> lock(state().mutex);
  return check_event(event, "cuEventSynchronize");
}

CUresult cuEventQuery(CUevent event) { return cuEventSynchronize(event); }

CUresult cuEventElapsedTime(float* milliseconds, CUevent start, CUevent end) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (milliseconds == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuEventElapsedTime: null pointer");
  if (CUresult r = check_event(start, "cuEventElapsedTime")) return r;
  if (CUresult r = check_event(end, "cuEventElapsedTime")) return r;
  if (!start->recorded || !end->recorded)
    return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event has not been recorded");
  if ((start->flags | end->flags) & CU_EVENT_DISABLE_TIMING)
    return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event was created with CU_EVENT_DISABLE_TIMING");
  *milliseconds = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent event) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (CUresult r = check_event(event, "cuEventDestroy")) return r;
  state().events.erase(event);
  delete event;
  return CUDA_SUCCESS;
}

// ---- modules and functions -----------------------------------------------------------------------------------------------
CUresult cuModuleLoadData(CUmodule* module, const void* image) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (module == nullptr || image == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuModuleLoadData: null pointer");
  if (CUresult r = check_context("cuModuleLoadData")) return r;
  // ELF (cubin) and fatbin magics have no zero byte in their first four bytes, so strnlen keeps the read in bounds.
  std::uint32_t magic = 0;
  if (strnlen(static_cast<const char*>(image), 4) == 4) std::memcpy(&magic, image, 4);
  if (magic == 0x464c457fu || magic == 0xba55ed50u || magic == 0x466243b1u)
    return fail(CUDA_ERROR_INVALID_IMAGE,
                "cuModuleLoadData: the emulator loads PTX text (its .entry names select compiled-in kernels), not a "
                "cubin or fatbin");
  const std::string ptx(static_cast<const char*>(image));
  if (ptx.find(".version") == std::string::npos && ptx.find(".entry") == std::string::npos)
    return fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: the image is not PTX text (no .version or .entry)");
  auto* m = new CUmod_st();
  m->context = tl_current;
  m->entries = ptx_entries(ptx);
  s.modules.insert(m);
  *module = m;
  return CUDA_SUCCESS;
}

CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned, int*, void**) {
  return cuModuleLoadData(module, image);
}

CUresult cuModuleUnload(CUmodule module) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.modules.count(module)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: not a loaded module");
  for (auto& f : module->functions) s.functions.erase(f.second.get());
  s.modules.erase(module);
  delete module;
  return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (function == nullptr || name == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuModuleGetFunction: null pointer");
  if (!s.modules.count(module)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuModuleGetFunction: not a loaded module");
  auto cached = module->functions.find(name);
  if (cached != module->functions.end()) {
    *function = cached->second.get();
    return CUDA_SUCCESS;
  }
  if (std::find(module->entries.begin(), module->entries.end(), name) == module->entries.end())
    return fail(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: the module's PTX has no .entry " + std::string(name));
  const detail::KernelInfo* kernel = find_kernel(name);
  if (kernel == nullptr)
    return fail(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: kernel " + std::string(name) +
                                          " is in the PTX but not compiled into librepa_cuda_emu.so (is it followed by "
                                          "REPA_KERNEL(" + name + "), and was the library rebuilt?)");
  auto f = std::make_unique<CUfunc_st>();
  f->kernel = kernel;
  f->module = module;
  *function = f.get();
  s.functions.insert(f.get());
  module->functions.emplace(name, std::move(f));
  return CUDA_SUCCESS;
}

CUresult cuFuncGetAttribute(int* value, CUfunction_attribute attribute, CUfunction function) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (value == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuFuncGetAttribute: null pointer");
  if (!state().functions.count(function)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuFuncGetAttribute: not a function");
  int major, minor;
  compute_capability(major, minor);
  switch (attribute) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = 1024; break;
    case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES:
    case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES:
    case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES:
    case CU_FUNC_ATTRIBUTE_CACHE_MODE_CA: *value = 0; break;
    case CU_FUNC_ATTRIBUTE_NUM_REGS: *value = 32; break;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION:
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *value = major * 10 + minor; break;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *value = function->max_dynamic_shared; break;
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *value = -1; break;
    default:
      return fail(CUDA_ERROR_INVALID_VALUE, "cuFuncGetAttribute: attribute " + std::to_string(attribute) +
                                                " is not emulated");
  }
  return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction function, CUfunction_attribute attribute, int value) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().functions.count(function)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuFuncSetAttribute: not a function");
  if (attribute == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
    if (value < 0 || value > kOptInSharedPerBlock)
      return fail(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute: dynamic shared memory " + std::to_string(value) +
                                                " exceeds the opt-in maximum " + std::to_string(kOptInSharedPerBlock));
    function->max_dynamic_shared = value;
    return CUDA_SUCCESS;
  }
  if (attribute == CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT) return CUDA_SUCCESS;
  return fail(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute: attribute " + std::to_string(attribute) +
                                            " cannot be set");
}

// ---- launch --------------------------------------------------------------------------------------------------------------
CUresult cuLaunchKernel(CUfunction function, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                        unsigned block_y, unsigned block_z, unsigned shared_bytes, CUstream stream, void** params,
                        void** extra) {
  GridLaunch launch{};
  std::vector<void*> packed;
  {
    DriverState& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (CUresult r = check_context("cuLaunchKernel")) return r;
    if (!s.functions.count(function)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: not a function");
    const std::string name = function->kernel->name;
    if (function->module->context != tl_current)
      return fail(CUDA_ERROR_INVALID_CONTEXT,
                  "cuLaunchKernel: " + name + " belongs to a module of another context than the current one");
    if (!stream_ok(stream)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: not a live stream");
    if (grid_x == 0 || grid_y == 0 || grid_z == 0 || grid_x > 2147483647u || grid_y > 65535 || grid_z > 65535)
      return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: " + name + ": grid (" + std::to_string(grid_x) + "," +
                                                std::to_string(grid_y) + "," + std::to_string(grid_z) +
                                                ") is outside [1, 2^31-1] x [1, 65535] x [1, 65535]");
    if (block_x == 0 || block_y == 0 || block_z == 0 || block_x > 1024 || block_y > 1024 || block_z > 64 ||
        static_cast<unsigned long long>(block_x) * block_y * block_z > 1024)
      return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: " + name + ": block (" + std::to_string(block_x) + "," +
                                                std::to_string(block_y) + "," + std::to_string(block_z) +
                                                ") has more than 1024 threads or a dimension beyond 1024/1024/64");
    if (static_cast<int>(shared_bytes) > function->max_dynamic_shared || shared_bytes > 0x7fffffffu)
      return fail(CUDA_ERROR_INVALID_VALUE,
                  "cuLaunchKernel: " + name + ": " + std::to_string(shared_bytes) +
                      " bytes of dynamic shared memory exceed the function's limit of " +
                      std::to_string(function->max_dynamic_shared) +
                      " (raise it with cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES))");
    const detail::KernelInfo* k = function->kernel;
    if (params == nullptr && extra != nullptr) {
      // Arguments packed in one buffer at their natural alignment, as the CUDA ABI lays them out.
      const char* buffer = nullptr;
      std::size_t size = 0;
      for (void** e = extra; *e != CU_LAUNCH_PARAM_END; e += 2) {
        if (e[0] == CU_LAUNCH_PARAM_BUFFER_POINTER) buffer = static_cast<const char*>(e[1]);
        else if (e[0] == CU_LAUNCH_PARAM_BUFFER_SIZE) size = *static_cast<const std::size_t*>(e[1]);
        else return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: unknown entry in extra");
      }
      std::size_t offset = 0;
      for (int i = 0; i < k->param_count; ++i) {
        offset = (offset + k->param_aligns[i] - 1) / k->param_aligns[i] * k->param_aligns[i];
        packed.push_back(const_cast<char*>(buffer) + offset);
        offset += k->param_sizes[i];
      }
      if (k->param_count > 0 && (buffer == nullptr || size < offset))
        return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: " + name + ": the extra buffer holds " +
                                                  std::to_string(size) + " bytes, the parameters need " +
                                                  std::to_string(offset));
      params = packed.data();
    }
    if (params == nullptr && k->param_count > 0)
      return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: " + name + " takes " +
                                                std::to_string(k->param_count) + " parameters but none were given");
    launch = GridLaunch{k, uint3{grid_x, grid_y, grid_z}, uint3{block_x, block_y, block_z}, shared_bytes, params};
  }
  std::string message;
  const CUresult result = run_grid(launch, message);
  return result == CUDA_SUCCESS ? CUDA_SUCCESS : fail(result, "cuLaunchKernel: " + message);
}

// ---- the emulator's own ----------------------------------------------------------------------------------------------
const char* repaEmuLastError(void) { return last_error().c_str(); }
int repaEmuWorkerCount(void) { return worker_count(); }
int repaEmuKernelCount(void) { return kernel_count(); }
const char* repaEmuKernelName(int index) {
  const detail::KernelInfo* k = kernel_at(index);
  return k != nullptr ? k->name : nullptr;
}
