#!/usr/bin/env bash
# Installs the Fashion-MNIST IDX files (Debian package dataset-fashion-mnist) into /usr/share/datasets/fashion-mnist.
# Idempotent and quiet when the data is already there, so CI can run it unconditionally.
set -euo pipefail
marker=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
[ -f "$marker" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-data: apt-get not found; install the Debian package dataset-fashion-mnist (or put the IDX files in $(dirname "$marker")) and run again." >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# Refresh the package lists only when apt does not know the package yet (saves a slow network round trip).
if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
  $sudo apt-get update -qq
fi
# env inside sudo: sudo drops most of the caller's environment.
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null

if [ ! -f "$marker" ]; then
  echo "install-data: dataset-fashion-mnist is installed but $marker is missing; check the package contents with: dpkg -L dataset-fashion-mnist" >&2
  exit 1
fi
