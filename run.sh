#!/usr/bin/env bash
# The main job: installs what Repa needs, builds it in Release and runs `Repa.Runtime` with the given arguments
# (default: `train`, REPA on Fashion-MNIST with ResNet-18 targets).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
# Quiet on success; the full build log when it fails.
if ! log=$(dotnet build src/Repa.Runtime -c Release --nologo -v quiet 2>&1); then
  echo "$log" >&2
  echo "run.sh: the build failed (see above)." >&2
  exit 1
fi
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(train)
exec dotnet src/Repa.Runtime/bin/Release/net10.0/Repa.Runtime.dll "${args[@]}"
