#!/usr/bin/env bash
# GET of L1 entries over HTTP, keep-alive, against nginx (fixed body of the
# same size) and redis-benchmark GET, measured in the same run.
# Usage: bench/http_get.sh [DURATION_SECONDS=10] [RUNS=3]
# Prints requests/s and p99 per server and connection count, the median of
# RUNS runs, and the ratios against nginx and Redis.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dur=${1:-10}; runs=${2:-3}
work=$(mktemp -d /tmp/proxycache-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT

"$top/scripts/install-deps.sh" test >/dev/null
CFLAGS="-O2 -g" "$top/scripts/build.sh" "$top/build-bench" >/dev/null
bin="$top/build-bench/proxycached"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; return 1; }

# wrk prints "Requests/sec: N" and, with --latency, a "99%" line.
wrk_run() { # URL CONNS [LUA]
    local out
    out=$(wrk -t2 -c"$2" -d"${dur}s" --latency ${3:+-s "$3"} "$1")
    local rps p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    echo "$rps $p99"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Start the cache in THREADING mode and fill L1; sets $port and $key (no
# command substitution: the server must not hold a captured stdout open).
start_cache() { # THREADING
    port=$(free_port)
    rm -rf "$work/data"
    "$bin" --listen "127.0.0.1:$port" --data-dir "$work/data" --log-level warn \
        --threading "$1" --max-connections 2048 --max-connections-per-ip 2048 \
        >/dev/null 2>"$work/cache.log" &
    pids+=($!)
    wait_http "http://127.0.0.1:$port/healthz"
    # Fill L1 with 500 entries; remember their keys for the wrk script.
    key=$(python3 - "$port" "$work/keys.lua" <<'PY'
import json, sys, urllib.request
port, out = sys.argv[1], sys.argv[2]
items = [{"proxy_url": f"http://10.{i//250}.{i%250}.1:8080", "source": "bench",
          "country": "US", "latency_ms": 120} for i in range(500)]
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/proxies",
    data=json.dumps({"proxies": items}).encode(), headers={"Content-Type": "application/json"})
keys = [it["key"] for it in json.load(urllib.request.urlopen(req))["items"]]
with open(out, "w") as f:
    f.write("keys = {" + ",".join('"%s"' % k for k in keys) + "}\n")
    f.write("i = 0\nrequest = function()\n i = i % #keys + 1\n"
            " return wrk.format('GET', '/v1/proxies/' .. keys[i])\nend\n")
print(keys[0])
PY
)
}

results="$work/results"; : >"$results"
record() { echo "$1 $2 $3 $4" >>"$results"; } # server conns rps p99

# Reference 1: nginx serving a fixed body of the same size.
for mode in pool per-connection; do
    start_cache "$mode"
    curl -fs "http://127.0.0.1:$port/v1/proxies/$key" >"$work/body.json"
    for c in 8 64 256; do
        for _ in $(seq 1 "$runs"); do
            read -r rps p99 < <(wrk_run "http://127.0.0.1:$port/" "$c" "$work/keys.lua")
            record "proxycache-$mode" "$c" "$rps" "$p99"
        done
    done
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
done

size=$(stat -c %s "$work/body.json")
nport=$(free_port)
mkdir -p "$work/nginx"
python3 - "$work/body.json" "$work/nginx/body.conf" <<'PY'
import sys
body = open(sys.argv[1]).read().replace("\\", "\\\\").replace("'", "\\'")
open(sys.argv[2], "w").write("return 200 '%s';\n" % body)
PY
cat >"$work/nginx/nginx.conf" <<NGX
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  default_type application/json;
  server { listen 127.0.0.1:$nport; location / { include $work/nginx/body.conf; } }
}
NGX
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" >/dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$nport/"
for c in 8 64 256; do
    for _ in $(seq 1 "$runs"); do
        read -r rps p99 < <(wrk_run "http://127.0.0.1:$nport/" "$c")
        record nginx "$c" "$rps" "$p99"
    done
done

# Reference 2: Redis GET, non-pipelined, 64 clients, value of the same size.
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
for _ in $(seq 1 "$runs"); do
    rps=$(redis-benchmark -p "$rport" -t get -c 64 -P 1 -d "$size" -n $((dur * 60000)) -q \
          | awk -F'[: ]+' '/GET/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9.]+$/) {print $i; exit}}')
    record redis 64 "$rps" "-"
done

echo "body size: $size bytes; wrk -t2 -d${dur}s, keep-alive; median of $runs runs"
printf '%-26s %6s %12s %10s\n' server conns "req/s" p99
for s in proxycache-pool proxycache-per-connection nginx redis; do
    for c in 8 64 256; do
        rows=$(awk -v s="$s" -v c="$c" '$1==s && $2==c' "$results")
        [ -n "$rows" ] || continue
        m=$(awk '{print $3}' <<<"$rows" | median)
        p=$(awk -v m="$m" '$3==m {print $4; exit}' <<<"$rows")
        printf '%-26s %6s %12.0f %10s\n' "$s" "$c" "$m" "$p"
        echo "$s $c $m" >>"$work/medians"
    done
done
echo
nginx_at() { awk -v c="$1" '$1=="nginx" && $2==c {print $3}' "$work/medians"; }
redis64=$(awk '$1=="redis" {print $3}' "$work/medians")
for s in proxycache-pool proxycache-per-connection; do
    for c in 8 64 256; do
        m=$(awk -v s="$s" -v c="$c" '$1==s && $2==c {print $3}' "$work/medians")
        printf '%-26s c%-4s vs nginx %.2fx' "$s" "$c" "$(echo "$m / $(nginx_at "$c")" | bc -l)"
        [ "$c" = 64 ] && printf '   vs redis GET %.2fx' "$(echo "$m / $redis64" | bc -l)"
        echo
    done
done
