#!/usr/bin/env bash
# Installs the Debian 12 packages tandem needs to build, test and run.
# Idempotent: when everything is present it only checks, in about a second.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config git
  # libraries
  libtorch-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev rocksdb-tools
  libopenmpi-dev openmpi-bin
  libboost-program-options-dev
  libyaml-cpp-dev nlohmann-json3-dev libssl-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # BLAKE3's C sources (the checkpoint store's chunk hash; no C library in Debian 12)
  librust-blake3-dev
  # data, and PyTorch for checking that exported checkpoints load in Python
  dataset-fashion-mnist python3-torch
  # plots of bench/run
  gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}"
echo "install-deps: done"
