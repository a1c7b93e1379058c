// The driver-API half of librepa_cuda_emu.so: initialisation, the one emulated device, contexts, device memory (host
// memory, tracked so that bad pointers and sizes fail like they would on a GPU instead of corrupting the process),
// synchronous streams, host-clock events, modules that resolve PTX .entry names in the registry of compiled-in
// kernels, cuLaunchKernel, and stream capture into graphs (CUDA graphs: work queued on a capturing stream is recorded,
// not run, and cuGraphLaunch replays it in order; calls CUDA refuses during a capture fail with CUDA's codes).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
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
  unsigned flags = 0;  // CU_STREAM_NON_BLOCKING: no implicit synchronisation with the legacy stream
  // Capture state (cuStreamBeginCapture .. cuStreamEndCapture).
  bool capturing = false;
  bool invalidated = false;
  int mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
  std::thread::id capture_thread;
  std::vector<repa_emu::GraphNode> nodes;
};
struct CUgraph_st {
  std::vector<repa_emu::GraphNode> nodes;
};
struct CUgraphExec_st {
  std::vector<repa_emu::GraphNode> nodes;
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
  std::set<CUgraph> graphs;
  std::set<CUgraphExec> executables;
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

bool is_special_stream(CUstream stream) { return reinterpret_cast<std::uintptr_t>(stream) <= 2; }
bool stream_ok(CUstream stream) {
  return is_special_stream(stream) || state().streams.count(stream) != 0;  // 0 default, 1 legacy, 2 per-thread
}
// The NULL stream (0) and CU_STREAM_LEGACY (1) are the legacy stream, which synchronises with every blocking stream.
bool is_legacy_stream(CUstream stream) { return reinterpret_cast<std::uintptr_t>(stream) <= 1; }

// ---- capture rules (the state mutex must be held) ----
// A capture in global mode (any thread) or in thread-local mode on this thread forbids "potentially unsafe" calls
// (cuMemAlloc, cuMemFree) on this thread; relaxed mode forbids nothing.
bool unsafe_calls_prohibited() {
  for (CUstream s : state().streams)
    if (s->capturing && (s->mode == CU_STREAM_CAPTURE_MODE_GLOBAL ||
                         (s->mode == CU_STREAM_CAPTURE_MODE_THREAD_LOCAL && s->capture_thread == std::this_thread::get_id())))
      return true;
  return false;
}
// A refused call during a capture invalidates it (cuStreamEndCapture then fails with ..._INVALIDATED).
void invalidate_captures(bool blocking_only) {
  for (CUstream s : state().streams)
    if (s->capturing && (!blocking_only || (s->flags & CU_STREAM_NON_BLOCKING) == 0)) s->invalidated = true;
}
bool any_capture(bool blocking_only) {
  for (CUstream s : state().streams)
    if (s->capturing && (!blocking_only || (s->flags & CU_STREAM_NON_BLOCKING) == 0)) return true;
  return false;
}
CUresult refuse_unsafe(const char* function) {
  if (!unsafe_calls_prohibited()) return CUDA_SUCCESS;
  invalidate_captures(false);
  return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
              std::string(function) + ": not permitted while a stream captures in global or thread-local mode (the "
                                      "capture is now invalidated); allocate before the capture");
}
// Work on the legacy stream would wait for a capturing blocking stream: CUDA refuses it and invalidates the capture.
CUresult refuse_legacy(const char* function) {
  if (!any_capture(true)) return CUDA_SUCCESS;
  invalidate_captures(true);
  return fail(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT,
              std::string(function) + ": work on the legacy stream while a blocking stream captures (the capture is "
                                      "now invalidated); use the *Async calls on the capturing stream");
}
CUresult stream_work_locked(const char* function, CUstream stream, bool& capturing) {
  capturing = false;
  if (!stream_ok(stream)) return fail(CUDA_ERROR_INVALID_HANDLE, std::string(function) + ": not a live stream");
  if (is_legacy_stream(stream)) return refuse_legacy(function);
  if (is_special_stream(stream) || !stream->capturing) return CUDA_SUCCESS;
  if (stream->invalidated)
    return fail(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                std::string(function) + ": the stream's capture was invalidated by an earlier refused call");
  capturing = true;
  return CUDA_SUCCESS;
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

// A copy: synchronous ones run on the legacy stream, *Async ones on `stream` (recorded while it captures; the emulator
// has no pinned host memory, and CUDA refuses to capture copies from or to pageable memory).
CUresult copy_checked(const char* function, void* destination, const void* source, std::size_t bytes,
                      bool destination_device, bool source_device, bool async = false, CUstream stream = nullptr) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (CUresult r = check_context(function)) return r;
  bool capturing = false;
  if (CUresult r = stream_work_locked(function, async ? stream : nullptr, capturing)) return r;
  if (capturing && !(destination_device && source_device)) {
    stream->invalidated = true;
    return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                std::string(function) + ": a copy from or to pageable host memory cannot be captured (the capture is "
                                        "now invalidated); copy before the capture or after the graph ran");
  }
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
  if (capturing) {
    const std::string name = function;
    stream->nodes.push_back([=](std::string& message) {
      // The allocations may have been freed since the capture: check again, as a GPU would fault.
      if (!is_device_range(destination, bytes) || !is_device_range(source, bytes)) {
        message = name + " (graph node): a range is no longer inside a live allocation";
        return CUDA_ERROR_ILLEGAL_ADDRESS;
      }
      std::memmove(destination, source, bytes);
      return CUDA_SUCCESS;
    });
    return CUDA_SUCCESS;
  }
  std::memmove(destination, source, bytes);
  return CUDA_SUCCESS;
}

template <class T>
CUresult fill(const char* function, CUdeviceptr destination, T value, std::size_t count, bool async = false,
              CUstream stream = nullptr) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (CUresult r = check_context(function)) return r;
  bool capturing = false;
  if (CUresult r = stream_work_locked(function, async ? stream : nullptr, capturing)) return r;
  if (count == 0) return CUDA_SUCCESS;
  if (destination % sizeof(T) != 0)
    return fail(CUDA_ERROR_INVALID_VALUE, std::string(function) + ": the destination is not " +
                                              std::to_string(sizeof(T)) + "-byte aligned");
  if (CUresult r = check_device(function, "destination", destination, count * sizeof(T))) return r;
  T* p = reinterpret_cast<T*>(destination);
  if (capturing) {
    const std::string name = function;
    stream->nodes.push_back([=](std::string& message) {
      if (!is_device_range(p, count * sizeof(T))) {
        message = name + " (graph node): the destination is no longer inside a live allocation";
        return CUDA_ERROR_ILLEGAL_ADDRESS;
      }
      std::fill(p, p + count, value);
      return CUDA_SUCCESS;
    });
    return CUDA_SUCCESS;
  }
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

CUresult stream_work(const char* function, CUstream stream, bool& capturing) {
  std::lock_guard<std::mutex> lock(state().mutex);
  return stream_work_locked(function, stream, capturing);
}

void capture_append(CUstream stream, GraphNode node) {
  std::lock_guard<std::mutex> lock(state().mutex);
  stream->nodes.push_back(std::move(node));
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
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {CUDA_ERROR_ASSERT, "CUDA_ERROR_ASSERT", "device-side assert triggered"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
     "operation failed due to a previous error during capture"},
    {CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
     "attempt to terminate a thread-local capture sequence from another thread"},
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
  if (CUresult r = check_context("cuCtxSynchronize")) return r;
  if (any_capture(false)) {
    invalidate_captures(false);
    return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                "cuCtxSynchronize: not permitted while a stream captures (the capture is now invalidated)");
  }
  return CUDA_SUCCESS;
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
  if (CUresult r = refuse_unsafe("cuMemAlloc")) return r;
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
  if (CUresult r = refuse_unsafe("cuMemFree")) return r;
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
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr destination, const void* source, size_t bytes, CUstream stream) {
  return copy_checked("cuMemcpyHtoDAsync", reinterpret_cast<void*>(destination), source, bytes, true, false, true, stream);
}
CUresult cuMemcpyDtoHAsync_v2(void* destination, CUdeviceptr source, size_t bytes, CUstream stream) {
  return copy_checked("cuMemcpyDtoHAsync", destination, reinterpret_cast<const void*>(source), bytes, false, true, true,
                      stream);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr destination, CUdeviceptr source, size_t bytes, CUstream stream) {
  return copy_checked("cuMemcpyDtoDAsync", reinterpret_cast<void*>(destination), reinterpret_cast<const void*>(source),
                      bytes, true, true, true, stream);
}
CUresult cuMemsetD8_v2(CUdeviceptr destination, unsigned char value, size_t count) {
  return fill<unsigned char>("cuMemsetD8", destination, value, count);
}
CUresult cuMemsetD32_v2(CUdeviceptr destination, unsigned value, size_t count) {
  return fill<unsigned>("cuMemsetD32", destination, value, count);
}
CUresult cuMemsetD8Async(CUdeviceptr destination, unsigned char value, size_t count, CUstream stream) {
  return fill<unsigned char>("cuMemsetD8Async", destination, value, count, true, stream);
}
CUresult cuMemsetD32Async(CUdeviceptr destination, unsigned value, size_t count, CUstream stream) {
  return fill<unsigned>("cuMemsetD32Async", destination, value, count, true, stream);
}

// ---- streams and events (everything is synchronous: work is done when the call returns) ----------------------------------
CUresult cuStreamCreate(CUstream* stream, unsigned flags) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (stream == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate: null pointer");
  if (CUresult r = check_context("cuStreamCreate")) return r;
  *stream = new CUstream_st();
  (*stream)->context = tl_current;
  (*stream)->flags = flags;
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
  if (!stream_ok(stream)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamSynchronize: not a live stream");
  if (is_legacy_stream(stream)) return refuse_legacy("cuStreamSynchronize");
  if (!is_special_stream(stream) && stream->capturing) {
    stream->invalidated = true;
    return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                "cuStreamSynchronize: the stream is capturing (the capture is now invalidated)");
  }
  return CUDA_SUCCESS;
}

// ---- stream capture and graphs -------------------------------------------------------------------------------------------
CUresult cuStreamBeginCapture_v2(CUstream stream, int mode) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (CUresult r = check_context("cuStreamBeginCapture")) return r;
  if (!stream_ok(stream)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamBeginCapture: not a live stream");
  if (is_special_stream(stream))
    return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture: the default stream cannot be captured");
  if (mode < CU_STREAM_CAPTURE_MODE_GLOBAL || mode > CU_STREAM_CAPTURE_MODE_RELAXED)
    return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamBeginCapture: unknown capture mode " + std::to_string(mode));
  if (stream->capturing)
    return fail(CUDA_ERROR_ILLEGAL_STATE, "cuStreamBeginCapture: the stream is already capturing");
  stream->capturing = true;
  stream->invalidated = false;
  stream->mode = mode;
  stream->capture_thread = std::this_thread::get_id();
  stream->nodes.clear();
  return CUDA_SUCCESS;
}

CUresult cuStreamEndCapture(CUstream stream, CUgraph* graph) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (graph == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamEndCapture: null pointer");
  *graph = nullptr;
  if (!stream_ok(stream) || is_special_stream(stream))
    return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamEndCapture: not a live stream");
  if (!stream->capturing) return fail(CUDA_ERROR_ILLEGAL_STATE, "cuStreamEndCapture: the stream is not capturing");
  if (stream->mode != CU_STREAM_CAPTURE_MODE_RELAXED && stream->capture_thread != std::this_thread::get_id())
    return fail(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD,
                "cuStreamEndCapture: the capture was begun on another thread (global/thread-local mode)");
  stream->capturing = false;
  std::vector<GraphNode> nodes;
  nodes.swap(stream->nodes);
  if (stream->invalidated) {
    stream->invalidated = false;
    return fail(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                "cuStreamEndCapture: the capture was invalidated by a refused call during it; no graph was made");
  }
  *graph = new CUgraph_st{std::move(nodes)};
  s.graphs.insert(*graph);
  return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(CUstream stream, int* status) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (status == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamIsCapturing: null pointer");
  if (!stream_ok(stream)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamIsCapturing: not a live stream");
  if (is_special_stream(stream)) {
    *status = CU_STREAM_CAPTURE_STATUS_NONE;
    return is_legacy_stream(stream) ? refuse_legacy("cuStreamIsCapturing") : CUDA_SUCCESS;
  }
  *status = !stream->capturing ? CU_STREAM_CAPTURE_STATUS_NONE
            : stream->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                  : CU_STREAM_CAPTURE_STATUS_ACTIVE;
  return CUDA_SUCCESS;
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long flags) {
  DriverState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (exec == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuGraphInstantiateWithFlags: null pointer");
  if (!s.graphs.count(graph)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuGraphInstantiateWithFlags: not a live graph");
  if (flags != 0)
    return fail(CUDA_ERROR_INVALID_VALUE, "cuGraphInstantiateWithFlags: the emulator instantiates with flags 0 only");
  *exec = new CUgraphExec_st{graph->nodes};  // a snapshot: later changes to the graph do not reach it
  s.executables.insert(*exec);
  return CUDA_SUCCESS;
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
  std::vector<GraphNode> nodes;
  {
    DriverState& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (CUresult r = check_context("cuGraphLaunch")) return r;
    if (!s.executables.count(exec)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuGraphLaunch: not a live graph executable");
    bool capturing = false;
    if (CUresult r = stream_work_locked("cuGraphLaunch", stream, capturing)) return r;
    if (capturing) {  // a graph launched into a capture becomes part of it
      std::vector<GraphNode> copy = exec->nodes;
      stream->nodes.insert(stream->nodes.end(), copy.begin(), copy.end());
      return CUDA_SUCCESS;
    }
    nodes = exec->nodes;
  }
  // In order, each to completion (the device runs one thing at a time), as the stream would have run them.
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    std::string message;
    const CUresult r = nodes[i](message);
    if (r != CUDA_SUCCESS) return fail(r, "cuGraphLaunch: node " + std::to_string(i) + ": " + message);
  }
  return CUDA_SUCCESS;
}

// Forgets and deletes a live graph or executable (one of `live`), else CUDA_ERROR_INVALID_HANDLE naming `function`.
template <class Handle>
static CUresult destroy_graph_object(std::set<Handle>& live, Handle handle, const char* function) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!live.count(handle)) return fail(CUDA_ERROR_INVALID_HANDLE, std::string(function) + ": not a live handle");
  live.erase(handle);
  delete handle;
  return CUDA_SUCCESS;
}

CUresult cuGraphExecDestroy(CUgraphExec exec) {
  return destroy_graph_object(state().executables, exec, "cuGraphExecDestroy");
}

CUresult cuGraphDestroy(CUgraph graph) { return destroy_graph_object(state().graphs, graph, "cuGraphDestroy"); }

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
  bool capturing = false;
  if (CUresult r = stream_work_locked("cuEventRecord", stream, capturing)) return r;
  if (capturing) {  // an event record node: the time is taken when the graph reaches it
    stream->nodes.push_back([event](std::string&) {
      std::lock_guard<std::mutex> inner(state().mutex);
      if (state().events.count(event)) {
        event->recorded = true;
        event->time = std::chrono::steady_clock::now();
      }
      return CUDA_SUCCESS;
    });
    return CUDA_SUCCESS;
  }
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
    bool capturing = false;
    if (CUresult r = stream_work_locked("cuLaunchKernel", stream, capturing)) return r;
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
    if (capturing) {
      // The parameters are copied by value now, as cuLaunchKernel does during a capture: the caller's argument memory
      // may be gone (or changed) when the graph runs.
      struct Captured {
        std::vector<std::vector<char>> values;
        std::vector<void*> pointers;
      };
      auto captured = std::make_shared<Captured>();
      for (int i = 0; i < k->param_count; ++i) {
        const char* from = static_cast<const char*>(params[i]);
        captured->values.emplace_back(from, from + k->param_sizes[i]);
      }
      for (auto& v : captured->values) captured->pointers.push_back(v.data());
      const GridLaunch recorded = launch;
      stream->nodes.push_back([recorded, captured, name](std::string& message) {
        GridLaunch l = recorded;
        l.params = captured->pointers.data();
        std::string inner;
        const CUresult r = run_grid(l, inner);
        if (r != CUDA_SUCCESS) message = "cuLaunchKernel (graph node) " + name + ": " + inner;
        return r;
      });
      return CUDA_SUCCESS;
    }
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
