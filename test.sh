#!/usr/bin/env bash
# Runs the whole Repa test suite on a fresh Debian/Ubuntu machine with the .NET 10 SDK, installing what it needs,
# and ends with one line: "N passed, N failed[, N skipped]". Extra arguments go to `dotnet test` (e.g. --filter).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
results=$(mktemp -d)
status=0
dotnet test Repa.sln -c Release --nologo --logger "trx;LogFileName=results.trx" --results-directory "$results" "$@" || status=$?
trx="$results/results.trx"
if [ ! -f "$trx" ]; then
  echo "test.sh: no test results were written (the build or the test host failed; see above)."
  echo "0 passed, 1 failed"
  exit 1
fi
counter() { grep -o "<Counters [^>]*" "$trx" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]*'; }
passed=$(counter passed); failed=$(counter failed)
# Ignored tests (e.g. the GPU ones on a machine without a GPU) are in total but not in executed; TRX's notExecuted
# counter stays 0 for them.
skipped=$(( $(counter total) - $(counter executed) ))
line="$passed passed, $failed failed"
[ "${skipped:-0}" -gt 0 ] && line="$line, $skipped skipped"
echo "$line"
rm -rf "$results"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
