#!/usr/bin/env bash
# Installs what building, testing and benchmarking Repa needs on Debian/Ubuntu. Idempotent and quiet when done.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dotnet >/dev/null 2>&1; then
  echo "setup: the .NET 10 SDK is required (https://learn.microsoft.com/dotnet/core/install/linux-debian); install it and run again." >&2
  exit 1
fi
dotnet restore Repa.sln --nologo -v quiet
# The default training data (Debian's dataset-fashion-mnist); the data tests and `train` use it.
bash scripts/install-data.sh
# NVRTC 11.8 + ptxas (the kernel compile checks) and g++/cmake (the CUDA emulator build); no GPU needed.
bash scripts/install-cuda-tools.sh
