#!/usr/bin/env bash
# Write-path benchmarks over HTTP:
#  - durable POST of one entry per request (each acknowledged only after the
#    L3 commit), wrk -t2 at 64 connections;
#  - warm of 10,000 proxies in one POST /v1/warm (all tiers, durable);
#  - warm of 1,000,000 proxies by a streamed POST /v1/warm and by --warm FILE;
#  - start-up time to /readyz with 1,000,000 entries in L3;
#  - bytes on disk for those entries.
# Usage: bench/http_write.sh [DURATION_SECONDS=10] [BIG=1000000]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dur=${1:-10}; big=${2:-1000000}
work=$(mktemp -d /tmp/proxycache-benchw-XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT
"$top/scripts/install-deps.sh" test >/dev/null
CFLAGS="-O2 -g" "$top/scripts/build.sh" "$top/build-bench" >/dev/null
bin="$top/build-bench/proxycached"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
start() { # DATA_DIR [extra args]; sets pid, port and ready_ms (time to /readyz)
    local d=$1; shift
    port=$(free_port)
    local t0; t0=$(date +%s%N)
    "$bin" --listen "127.0.0.1:$port" --data-dir "$d" --log-level warn \
        --max-connections 2048 --max-connections-per-ip 2048 "$@" >/dev/null 2>>"$work/log" &
    pid=$!
    until curl -fs -o /dev/null "http://127.0.0.1:$port/readyz"; do sleep 0.01; done
    ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

echo "== durable POST, one entry per request, wrk -t2 -c64 -d${dur}s"
start "$work/d1"
wrk -t2 -c64 -d"${dur}s" --latency -s "$top/bench/post.lua" "http://127.0.0.1:$port/" \
    | grep -E 'Requests/sec|99%|Non-2xx|Socket errors' || true
curl -fs "http://127.0.0.1:$port/v1/stats" | python3 -c 'import json,sys;s=json.load(sys.stdin);print("entries in L3:", s["tiers"]["l3"]["size"])'
stop

echo "== warm 10,000 proxies in one request (all tiers, durable)"
python3 -c "
for i in range(10000): print(f'10.{i//65536}.{(i//256)%256}.{i%256}:{1024+i%60000}')" >"$work/10k.txt"
start "$work/d2"
for run in 1 2 3; do
    curl -fs -o /dev/null -X DELETE "http://127.0.0.1:$port/v1/proxies"
    curl -fs -o "$work/warm.json" -w "run $run: %{time_total} s\n" -H 'Content-Type: text/plain' \
        --data-binary @"$work/10k.txt" "http://127.0.0.1:$port/v1/warm"
done
python3 -c "import json;print(json.load(open('$work/warm.json')))" | cut -c1-200
stop

echo "== warm $big proxies: streamed POST /v1/warm"
python3 -c "
import sys
w=sys.stdout.write
for i in range($big): w(f'http://10.{i>>16&255}.{i>>8&255}.{i&255}:{1024+i%60000}\n')" >"$work/big.txt"
python3 -c "
import json,sys
w=sys.stdout.write
for i in range($big): w(json.dumps({'proxy_url':f'http://10.{i>>16&255}.{i>>8&255}.{i&255}:{1024+i%60000}','latency_ms':i%9000,'country':'US'})+'\n')" >"$work/big.jsonl"
ls -l "$work/big.txt" | awk '{print "input bytes:", $5}'
start "$work/d3"
t0=$(date +%s%N)
curl -fs -o "$work/warm.json" -H 'Content-Type: application/x-ndjson' -T "$work/big.jsonl" -X POST "http://127.0.0.1:$port/v1/warm"
t=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "$big in $t ms ($(( big * 1000 / (t + 1) ))/s): $(head -c 200 "$work/warm.json")"
echo "== export of $big entries (rate, peak RSS)"
rss0=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
t0=$(date +%s%N)
curl -fs "http://127.0.0.1:$port/v1/export" | wc -l | awk '{print "exported lines:", $1}'
t=$(( ($(date +%s%N) - t0) / 1000000 ))
rss1=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
echo "export: $t ms; RSS before ${rss0} kB, peak (VmHWM) ${rss1} kB"
stop
echo "bytes on disk for $big entries: $(du -sb "$work/d3" | cut -f1)"

echo "== pick over HTTP with $big entries (wrk -t2 -c64, ${dur}s each)"
start "$work/d3"
for q in "count=1" "count=10" "count=10&protocol=http&max_latency_ms=5000"; do
    echo "-- /v1/pick?$q"
    wrk -t2 -c64 -d"${dur}s" --latency "http://127.0.0.1:$port/v1/pick?$q" \
        | grep -E 'Requests/sec|50%|99%|Non-2xx' || true
done
stop

echo "== start-up to /readyz with $big entries in L3"
for run in 1 2 3; do
    start "$work/d3"; echo "run $run: ${ready_ms} ms"; stop
done

echo "== --warm FILE with $big proxies (start-up warming)"
start "$work/d4" --warm "$work/big.txt"; echo "ready after --warm of $big: ${ready_ms} ms"
stop
