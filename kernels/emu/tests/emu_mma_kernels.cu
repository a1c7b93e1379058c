// Test kernel for the warp-level tensor-core MMA of kernels/common.cuh (repa::mma_bf16_m16n8k16). Unlike
// emu_test_kernels.cu it includes common.cuh, so it is built into the emulator only (emu_selftest launches it and
// checks it in test_mma); NVRTC compiles the same MMA wherever kernels/attention.cu uses it.
#include "common.cuh"

// Each warp of the block multiplies its own operands, given as raw per-lane fragments (4 + 2 b32 and 4 floats per lane,
// lane-major; warp w starts at lane 32 w), twice: d = a b + c, then d = a b + d in place (d aliasing c). So the result
// is 2 A B + C, written back as per-lane fragments. The host packs and unpacks the fragments with the PTX ISA's layout.
extern "C" __global__ void emu_mma_bf16_m16n8k16(const unsigned int* a, const unsigned int* b, const float* c,
                                                 float* d)
{
    int lane = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int fa[4], fb[2];
    float fc[4], fd[4];
    for (int i = 0; i < 4; ++i) fa[i] = a[4 * lane + i];
    for (int i = 0; i < 2; ++i) fb[i] = b[2 * lane + i];
    for (int i = 0; i < 4; ++i) fc[i] = c[4 * lane + i];
    repa::mma_bf16_m16n8k16(fd, fa, fb, fc);
    repa::mma_bf16_m16n8k16(fd, fa, fb, fd);
    for (int i = 0; i < 4; ++i) d[4 * lane + i] = fd[i];
}
REPA_KERNEL(emu_mma_bf16_m16n8k16);
