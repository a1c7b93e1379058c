#!/usr/bin/env bash
# Installs what the CUDA checks need on Debian/Ubuntu, without a GPU: NVRTC 11.8 (Debian's libnvrtc11.2 +
# libnvrtc-builtins11.8, which load as libnvrtc.so.11.2), ptxas taken out of the nvidia-cuda-toolkit package into
# ~/.cache/repa/cuda/bin (nothing else of that package is installed), and g++/cmake for the kernel emulator.
# Idempotent and quiet when everything is already there; sudo only when not root.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/repa/cuda"
ptxas="$cache/bin/ptxas"

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

have_nvrtc() { ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so' && ldconfig -p | grep -q 'libnvrtc-builtins\.so'; }
have_ptxas() { [ -x "$ptxas" ] && "$ptxas" --version >/dev/null 2>&1; }
have_build_tools() { command -v g++ >/dev/null 2>&1 && command -v cmake >/dev/null 2>&1 && command -v make >/dev/null 2>&1; }

if have_nvrtc && have_ptxas && have_build_tools; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-cuda-tools: apt-get was not found; install NVRTC (libnvrtc), ptxas (as $ptxas), g++ and cmake by hand." >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_quiet() { sudo_if_needed apt-get -qq -o=Dpkg::Use-Pty=0 "$@" >/dev/null; }

# NVIDIA's packages live in Debian's contrib/non-free (Ubuntu: multiverse). Add those components for this release
# when apt does not know the packages yet.
updated=0
if ! apt-cache show libnvrtc11.2 >/dev/null 2>&1 || ! apt-cache show nvidia-cuda-toolkit >/dev/null 2>&1; then
  . /etc/os-release
  case "${ID:-}" in
    debian)
      sources=/etc/apt/sources.list.d/repa-cuda.sources
      if [ ! -f "$sources" ]; then
        printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: ${VERSION_CODENAME:-bookworm}" \
          "Components: contrib non-free" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
          | sudo_if_needed tee "$sources" >/dev/null
      fi
      ;;
    ubuntu)
      command -v add-apt-repository >/dev/null 2>&1 || { apt_quiet update; apt_quiet install software-properties-common; }
      sudo_if_needed add-apt-repository -y multiverse >/dev/null
      ;;
  esac
  apt_quiet update
  updated=1
fi

packages=()
have_nvrtc || packages+=(libnvrtc11.2 libnvrtc-builtins11.8)
command -v g++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1 || packages+=(build-essential)
command -v cmake >/dev/null 2>&1 || packages+=(cmake)
if [ ${#packages[@]} -gt 0 ]; then
  if ! apt_quiet install --no-install-recommends "${packages[@]}" 2>/dev/null; then
    [ "$updated" -eq 1 ] || apt_quiet update
    apt_quiet install --no-install-recommends "${packages[@]}"
  fi
fi

if ! have_ptxas; then
  # Only usr/bin/ptxas is wanted from the toolkit package (hundreds of MB once installed): download the .deb and take
  # that one file out of it.
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download -qq nvidia-cuda-toolkit >/dev/null 2>&1) \
    || { [ "$updated" -eq 1 ] || apt_quiet update; (cd "$work" && apt-get download -qq nvidia-cuda-toolkit >/dev/null); }
  deb=$(ls "$work"/nvidia-cuda-toolkit_*.deb)
  # tar stops reading at the first match, so dpkg-deb may die of a broken pipe: only tar's status counts.
  { dpkg-deb --fsys-tarfile "$deb" 2>/dev/null || true; } | tar -x -C "$work" --occurrence=1 ./usr/bin/ptxas
  mkdir -p "$cache/bin"
  install -m 0755 "$work/usr/bin/ptxas" "$ptxas.tmp"
  mv "$ptxas.tmp" "$ptxas"
fi

if ! have_nvrtc || ! have_ptxas || ! have_build_tools; then
  echo "install-cuda-tools: NVRTC, ptxas ($ptxas), g++ or cmake is still missing after installing; see the apt output above." >&2
  exit 1
fi
