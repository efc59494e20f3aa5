#!/usr/bin/env bash
# What an `aggregate` route costs over the call it waits for: one request
# proxied to the bench backend (`/one`) against one request that calls the
# same backend three times in parallel and merges the answers (`/three`),
# both at one request at a time (latency) and at 32 (throughput).
#
#   bash bench/aggregate.sh                 # 10 s per measurement
#   bash bench/aggregate.sh --duration 5
#
# The difference of the mean latencies at one connection is what the
# aggregate adds over its slowest call (the issue's goal: at most 0.2 ms).
# Environment: PORTCULLIS_BIN, BACKEND_BIN (skip the cargo build),
# BENCH_PORT_BASE (default 18600).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
DURATION=10
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    *) echo "aggregate.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
PORT_BASE=${BENCH_PORT_BASE:-18600}
BACKEND_PORT=$PORT_BASE
GATEWAY_PORT=$((PORT_BASE + 1))

command -v wrk >/dev/null || { echo "aggregate.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
if [ -z "${PORTCULLIS_BIN:-}" ] || [ -z "${BACKEND_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin portcullis --example bench_backend)
  target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  PORTCULLIS_BIN=${PORTCULLIS_BIN:-$target_dir/release/portcullis}
  BACKEND_BIN=${BACKEND_BIN:-$target_dir/release/examples/bench_backend}
fi

RUN_DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "aggregate.sh: nothing listens on 127.0.0.1:$1" >&2
  exit 1
}

cat >"$RUN_DIR/portcullis.yaml" <<EOF
listeners:
  - name: web
    address: 127.0.0.1:$GATEWAY_PORT
routes:
  - name: one
    match: { path: /one }
    rewrite: { replace_prefix: { from: /one, to: /a/json } }
    upstream: backend
  - name: three
    match: { path: /three }
    aggregate:
      calls:
        a: { upstream: backend, path: /a/json }
        b: { upstream: backend, path: /b/json }
        c: { upstream: backend, path: /c/json }
upstreams:
  - name: backend
    targets: [127.0.0.1:$BACKEND_PORT]
EOF

# The backend and the load generator share CPU 1; the gateway has CPU 0.
taskset -c 1 "$BACKEND_BIN" --listen "127.0.0.1:$BACKEND_PORT" >"$RUN_DIR/backend.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 0 "$PORTCULLIS_BIN" run -c "$RUN_DIR/portcullis.yaml" \
  >"$RUN_DIR/gateway.log" 2>&1 &
PIDS+=($!)
wait_port "$BACKEND_PORT"
wait_port "$GATEWAY_PORT"
for path in /one /three; do
  code=$(curl -s -o "$RUN_DIR/answer" -w '%{http_code}' "http://127.0.0.1:$GATEWAY_PORT$path")
  [ "$code" = 200 ] || { echo "aggregate.sh: $path answered $code: $(cat "$RUN_DIR/answer")" >&2; exit 1; }
done

# mean latency (ms) and requests/s of one wrk run
measure() { # PATH CONNECTIONS
  taskset -c 1 wrk -t1 -c"$2" -d"${DURATION}s" --latency "http://127.0.0.1:$GATEWAY_PORT$1" >"$RUN_DIR/wrk.txt"
  python3 - "$RUN_DIR/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
lat = re.search(r"Latency\s+([\d.]+)(us|ms|s)", text)
p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", text)
p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
print(f"{ms(*lat.groups()):.3f} {ms(*p50.groups()):.3f} {ms(*p99.groups()):.3f} {float(rps.group(1)):.0f}")
PY
}

curl -s -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/three"
echo "| connections | route | mean ms | p50 ms | p99 ms | requests/s |"
echo "|---|---|---|---|---|---|"
for conns in 1 32; do
  for path in /one /three; do
    read -r mean p50 p99 rps < <(measure "$path" "$conns")
    echo "| $conns | $path | $mean | $p50 | $p99 | $rps |"
    eval "mean_${conns}_${path#/}=$mean"
  done
done
python3 -c "print(f'added by the aggregate at one connection: {($mean_1_three - $mean_1_one):.3f} ms (mean)')"
