#!/usr/bin/env bash
# Repeatable cost of one proxied request: user-space instructions per request
# of portcullis (or nginx, or HAProxy) under valgrind's callgrind, scenario 1's
# request (HTTP/1.1 keep-alive, 64 connections, GET /v1/users/42). Unlike
# requests per second this does not move with the machine's noise, so it shows
# the effect of a change to the request path exactly.
#
#   bash bench/callgrind.sh                     # portcullis, release build
#   bash bench/callgrind.sh nginx haproxy portcullis
#   REQUESTS=50000 bash bench/callgrind.sh      # more requests (default 20000)
#   SCENARIO=4 bash bench/callgrind.sh          # scenario 4's request instead:
#                                               # HTTP/2 over TLS, 4 conns x 32 streams
#
# Environment: PORTCULLIS_BIN, BACKEND_BIN (skip the cargo build),
# BENCH_PORT_BASE (default 18500), REQUESTS, WARMUP (default 2000), SCENARIO
# (1 or 4, default 1).
# The callgrind output files stay in the printed directory for
# callgrind_annotate.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
PORT_BASE=${BENCH_PORT_BASE:-18500}
REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-2000}
SCENARIO=${SCENARIO:-1}
[[ $SCENARIO == 1 || $SCENARIO == 4 ]] || { echo "callgrind.sh: SCENARIO is 1 or 4" >&2; exit 2; }
PROXIES=("$@")
[ ${#PROXIES[@]} -gt 0 ] || PROXIES=(portcullis)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
pkgs=()
command -v valgrind >/dev/null || pkgs+=(valgrind)
command -v h2load >/dev/null || pkgs+=(nghttp2-client)
command -v curl >/dev/null || pkgs+=(curl)
command -v openssl >/dev/null || pkgs+=(openssl)
for p in "${PROXIES[@]}"; do
  case $p in
    nginx) command -v nginx >/dev/null || pkgs+=(nginx-light) ;;
    haproxy) command -v haproxy >/dev/null || pkgs+=(haproxy) ;;
  esac
done
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing from Debian: ${pkgs[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

if [ -z "${PORTCULLIS_BIN:-}" ] || [ -z "${BACKEND_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin portcullis --example bench_backend)
  target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  PORTCULLIS_BIN=${PORTCULLIS_BIN:-$target_dir/release/portcullis}
  BACKEND_BIN=${BACKEND_BIN:-$target_dir/release/examples/bench_backend}
fi

RUN_DIR=$(mktemp -d /tmp/portcullis-callgrind.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

CERT=$RUN_DIR/cert.pem KEY=$RUN_DIR/key.pem PEM=$RUN_DIR/combined.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=api.example.com -addext subjectAltName=DNS:api.example.com \
  -keyout "$KEY" -out "$CERT" >/dev/null 2>&1
cat "$CERT" "$KEY" >"$PEM"

BACKEND_PORT=$PORT_BASE
"$BACKEND_BIN" --listen "127.0.0.1:$BACKEND_PORT" --tls-listen "127.0.0.1:$((PORT_BASE + 1))" \
  --cert "$CERT" --key "$KEY" >"$RUN_DIR/backend.log" 2>&1 &
PIDS+=("$!")
wait_port "$BACKEND_PORT" || die "the backend did not start"

# The nginx and HAProxy configurations read their worker count from @WORKERS@.
render() {
  python3 "$BENCH_DIR/lib/harness.py" render "$1" "$2" "HTTP_PORT=$3" "HTTPS_PORT=$4" \
    "WORKERS=1" "BACKEND=127.0.0.1:$BACKEND_PORT" "CERT=$CERT" "KEY=$KEY" "PEM=$PEM" \
    "RUN_DIR=$5"
}

port=$((PORT_BASE + 10))
printf '| proxy | instructions / request |\n|---|---:|\n'
for proxy in "${PROXIES[@]}"; do
  dir=$RUN_DIR/$proxy http=$port https=$((port + 1))
  port=$((port + 10))
  mkdir -p "$dir"
  out=$dir/callgrind.out
  vg=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$out.%p")
  case $proxy in
    portcullis)
      render "$BENCH_DIR/portcullis.yaml" "$dir/portcullis.yaml" "$http" "$https" "$dir"
      TOKIO_WORKER_THREADS=1 "${vg[@]}" "$PORTCULLIS_BIN" run -c "$dir/portcullis.yaml" \
        >"$dir/stdout.log" 2>&1 &
      ;;
    nginx)
      render "$BENCH_DIR/nginx.conf" "$dir/nginx.conf" "$http" "$https" "$dir"
      python3 "$BENCH_DIR/lib/harness.py" render "$dir/nginx.conf" "$dir/nginx.conf" "HTTP_PORT=$http"
      # One process, so that the worker is the process under valgrind.
      sed -i 's/^master_process .*;/master_process off;/' "$dir/nginx.conf"
      "${vg[@]}" nginx -e "$dir/nginx-startup.log" -p "$dir" -c "$dir/nginx.conf" \
        >"$dir/stdout.log" 2>&1 &
      ;;
    haproxy)
      render "$BENCH_DIR/haproxy.cfg" "$dir/haproxy.cfg" "$http" "$https" "$dir"
      "${vg[@]}" haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout.log" 2>&1 &
      ;;
    *) die "unknown proxy $proxy (nginx, haproxy or portcullis)" ;;
  esac
  pid=$!
  PIDS+=("$pid")
  wait_port "$http" || { cat "$dir/stdout.log" >&2; die "$proxy did not start"; }
  wait_port "$https" || { cat "$dir/stdout.log" >&2; die "$proxy did not start"; }
  got=$(curl -s -o /dev/null -w '%{http_code}' -H ':authority: api.example.com' "http://127.0.0.1:$http/v1/users/42")
  [ "$got" = 200 ] || die "$proxy answered $got"
  if [ "$SCENARIO" = 4 ]; then
    load=(-c 4 -m 32) url="https://127.0.0.1:$https/v1/users/42"
  else
    load=(--h1 -c 64) url="http://127.0.0.1:$http/v1/users/42"
  fi
  h2load "${load[@]}" -n "$WARMUP" -H ':authority: api.example.com' "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  callgrind_control -i on "$pid" >/dev/null 2>&1
  h2load "${load[@]}" -n "$REQUESTS" -H ':authority: api.example.com' "$url" >"$dir/h2load.log"
  grep -q "succeeded, 0 failed" "$dir/h2load.log" || grep -q "$REQUESTS succeeded" "$dir/h2load.log" ||
    { cat "$dir/h2load.log" >&2; die "$proxy: not every request succeeded"; }
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  total=0
  for f in "$out".*; do
    ir=$(grep -m1 '^totals:' "$f" 2>/dev/null | awk '{print $2}')
    [ -n "$ir" ] && total=$((total + ir))
  done
  printf '| %s | %s |\n' "$proxy" "$(awk -v t="$total" -v n="$REQUESTS" 'BEGIN { printf "%.1fk", t / n / 1000 }')"
done
log "callgrind files: $RUN_DIR (callgrind_annotate --inclusive=yes FILE)"
trap - EXIT
cleanup
