#!/usr/bin/env bash
# Installs what is missing, then configures and builds fingate into build/ (Ninja, ccache, -j2).
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache: paths relative to the checkout, so another clone (CI) reuses this machine's cache.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} "$@" >/dev/null
ninja -C "$BUILD_DIR" -j"${JOBS:-2}"
