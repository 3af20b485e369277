#!/usr/bin/env bash
# Fresh Debian machine -> running service: install dependencies, build, and
# start proxycached on 127.0.0.1:8080 with its data in ./data.
# Extra arguments are passed to proxycached.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh" build
CFLAGS="-O2 -g -D_FORTIFY_SOURCE=2 -fstack-protector-strong" \
    "$top/scripts/build.sh" "$top/build"
exec "$top/build/proxycached" --listen 127.0.0.1:8080 --data-dir ./data "$@"
