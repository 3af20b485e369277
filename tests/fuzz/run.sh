#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Build and run the libFuzzer harnesses of tests/fuzz for a bounded time.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 20; TARGET defaults to every fuzz_*.c.
# Each harness is linked directly with the sources it exercises (not with
# libproxycache.a) under ASan + UBSan (+ LeakSanitizer), built into a
# temporary directory, and run from a copy of its seed corpus in
# tests/fuzz/corpus/<target>, so the tree is never written to. Targets run
# one after another; each is bounded by -max_total_time plus a hard
# `timeout` guard. One summary line per target is printed; the exit status
# is 0 only if every target built and ran without a finding.
#
# Environment: CC (default clang), FUZZ_OUT (where logs, crash artifacts and
# the grown corpora are kept; default: a fresh temporary directory, removed
# when everything passed, kept and printed otherwise), FUZZ_ARGS (extra
# libFuzzer flags, e.g. "-seed=1").
#
# Works from a fresh clone: if ./configure has not produced config.h, an
# empty stand-in is used (the sources only need the file to exist).
set -u

SECS=${1:-20}
[ $# -gt 0 ] && shift
case $SECS in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
    ;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CC=${CC:-clang}
FUZZ_ARGS=${FUZZ_ARGS:-}

if ! command -v "$CC" >/dev/null 2>&1; then
    echo "run.sh: $CC not found (libFuzzer needs clang)" >&2
    exit 2
fi
if ! command -v pkg-config >/dev/null 2>&1 ||
    ! pkg-config --exists jansson libcrypto; then
    echo "run.sh: pkg-config cannot find jansson and libcrypto" >&2
    exit 2
fi

if [ -n "${FUZZ_OUT:-}" ]; then
    OUT=$FUZZ_OUT
    KEEP=1
    mkdir -p "$OUT" || exit 2
else
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/proxycache-fuzz.XXXXXX") || exit 2
    KEEP=0
fi
BIN=$OUT/bin
mkdir -p "$BIN" || exit 2
# A temporary directory goes away unless something needs looking at.
trap '[ "$KEEP" -eq 0 ] && rm -rf "$OUT"' EXIT

# The sources each harness links (besides itself).
sources_of() {
    case $1 in
    fuzz_url) echo "storage/entry.c" ;;
    fuzz_fernet) echo "storage/crypto.c" ;;
    fuzz_rfc3339) echo "common/clock.c" ;;
    fuzz_line | fuzz_warm)
        echo "storage/formats.c storage/entry.c common/clock.c" ;;
    *) echo "storage/formats.c storage/entry.c storage/crypto.c common/clock.c" ;;
    esac
}

# Per-target libFuzzer options: inputs long enough to reach the limits
# each parser enforces (URL 2 KiB; warm lines 64 KiB, reached by the
# harness's run-length expansion rather than by huge inputs).
options_of() {
    case $1 in
    fuzz_url) echo "-max_len=4096" ;;
    fuzz_fernet) echo "-max_len=4096" ;;
    fuzz_rfc3339) echo "-max_len=64" ;;
    fuzz_line) echo "-max_len=8192" ;;
    fuzz_warm) echo "-max_len=8192" ;;
    *) echo "" ;;
    esac
}

# Dictionaries: the tokens each grammar is made of.
write_dicts() {
    cat >"$OUT/fuzz_url.dict" <<'DICT'
"http://"
"https://"
"socks4://"
"socks5://"
"HTTP://"
"://"
"@"
":"
"["
"]"
"::1"
"%40"
"%3A"
"%00"
"127.0.0.1"
"localhost"
":8080"
":65535"
":65536"
"/"
"?"
"#"
DICT
    cat >"$OUT/fuzz_rfc3339.dict" <<'DICT'
"T"
"Z"
"+00:00"
"-23:59"
":60"
".999"
"9999-12-31"
"0000-01-01"
"-02-29"
DICT
    cat >"$OUT/json.dict" <<'DICT'
"\"key\""
"\"proxy_url\""
"\"username\""
"\"password\""
"\"source\""
"\"protocol\""
"\"fetch_time\""
"\"ttl_seconds\""
"\"expires_at\""
"\"health_status\""
"\"failure_count\""
"\"country\""
"\"anonymity\""
"\"latency_ms\""
"\"last_accessed\""
"\"access_count\""
"\"deleted\""
"\"proxies\""
"\"url\""
"\"http\""
"\"socks5\""
"\"healthy\""
"\"unhealthy\""
"\"elite\""
"null"
"true"
"\\u0000"
"\"2025-11-25T10:00:00.000Z\""
"9999-12-31T23:59:59.999"
"1969-12-31T23:59:59.999Z"
"-23:59"
"+23:59"
"http://"
"socks5://"
"user:pass@"
"1.2.3.4:8080"
"\x0a"
"\x0d\x0a"
","
"\""
"proxy_url,source"
DICT
    cp "$OUT/json.dict" "$OUT/fuzz_line.dict"
    cp "$OUT/json.dict" "$OUT/fuzz_warm.dict"
}

if [ -f "$ROOT/config.h" ]; then
    CONFIG_INC=
else
    mkdir -p "$OUT/inc"
    echo "/* stand-in for the configure output (tests/fuzz/run.sh) */" \
        >"$OUT/inc/config.h"
    CONFIG_INC="-I$OUT/inc"
fi

CFLAGS="-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 -Wall -Wextra -Wshadow -Wpointer-arith -Wstrict-prototypes \
 -Wmissing-prototypes -Wmissing-declarations -Wformat=2 -Wwrite-strings \
 -Wundef -Wvla -Wimplicit-fallthrough \
 -I$ROOT $CONFIG_INC -include config.h $(pkg-config --cflags jansson libcrypto)"
LIBS="$(pkg-config --libs jansson libcrypto) -lpthread"

if [ $# -gt 0 ]; then
    TARGETS="$*"
else
    TARGETS=
    for f in "$HERE"/fuzz_*.c; do
        [ -e "$f" ] || continue
        t=$(basename "$f" .c)
        TARGETS="$TARGETS $t"
    done
fi
if [ -z "$TARGETS" ]; then
    echo "run.sh: no fuzz_*.c harness found in $HERE" >&2
    exit 2
fi

write_dicts
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

NTARGETS=0
NFAILED=0
fail() {
    NFAILED=$((NFAILED + 1))
    KEEP=1
    printf '%-14s %12s execs  %s\n' "$1" "${3:--}" "$2"
}

if command -v timeout >/dev/null 2>&1; then
    # The hard guard: libFuzzer's own limit, plus time for loading the
    # corpus, leak checking and the final stats.
    GUARD="timeout -k 10 $((SECS + 120))"
else
    GUARD=
fi

for t in $TARGETS; do
    NTARGETS=$((NTARGETS + 1))
    src=$HERE/$t.c
    log=$OUT/$t.log
    if [ ! -f "$src" ]; then
        fail "$t" "MISSING ($src)"
        continue
    fi
    deps=
    for s in $(sources_of "$t"); do
        deps="$deps $ROOT/$s"
    done
    # shellcheck disable=SC2086
    if ! (cd "$ROOT" && $CC $CFLAGS -o "$BIN/$t" "$src" $deps $LIBS) \
        >"$OUT/$t.build.log" 2>&1; then
        fail "$t" "BUILD FAILED (see $OUT/$t.build.log)"
        continue
    fi
    if [ -s "$OUT/$t.build.log" ]; then
        echo "$t: compiler warnings:" >&2
        cat "$OUT/$t.build.log" >&2
    fi

    corpus=$OUT/corpus/$t
    rm -rf "$corpus" "$OUT/artifacts/$t"
    mkdir -p "$corpus" "$OUT/artifacts/$t"
    if [ -d "$HERE/corpus/$t" ]; then
        cp -p "$HERE/corpus/$t"/* "$corpus"/ 2>/dev/null
    fi
    dict=
    [ -f "$OUT/$t.dict" ] && dict="-dict=$OUT/$t.dict"

    # shellcheck disable=SC2046,SC2086
    $GUARD "$BIN/$t" \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$t/" \
        $(options_of "$t") $dict $FUZZ_ARGS "$corpus" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')
    [ -n "$execs" ] || execs=0
    if [ $rc -eq 0 ]; then
        printf '%-14s %12s execs  ok (%s corpus files)\n' "$t" "$execs" \
            "$(find "$corpus" -type f | wc -l)"
        continue
    fi
    # The most precise line first: a harness invariant, a sanitizer
    # report, then libFuzzer's own verdict.
    what=$(grep -m 1 'invariant failed' "$log")
    [ -n "$what" ] || what=$(grep -m 1 -E 'runtime error:|==[0-9]+==ERROR: [A-Za-z]+Sanitizer' "$log")
    [ -n "$what" ] || what=$(grep -m 1 -E '^SUMMARY|ERROR: libFuzzer' "$log")
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        what="hard timeout guard fired (rc $rc)"
    fi
    art=$(find "$OUT/artifacts/$t" -type f | head -n 1)
    fail "$t" "FAILED rc=$rc: $(printf '%s' "${what:-see $log}" | cut -c1-200)" "$execs"
    if [ -n "$art" ]; then
        echo "    input: $art ($(wc -c <"$art") bytes)"
        echo "    hex:   $(od -An -tx1 -v "$art" | tr -d ' \n' | cut -c1-400)"
        echo "    rerun: $BIN/$t $art"
    fi
    echo "    log:   $log"
done

echo "fuzz: $NTARGETS target(s), $NFAILED failed, ${SECS}s each"
[ $KEEP -eq 1 ] && echo "logs, artifacts and corpora kept in $OUT"
[ $NFAILED -eq 0 ]
