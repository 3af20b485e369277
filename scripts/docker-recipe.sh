#!/usr/bin/env bash
# Run the Dockerfile's recipe on the host (no Docker engine here): build with
# the same scripts into a staging prefix, then run the staged binary the way
# the image does -- as a non-root user, configured by environment only,
# listening on all interfaces with an API token -- and check the HEALTHCHECK
# endpoint, an authenticated request, and a clean exit on SIGTERM.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/proxycache-docker-XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$top/scripts/install-deps.sh" build
CFLAGS="-O2 -D_FORTIFY_SOURCE=2 -fstack-protector-strong" \
    "$top/scripts/build.sh" "$work/build" --prefix=/usr/local
make -s -C "$work/build" install DESTDIR="$work/stage"
test -x "$work/stage/usr/local/bin/proxycached"
test -f "$work/stage/usr/local/share/doc/proxycache/openapi.yaml"

# The image's runtime user: unprivileged, owning only the data volume.
mkdir -p "$work/data"; chown 65534:65534 "$work/data"; chmod 755 "$work"
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
token=recipe-token-$RANDOM$RANDOM
env -i PATH=/usr/bin:/bin \
    PROXYCACHE_LISTEN="0.0.0.0:$port" PROXYCACHE_DATA_DIR="$work/data" \
    PROXYCACHE_API_TOKEN="$token" \
    PROXYCACHE_OPENAPI="$work/stage/usr/local/share/doc/proxycache/openapi.yaml" \
    setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$work/stage/usr/local/bin/proxycached" 2>"$work/log" &
pid=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/healthz"; echo
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/stats")
[ "$code" = 401 ] || { echo "expected 401 without token, got $code"; exit 1; }
curl -fsS -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/stats"
owner=$(stat -c %u "$work/data/cache.db")
[ "$owner" = 65534 ] || { echo "data written by uid $owner, expected 65534"; exit 1; }
kill -TERM "$pid"; rc=0; wait "$pid" || rc=$?; pid=""
[ "$rc" = 0 ] || { echo "exit status $rc after SIGTERM"; cat "$work/log"; exit 1; }
if grep -q "$token" "$work/log"; then echo "token leaked into the log"; exit 1; fi
# A real Dockerfile linter from the npm registry, when it installs.
if command -v npx >/dev/null 2>&1; then
    npx --yes dockerfilelint@1.8.0 "$top/Dockerfile" || { echo "dockerfilelint failed"; exit 1; }
fi
echo "docker recipe: ok (staged install, non-root run, healthz, auth, SIGTERM)"
