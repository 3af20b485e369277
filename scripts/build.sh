#!/usr/bin/env bash
# Configure and build out of tree. Used by the README, CI and the Dockerfile.
# Usage: scripts/build.sh BUILD_DIR [configure arguments...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bdir=${1:?usage: build.sh BUILD_DIR [configure args]}; shift
[ -x "$top/configure" ] || (cd "$top" && ./autogen.sh >/dev/null 2>&1)
mkdir -p "$bdir"
cd "$bdir"
if [ ! -f Makefile ] || [ "${RECONFIGURE:-0}" = 1 ]; then
    "$top/configure" -q "$@"
fi
make -s -j"$(nproc)"
