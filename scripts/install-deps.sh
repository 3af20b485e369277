#!/usr/bin/env bash
# Install what proxycache needs on Debian bookworm (build, or build + tests).
# Usage: scripts/install-deps.sh [build|test]
set -euo pipefail
mode=${1:-build}

build_pkgs=(build-essential autoconf automake autoconf-archive pkg-config
    libmicrohttpd-dev libsqlite3-dev libssl-dev libjansson-dev check curl)
test_pkgs=(python3 python3-pytest python3-requests python3-yaml
    python3-jsonschema python3-cryptography clang libclang-rt-14-dev lcov
    sqlite3 prometheus nodejs npm wrk nginx-light redis-server util-linux procps bc)

pkgs=("${build_pkgs[@]}")
[ "$mode" = test ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from elsewhere than Debian (e.g. a preinstalled Node 20).
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | grep -v '^$' || true)
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    echo "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
