#!/usr/bin/env bash
# Builds the CUDA emulator (librepa_cuda_emu.so and its self-test, see docs/notes/emulator.md) with CMake into
# build/emu: incremental, quiet unless something fails. With a directory argument, copies both there (the test
# project's build does this, see src/Repa.Tests/CudaEmulator.targets). Without cmake or g++ it says so and exits 0:
# the build goes on and the EmulatedCuda tests fail, asking for scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  echo "build-emulator: cmake or g++ is missing, so the CUDA emulator was not built; run scripts/setup.sh." >&2
  exit 0
fi
build=build/emu
mkdir -p "$build"
log="$build/last-build.log"
if [ ! -f "$build/CMakeCache.txt" ]; then
  generator=()
  if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
  if ! cmake -S . -B "$build" ${generator[@]+"${generator[@]}"} -DCMAKE_BUILD_TYPE=Release >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$build/CMakeCache.txt"
    exit 1
  fi
fi
if ! cmake --build "$build" --target repa_cuda_emu emu_selftest -j "$(nproc 2>/dev/null || echo 2)" >"$log" 2>&1; then
  cat "$log" >&2
  echo "build-emulator: building the CUDA emulator failed (full log: $log)." >&2
  exit 1
fi
if [ $# -ge 1 ]; then
  mkdir -p "$1"
  cp -p "$build/librepa_cuda_emu.so" "$build/emu_selftest" "$1/"
fi
