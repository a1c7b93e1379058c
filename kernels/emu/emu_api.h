// The C API that librepa_cuda_emu.so exports: the subset of the CUDA driver API and of cuBLAS that Repa's CUDA backend
// calls, with the real names, signatures and status codes (our own declarations, compatible with cuda.h and
// cublas_api.h), plus the emulator's own repaEmu* functions. Device memory is host memory: a CUdeviceptr is an address.
#pragma once
#include <cstddef>
#include <cstdint>

#define REPA_EMU_API extern "C" __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st* CUcontext;
typedef struct CUmod_st* CUmodule;
typedef struct CUfunc_st* CUfunction;
typedef struct CUstream_st* CUstream;
typedef struct CUevent_st* CUevent;
typedef struct CUgraph_st* CUgraph;
typedef struct CUgraphExec_st* CUgraphExec;
typedef int CUdevice_attribute;
typedef int CUfunction_attribute;

enum : int {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_INVALID_VALUE = 1,
  CUDA_ERROR_OUT_OF_MEMORY = 2,
  CUDA_ERROR_NOT_INITIALIZED = 3,
  CUDA_ERROR_NO_DEVICE = 100,
  CUDA_ERROR_INVALID_DEVICE = 101,
  CUDA_ERROR_INVALID_IMAGE = 200,
  CUDA_ERROR_INVALID_CONTEXT = 201,
  CUDA_ERROR_INVALID_PTX = 218,
  CUDA_ERROR_INVALID_HANDLE = 400,
  CUDA_ERROR_ILLEGAL_STATE = 401,
  CUDA_ERROR_NOT_FOUND = 500,
  CUDA_ERROR_NOT_READY = 600,
  CUDA_ERROR_ILLEGAL_ADDRESS = 700,
  CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
  CUDA_ERROR_ASSERT = 710,
  CUDA_ERROR_LAUNCH_FAILED = 719,
  CUDA_ERROR_NOT_SUPPORTED = 801,
  CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
  CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
  CUDA_ERROR_STREAM_CAPTURE_IMPLICIT = 906,
  CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
  CUDA_ERROR_UNKNOWN = 999,
};

enum : int {
  CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 1,
  CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X = 2,
  CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y = 3,
  CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z = 4,
  CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X = 5,
  CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y = 6,
  CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z = 7,
  CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK = 8,
  CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY = 9,
  CU_DEVICE_ATTRIBUTE_WARP_SIZE = 10,
  CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK = 12,
  CU_DEVICE_ATTRIBUTE_CLOCK_RATE = 13,
  CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
  CU_DEVICE_ATTRIBUTE_INTEGRATED = 18,
  CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS = 31,
  CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE = 36,
  CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH = 37,
  CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE = 38,
  CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR = 39,
  CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING = 41,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
  CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR = 81,
  CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR = 82,
  CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97,
  CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR = 106,
};

enum : int {
  CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0,
  CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1,
  CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES = 2,
  CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES = 3,
  CU_FUNC_ATTRIBUTE_NUM_REGS = 4,
  CU_FUNC_ATTRIBUTE_PTX_VERSION = 5,
  CU_FUNC_ATTRIBUTE_BINARY_VERSION = 6,
  CU_FUNC_ATTRIBUTE_CACHE_MODE_CA = 7,
  CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8,
  CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9,
};

// CUstreamCaptureMode and CUstreamCaptureStatus.
enum : int { CU_STREAM_CAPTURE_MODE_GLOBAL = 0, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1, CU_STREAM_CAPTURE_MODE_RELAXED = 2 };
enum : int { CU_STREAM_CAPTURE_STATUS_NONE = 0, CU_STREAM_CAPTURE_STATUS_ACTIVE = 1, CU_STREAM_CAPTURE_STATUS_INVALIDATED = 2 };
enum : unsigned { CU_STREAM_DEFAULT = 0, CU_STREAM_NON_BLOCKING = 1 };

enum : unsigned { CU_EVENT_DEFAULT = 0, CU_EVENT_BLOCKING_SYNC = 1, CU_EVENT_DISABLE_TIMING = 2 };

// cuLaunchKernel's `extra` array (kernel arguments packed in one buffer).
#define CU_LAUNCH_PARAM_END ((void*)0x00)
#define CU_LAUNCH_PARAM_BUFFER_POINTER ((void*)0x01)
#define CU_LAUNCH_PARAM_BUFFER_SIZE ((void*)0x02)

// ---- cuBLAS -----------------------------------------------------------------------------------------------------------
typedef struct cublasContext* cublasHandle_t;
typedef int cublasStatus_t;
typedef int cublasOperation_t;
typedef int cudaDataType;
typedef int cublasComputeType_t;
typedef int cublasGemmAlgo_t;
typedef int cublasMath_t;
typedef int cublasPointerMode_t;
typedef CUstream cudaStream_t;

enum : int {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_MAPPING_ERROR = 11,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
enum : int { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
enum : int {
  CUBLAS_COMPUTE_16F = 64,
  CUBLAS_COMPUTE_32F = 68,
  CUBLAS_COMPUTE_32F_PEDANTIC = 69,
  CUBLAS_COMPUTE_64F = 70,
  CUBLAS_COMPUTE_32F_FAST_16F = 74,
  CUBLAS_COMPUTE_32F_FAST_16BF = 75,
  CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
};
enum : int { CUBLAS_GEMM_DEFAULT = -1, CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99 };
enum : int { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 };

// ---- driver API --------------------------------------------------------------------------------------------------------
REPA_EMU_API CUresult cuInit(unsigned flags);
REPA_EMU_API CUresult cuDriverGetVersion(int* version);
REPA_EMU_API CUresult cuGetErrorString(CUresult error, const char** text);
REPA_EMU_API CUresult cuGetErrorName(CUresult error, const char** text);
REPA_EMU_API CUresult cuDeviceGet(CUdevice* device, int ordinal);
REPA_EMU_API CUresult cuDeviceGetCount(int* count);
REPA_EMU_API CUresult cuDeviceGetName(char* name, int length, CUdevice device);
REPA_EMU_API CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice device);
REPA_EMU_API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice device);
REPA_EMU_API CUresult cuCtxCreate_v2(CUcontext* context, unsigned flags, CUdevice device);
REPA_EMU_API CUresult cuCtxDestroy_v2(CUcontext context);
REPA_EMU_API CUresult cuCtxSetCurrent(CUcontext context);
REPA_EMU_API CUresult cuCtxGetCurrent(CUcontext* context);
REPA_EMU_API CUresult cuCtxSynchronize(void);
REPA_EMU_API CUresult cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice device);
REPA_EMU_API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device);
REPA_EMU_API CUresult cuMemAlloc_v2(CUdeviceptr* pointer, size_t bytes);
REPA_EMU_API CUresult cuMemFree_v2(CUdeviceptr pointer);
REPA_EMU_API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes);
REPA_EMU_API CUresult cuMemcpyHtoD_v2(CUdeviceptr destination, const void* source, size_t bytes);
REPA_EMU_API CUresult cuMemcpyDtoH_v2(void* destination, CUdeviceptr source, size_t bytes);
REPA_EMU_API CUresult cuMemcpyDtoD_v2(CUdeviceptr destination, CUdeviceptr source, size_t bytes);
REPA_EMU_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr destination, const void* source, size_t bytes, CUstream stream);
REPA_EMU_API CUresult cuMemcpyDtoHAsync_v2(void* destination, CUdeviceptr source, size_t bytes, CUstream stream);
REPA_EMU_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr destination, CUdeviceptr source, size_t bytes, CUstream stream);
REPA_EMU_API CUresult cuMemsetD8_v2(CUdeviceptr destination, unsigned char value, size_t count);
REPA_EMU_API CUresult cuMemsetD32_v2(CUdeviceptr destination, unsigned value, size_t count);
REPA_EMU_API CUresult cuMemsetD8Async(CUdeviceptr destination, unsigned char value, size_t count, CUstream stream);
REPA_EMU_API CUresult cuMemsetD32Async(CUdeviceptr destination, unsigned value, size_t count, CUstream stream);
REPA_EMU_API CUresult cuStreamCreate(CUstream* stream, unsigned flags);
REPA_EMU_API CUresult cuStreamDestroy_v2(CUstream stream);
REPA_EMU_API CUresult cuStreamSynchronize(CUstream stream);
REPA_EMU_API CUresult cuStreamQuery(CUstream stream);
REPA_EMU_API CUresult cuStreamBeginCapture_v2(CUstream stream, int mode);
REPA_EMU_API CUresult cuStreamEndCapture(CUstream stream, CUgraph* graph);
REPA_EMU_API CUresult cuStreamIsCapturing(CUstream stream, int* status);
REPA_EMU_API CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long flags);
REPA_EMU_API CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream);
REPA_EMU_API CUresult cuGraphExecDestroy(CUgraphExec exec);
REPA_EMU_API CUresult cuGraphDestroy(CUgraph graph);
REPA_EMU_API CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned flags);
REPA_EMU_API CUresult cuEventCreate(CUevent* event, unsigned flags);
REPA_EMU_API CUresult cuEventRecord(CUevent event, CUstream stream);
REPA_EMU_API CUresult cuEventSynchronize(CUevent event);
REPA_EMU_API CUresult cuEventQuery(CUevent event);
REPA_EMU_API CUresult cuEventElapsedTime(float* milliseconds, CUevent start, CUevent end);
REPA_EMU_API CUresult cuEventDestroy_v2(CUevent event);
REPA_EMU_API CUresult cuModuleLoadData(CUmodule* module, const void* image);
REPA_EMU_API CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned option_count, int* options,
                                         void** option_values);
REPA_EMU_API CUresult cuModuleUnload(CUmodule module);
REPA_EMU_API CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name);
REPA_EMU_API CUresult cuFuncGetAttribute(int* value, CUfunction_attribute attribute, CUfunction function);
REPA_EMU_API CUresult cuFuncSetAttribute(CUfunction function, CUfunction_attribute attribute, int value);
REPA_EMU_API CUresult cuLaunchKernel(CUfunction function, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                                     unsigned block_x, unsigned block_y, unsigned block_z, unsigned shared_bytes,
                                     CUstream stream, void** params, void** extra);

// ---- cuBLAS ----------------------------------------------------------------------------------------------------------
REPA_EMU_API cublasStatus_t cublasCreate_v2(cublasHandle_t* handle);
REPA_EMU_API cublasStatus_t cublasDestroy_v2(cublasHandle_t handle);
REPA_EMU_API cublasStatus_t cublasGetVersion_v2(cublasHandle_t handle, int* version);
REPA_EMU_API cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream);
REPA_EMU_API cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream);
REPA_EMU_API cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
REPA_EMU_API cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode);
REPA_EMU_API cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode);
REPA_EMU_API cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t* mode);
REPA_EMU_API cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes);
REPA_EMU_API cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                           int m, int n, int k, const float* alpha, const float* a, int lda,
                                           const float* b, int ldb, const float* beta, float* c, int ldc);
REPA_EMU_API cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                                      cublasOperation_t transb, int m, int n, int k, const float* alpha,
                                                      const float* a, int lda, long long stride_a, const float* b,
                                                      int ldb, long long stride_b, const float* beta, float* c, int ldc,
                                                      long long stride_c, int batch_count);
REPA_EMU_API cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const void* alpha, const void* a, cudaDataType a_type,
                                         int lda, const void* b, cudaDataType b_type, int ldb, const void* beta, void* c,
                                         cudaDataType c_type, int ldc, cublasComputeType_t compute_type,
                                         cublasGemmAlgo_t algo);
REPA_EMU_API cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                                       cublasOperation_t transb, int m, int n, int k, const void* alpha,
                                                       const void* a, cudaDataType a_type, int lda, long long stride_a,
                                                       const void* b, cudaDataType b_type, int ldb, long long stride_b,
                                                       const void* beta, void* c, cudaDataType c_type, int ldc,
                                                       long long stride_c, int batch_count,
                                                       cublasComputeType_t compute_type, cublasGemmAlgo_t algo);

// ---- cuBLASLt (cublasLt.h): the subset for GEMMs with bias / GELU / bias-gradient epilogues --------------------------
typedef struct cublasLtContext* cublasLtHandle_t;
typedef struct cublasLtMatmulDescEmu* cublasLtMatmulDesc_t;
typedef struct cublasLtMatrixLayoutEmu* cublasLtMatrixLayout_t;
typedef struct cublasLtMatmulPreferenceEmu* cublasLtMatmulPreference_t;
typedef struct {
  uint64_t data[8];
} cublasLtMatmulAlgo_t;
typedef struct {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
} cublasLtMatmulHeuristicResult_t;
// cublasLtMatmulDescAttributes_t (the values of cublasLt.h; 9 is unused there).
enum : int {
  CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0,
  CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,
  CUBLASLT_MATMUL_DESC_POINTER_MODE = 2,
  CUBLASLT_MATMUL_DESC_TRANSA = 3,
  CUBLASLT_MATMUL_DESC_TRANSB = 4,
  CUBLASLT_MATMUL_DESC_TRANSC = 5,
  CUBLASLT_MATMUL_DESC_FILL_MODE = 6,
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
  CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE = 10,
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11,
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12,
};
enum : int {
  CUBLASLT_MATRIX_LAYOUT_TYPE = 0,
  CUBLASLT_MATRIX_LAYOUT_ORDER = 1,
  CUBLASLT_MATRIX_LAYOUT_ROWS = 2,
  CUBLASLT_MATRIX_LAYOUT_COLS = 3,
  CUBLASLT_MATRIX_LAYOUT_LD = 4,
  CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,
  CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6,
};
enum : int { CUBLASLT_MATMUL_PREF_SEARCH_MODE = 0, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1 };
// cublasLtEpilogue_t.
enum : int {
  CUBLASLT_EPILOGUE_DEFAULT = 1,
  CUBLASLT_EPILOGUE_BIAS = 4,
  CUBLASLT_EPILOGUE_GELU = 32,
  CUBLASLT_EPILOGUE_GELU_AUX = 32 | 128,
  CUBLASLT_EPILOGUE_GELU_BIAS = 32 | 4,
  CUBLASLT_EPILOGUE_GELU_AUX_BIAS = 32 | 128 | 4,
  CUBLASLT_EPILOGUE_BGRADA = 256,
  CUBLASLT_EPILOGUE_BGRADB = 512,
};
REPA_EMU_API cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle);
REPA_EMU_API cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle);
REPA_EMU_API cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute_type,
                                                     cudaDataType scale_type);
REPA_EMU_API cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc);
REPA_EMU_API cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, int attribute, const void* value,
                                                           size_t size);
REPA_EMU_API cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                                       uint64_t rows, uint64_t cols, int64_t ld);
REPA_EMU_API cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout);
REPA_EMU_API cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, int attribute,
                                                             const void* value, size_t size);
REPA_EMU_API cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* preference);
REPA_EMU_API cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t preference);
REPA_EMU_API cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t preference, int attribute,
                                                                 const void* value, size_t size);
REPA_EMU_API cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                                           cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                           cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                                           cublasLtMatmulPreference_t preference, int requested,
                                                           cublasLtMatmulHeuristicResult_t* results, int* returned);
REPA_EMU_API cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                                           const void* a, cublasLtMatrixLayout_t a_layout, const void* b,
                                           cublasLtMatrixLayout_t b_layout, const void* beta, const void* c,
                                           cublasLtMatrixLayout_t c_layout, void* d, cublasLtMatrixLayout_t d_layout,
                                           const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                                           cudaStream_t stream);

// ---- the emulator's own ------------------------------------------------------------------------------------------------
// The message of the most recent failed call made on the calling thread ("" when none failed): why a launch failed
// (deadlock, assert), which kernel name was not found, which pointer was not device memory ...
REPA_EMU_API const char* repaEmuLastError(void);
// How many OS threads run blocks (REPA_EMU_THREADS, default: the hardware threads).
REPA_EMU_API int repaEmuWorkerCount(void);
// The number of kernels compiled into the library, and the name of kernel i (registration order), for diagnostics.
REPA_EMU_API int repaEmuKernelCount(void);
REPA_EMU_API const char* repaEmuKernelName(int index);
