#!/usr/bin/env bash
# Fresh Debian machine -> every test: install dependencies, then
#  1. release build (-O2 -Werror), Check unit tests, lint;
#  2. the black-box HTTP suite (pytest) against the release binary, every
#     response validated against openapi.yaml; OpenAPI lint (redocly);
#  3. ASan+UBSan build: unit tests and the black-box suite;
#  4. ThreadSanitizer build: unit tests and the concurrency tests;
#  5. operations: promtool + a real Prometheus scraping the service, and the
#     Docker recipe run on the host (scripts/docker-recipe.sh).
# Set QUICK=1 to skip the sanitizer builds.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/scripts/install-deps.sh" test
[ -x configure ] || ./autogen.sh >/dev/null 2>&1

passed=0; failed=0; failures=()
step() {
    local name=$1; shift
    echo "=== $name"
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1)); echo "--- ok: $name ($((SECONDS - t0)) s)"
    else
        failed=$((failed + 1)); failures+=("$name"); echo "--- FAILED: $name ($((SECONDS - t0)) s)"
    fi
}

# with_env "A=1 B=2" CMD...: run CMD (a command or a function of this
# script) in a subshell with those variables exported.
with_env() {
    local vars=$1; shift
    ( for kv in $vars; do export "${kv?}"; done; "$@" )
}

unit_tests() { # BUILD_DIR
    make -C "$1" -s -j"$(nproc)" check || { cat "$1"/tests/unit/*.log 2>/dev/null | tail -200; return 1; }
    grep -h -E '^[0-9]+%: Checks' "$1"/tests/unit/*.log || true
}

pytest_http() { # BIN [pytest args]
    local bin=$1; shift
    PROXYCACHE_BIN=$bin /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/http "$@"
}

openapi_lint() {
    if [ -f package-lock.json ]; then
        npm ci --silent --no-audit --no-fund >/dev/null 2>&1 || npm install --silent --no-audit --no-fund >/dev/null
        npx --no-install redocly lint openapi.yaml
    else
        npx --yes @redocly/cli@1 lint openapi.yaml
    fi
}

export CK_DEFAULT_TIMEOUT=120

# 1. Release build.
step "build (release, -Werror)" env CFLAGS="-O2 -g" scripts/build.sh build-release --enable-werror
step "unit tests (release)" unit_tests build-release
step "lint (banned functions)" make -C build-release -s lint
# 2. Black-box.
step "black-box HTTP suite (release)" pytest_http "$top/build-release/proxycached"
step "openapi lint (redocly)" openapi_lint

if [ "${QUICK:-0}" != 1 ]; then
    # 3. ASan + UBSan (clang).
    step "build (clang ASan+UBSan)" env CC=clang scripts/build.sh build-asan --enable-sanitizers=address,undefined
    step "unit tests (ASan+UBSan)" with_env "ASAN_OPTIONS=detect_leaks=1 CK_TIMEOUT_MULTIPLIER=4" \
        unit_tests build-asan
    step "black-box HTTP suite (ASan+UBSan)" with_env "ASAN_OPTIONS=detect_leaks=0" \
        pytest_http "$top/build-asan/proxycached" -m "not slow"
    # 4. ThreadSanitizer (clang).
    step "build (clang TSan)" env CC=clang scripts/build.sh build-tsan --enable-sanitizers=thread
    step "unit tests (TSan)" with_env "TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 CK_TIMEOUT_MULTIPLIER=6" \
        unit_tests build-tsan
    step "concurrency tests over HTTP (TSan)" with_env "TSAN_OPTIONS=halt_on_error=1:exitcode=66" \
        pytest_http "$top/build-tsan/proxycached" -k "concurren or parallel or kill"
fi

# 5. Operations.
if [ -d tests/ops ]; then
    step "operations: promtool and Prometheus scrape" env PROXYCACHE_BIN="$top/build-release/proxycached" \
        /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/ops
fi
if [ -x scripts/docker-recipe.sh ]; then
    step "docker recipe on the host" scripts/docker-recipe.sh
fi

echo
echo "steps: $passed passed, $failed failed"
for f in "${failures[@]+"${failures[@]}"}"; do echo "  failed: $f"; done
[ "$failed" -eq 0 ]
