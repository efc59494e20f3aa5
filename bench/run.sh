#!/usr/bin/env bash
# Side-by-side benchmark: portcullis, nginx and HAProxy in front of one
# backend, plus a direct-to-backend baseline. See bench/README.md for the
# fairness rules and the scenarios.
#
#   bash bench/run.sh                       # everything, about 20 minutes
#   bash bench/run.sh --quick               # a short smoke run
#   bash bench/run.sh --scenarios 1,2 --runs 5 --duration 15 --workers 1
#
# Prints a Markdown table and writes bench/results/latest.json (and .md).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
LIB=$BENCH_DIR/lib
COMMAND="bash bench/run.sh${*:+ $*}"

WORKERS=1
DURATION=10
RUNS=3
WARMUP=2
SCENARIOS=1,2,3,4,5,6,7,8,9,10,11,12
IDLE_CONNS=10000
QUICK=0
PORT_BASE=${BENCH_PORT_BASE:-18000}
# Before each measurement, wait (up to this many seconds) for the machine to
# be quiet: CPUs at most 10% busy. A measurement during which other processes
# took more than FOREIGN_MAX percent of the CPUs is repeated (twice at most)
# and the share is recorded with it.
QUIET_MAX_WAIT=${BENCH_QUIET_WAIT:-15}
FOREIGN_MAX=${BENCH_FOREIGN_MAX:-5}

usage() {
  cat <<EOF
usage: bash bench/run.sh [--workers N] [--duration S] [--runs N] [--scenarios 1,2,...]
                         [--idle-conns N] [--quick]
  --workers N      worker processes/threads for every proxy (default 1)
  --duration S     seconds per measurement (default 10)
  --runs N         measurements per proxy and scenario, interleaved (default 3)
  --scenarios L    comma-separated scenario numbers 1-12 (default all)
  --idle-conns N   idle connections in scenario 6 (default 10000)
  --quick          smoke run: 2 s measurements, 1 run, 1000 idle connections
Environment: PORTCULLIS_BIN, BACKEND_BIN (skip the cargo build), BENCH_PORT_BASE.
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --idle-conns) IDLE_CONNS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  DURATION=2 RUNS=1 WARMUP=1 IDLE_CONNS=1000
fi
for v in WORKERS DURATION RUNS IDLE_CONNS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --${v,,} must be a positive integer" >&2; exit 2; }
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
py() { python3 "$LIB/harness.py" "$@"; }
want() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

# ------------------------------------------------------------------ tools

install_missing() {
  local pkgs=()
  command -v nginx >/dev/null || pkgs+=(nginx-light)
  command -v haproxy >/dev/null || pkgs+=(haproxy)
  command -v wrk >/dev/null || pkgs+=(wrk)
  command -v h2load >/dev/null || pkgs+=(nghttp2-client)
  command -v taskset >/dev/null || pkgs+=(util-linux)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v python3 >/dev/null || pkgs+=(python3)
  command -v ps >/dev/null || pkgs+=(procps)
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing from Debian: ${pkgs[*]}"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  # Scenario 7 needs an open-loop generator with latency correction; oha is
  # not packaged in Debian 12, so it comes from crates.io (once, ~5 minutes).
  OHA=""
  if want 7; then
    if command -v oha >/dev/null; then
      OHA=$(command -v oha)
    elif [ -x "$HOME/.cargo/bin/oha" ]; then
      OHA=$HOME/.cargo/bin/oha
    else
      log "installing oha (open-loop load generator) with cargo install --locked oha"
      if cargo install --locked --quiet oha >&2; then
        OHA=$HOME/.cargo/bin/oha
      else
        log "warning: oha could not be installed; scenario 7 falls back to h2load --rps (not latency-corrected)"
      fi
    fi
  fi
}

build() {
  if [ -n "${PORTCULLIS_BIN:-}" ] && [ -n "${BACKEND_BIN:-}" ]; then
    log "using PORTCULLIS_BIN=$PORTCULLIS_BIN BACKEND_BIN=$BACKEND_BIN"
    return
  fi
  log "building portcullis and the backend (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet --bin portcullis --example bench_backend)
  local target_dir
  target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  PORTCULLIS_BIN=${PORTCULLIS_BIN:-$target_dir/release/portcullis}
  BACKEND_BIN=${BACKEND_BIN:-$target_dir/release/examples/bench_backend}
}

# ------------------------------------------------------------------ CPUs

# The proxy gets the last WORKERS CPUs this shell may use; the load generator
# and the backend share the others.
split_cpus() {
  local cpus
  read -r -a cpus <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
  local n=${#cpus[@]}
  [ "$n" -gt "$WORKERS" ] || die "--workers $WORKERS needs at least $((WORKERS + 1)) CPUs; this machine lets us use $n"
  PROXY_CPUS=$(IFS=,; echo "${cpus[*]:n-WORKERS}")
  LOAD_CPUS=$(IFS=,; echo "${cpus[*]:0:n-WORKERS}")
  LOAD_THREADS=$((n - WORKERS))
}

# ------------------------------------------------------------------ processes

STARTED=()
RUN_DIR=""
cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  [ -z "$RUN_DIR" ] || [ -n "${BENCH_KEEP_RUN_DIR:-}" ] || rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=()
  for i in "${STARTED[@]}"; do [ "$i" = "$pid" ] || keep+=("$i"); done
  STARTED=(${keep[@]+"${keep[@]}"})
}

wait_port() {
  local port=$1 i
  for i in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "nothing listens on 127.0.0.1:$port"
}

check_ports_free() {
  local port
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "127.0.0.1:$port is already in use (set BENCH_PORT_BASE to move the harness)"
    fi
  done
}

# Ports: the backend, then each proxy's plain and TLS port; "10k" instances
# (scenario 8) sit 10 above their proxy's, scenario 9's gateway instance 20
# above portcullis's, with its admin listener at 330, scenario 10's API-key
# instance 40 above and its basic-auth instance 50 above.
declare -A HTTP_PORT=([direct]=$((PORT_BASE + 80)) [nginx]=$((PORT_BASE + 100))
  [haproxy]=$((PORT_BASE + 200)) [portcullis]=$((PORT_BASE + 300))
  [nginx10k]=$((PORT_BASE + 110)) [haproxy10k]=$((PORT_BASE + 210))
  [portcullis10k]=$((PORT_BASE + 310)) [portcullisgw]=$((PORT_BASE + 320))
  [portcullisak]=$((PORT_BASE + 340)) [portcullisba]=$((PORT_BASE + 350)))
declare -A TLS_PORT=([direct]=$((PORT_BASE + 443)) [nginx]=$((PORT_BASE + 101))
  [haproxy]=$((PORT_BASE + 201)) [portcullis]=$((PORT_BASE + 301))
  [nginx10k]=$((PORT_BASE + 111)) [haproxy10k]=$((PORT_BASE + 211))
  [portcullis10k]=$((PORT_BASE + 311)) [portcullisgw]=$((PORT_BASE + 321))
  [portcullisak]=$((PORT_BASE + 341)) [portcullisba]=$((PORT_BASE + 351)))
ADMIN_PORT=$((PORT_BASE + 330))
declare -A PID=()
PROXIES=(nginx haproxy portcullis)

start_backend() {
  taskset -c "$LOAD_CPUS" "$BACKEND_BIN" --listen "127.0.0.1:${HTTP_PORT[direct]}" \
    --tls-listen "127.0.0.1:${TLS_PORT[direct]}" --cert "$CERT" --key "$KEY" \
    >"$RUN_DIR/backend.log" 2>&1 &
  PID[direct]=$!
  STARTED+=("$!")
  wait_port "${HTTP_PORT[direct]}"
  wait_port "${TLS_PORT[direct]}"
}

# start_proxy NAME [10k|gw|ak|ba]: render its configuration and start it pinned.
# "gw" (portcullis only) is bench/portcullis-gateway.yaml, for scenario 9;
# "ak" and "ba" are bench/portcullis-apikey.yaml and portcullis-basic.yaml,
# for scenario 10.
start_proxy() {
  local proxy=$1 variant=${2:-} inst=$1${2:-}
  local dir=$RUN_DIR/$inst
  mkdir -p "$dir"
  local common=("HTTP_PORT=${HTTP_PORT[$inst]}" "HTTPS_PORT=${TLS_PORT[$inst]}"
    "WORKERS=$WORKERS" "BACKEND=127.0.0.1:${HTTP_PORT[direct]}" "CERT=$CERT" "KEY=$KEY"
    "PEM=$PEM" "RUN_DIR=$dir")
  case $proxy in
    nginx)
      local extra=()
      [ -z "$variant" ] || extra=(--extra "EXTRA_SERVERS=$RUN_DIR/routes/nginx-extra.conf")
      py render "$BENCH_DIR/nginx.conf" "$dir/nginx.conf" "${common[@]}" ${extra[@]+"${extra[@]}"}
      # The filler servers listen on @HTTP_PORT@ too: fill it a second time.
      py render "$dir/nginx.conf" "$dir/nginx.conf" "HTTP_PORT=${HTTP_PORT[$inst]}"
      taskset -c "$PROXY_CPUS" nginx -e "$dir/nginx-startup.log" -p "$dir" -c "$dir/nginx.conf" \
        >"$dir/stdout.log" 2>&1 &
      ;;
    haproxy)
      local extra=()
      [ -z "$variant" ] || extra=(--extra "EXTRA_ROUTES=$RUN_DIR/routes/haproxy-extra.cfg")
      py render "$BENCH_DIR/haproxy.cfg" "$dir/haproxy.cfg" "${common[@]}" ${extra[@]+"${extra[@]}"}
      taskset -c "$PROXY_CPUS" haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout.log" 2>&1 &
      ;;
    portcullis)
      local extra=() template=$BENCH_DIR/portcullis.yaml
      case $variant in
        10k) extra=(--extra "EXTRA_ROUTES=$RUN_DIR/routes/portcullis-extra.yaml") ;;
        gw)
          template=$BENCH_DIR/portcullis-gateway.yaml
          extra=("ADMIN_PORT=$ADMIN_PORT" "JWKS=$RUN_DIR/jwt/jwks.json")
          ;;
        ak)
          template=$BENCH_DIR/portcullis-apikey.yaml
          extra=(--extra "EXTRA_CONSUMERS=$RUN_DIR/apikey/consumers.yaml")
          ;;
        ba)
          template=$BENCH_DIR/portcullis-basic.yaml
          extra=(--extra "EXTRA_CONSUMERS=$RUN_DIR/apikey/basic-consumers.yaml")
          ;;
      esac
      py render "$template" "$dir/portcullis.yaml" "${common[@]}" ${extra[@]+"${extra[@]}"}
      TOKIO_WORKER_THREADS=$WORKERS taskset -c "$PROXY_CPUS" "$PORTCULLIS_BIN" run \
        -c "$dir/portcullis.yaml" >"$dir/stdout.log" 2>&1 &
      ;;
  esac
  PID[$inst]=$!
  STARTED+=("$!")
  wait_port "${HTTP_PORT[$inst]}" || { cat "$dir"/*.log >&2; exit 1; }
  wait_port "${TLS_PORT[$inst]}"
}

# check_target INST: the proxy answers the benchmark requests as it should.
check_target() {
  local inst=$1 got
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -H 'Host: api.example.com' \
    "http://127.0.0.1:${HTTP_PORT[$inst]}/v1/users/42")
  [ "$got" = "200 100" ] || die "$inst: plain HTTP answered '$got', expected '200 100'"
  got=$(curl -sk --http2 -o /dev/null -w '%{http_code} %{size_download} %{http_version}' \
    -H 'Host: api.example.com' "https://127.0.0.1:${TLS_PORT[$inst]}/v1/users/42")
  [ "$got" = "200 100 2" ] || die "$inst: HTTPS h2 answered '$got', expected '200 100 2'"
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -H 'Host: api.example.com' \
    "http://127.0.0.1:${HTTP_PORT[$inst]}/v1/users/big")
  [ "$got" = "200 1048576" ] || die "$inst: /big answered '$got', expected '200 1048576'"
}

# ------------------------------------------------------------------ measuring

RUNS_FILE=""
# MEASURE_HOOK, when set, names a function called as "HOOK before TARGET" just
# before each attempt's readings and "HOOK after TARGET" once the last attempt
# is read; "after" may put record options in HOOK_REC.
MEASURE_HOOK=""
HOOK_REC=()
# measure SCENARIO TARGET RUN TOOL [record options --] COMMAND...
# Runs COMMAND on the load CPUs and records it with the CPU time (user +
# system, /proc) that TARGET's processes spent meanwhile.
measure() {
  local scenario=$1 target=$2 run=$3 tool=$4
  shift 4
  local rec=()
  while [ "$1" != "--" ]; do rec+=("$1"); shift; done
  shift
  local pid=${PID[$target]}
  local out=$RUN_DIR/out/s$scenario-$target-$run.txt
  local before after t0 t1 foreign attempt
  for attempt in 1 2 3; do
    py quiet "$QUIET_MAX_WAIT" >/dev/null
    [ -z "$MEASURE_HOOK" ] || "$MEASURE_HOOK" before "$target"
    t0=$(py ticks $$)
    before=$(py cpu "$pid")
    if ! taskset -c "$LOAD_CPUS" "$@" >"$out" 2>&1; then
      log "load generator failed for $target: $*"
      tail -5 "$out" >&2
      return 0
    fi
    after=$(py cpu "$pid")
    t1=$(py ticks $$)
    # CPU time that processes other than the harness's took meanwhile.
    foreign=$(py foreign "$t0" "$t1")
    [ "$foreign" -gt "$FOREIGN_MAX" ] && [ "$attempt" -lt 3 ] || break
    log "$target: other processes took $foreign% of the CPUs during the measurement; measuring again"
  done
  HOOK_REC=()
  [ -z "$MEASURE_HOOK" ] || "$MEASURE_HOOK" after "$target"
  rec+=(${HOOK_REC[@]+"${HOOK_REC[@]}"})
  py record --out "$RUNS_FILE" --scenario "$scenario" --target "$target" --run "$run" \
    --tool "$tool" --output "$out" --cpu-before "$before" --cpu-after "$after" \
    --set "foreign_pct=$foreign" --set "attempts=$attempt" ${rec[@]+"${rec[@]}"} ||
    log "could not parse the $tool output of $target: see $out"
}

URL_PATH=/v1/users/42
WRK=(wrk --latency -s "$LIB/wrk_json.lua")

# gen_NAME TARGET SECONDS LOGFILE sets CMD, the load-generator command line.
gen_1() { CMD=("${WRK[@]}" -t"$LOAD_THREADS" -c64 -d"$2s" -H "Host: api.example.com" "http://127.0.0.1:${HTTP_PORT[$1]}$URL_PATH"); }
gen_2() { CMD=("${WRK[@]}" -t"$LOAD_THREADS" -c64 -d"$2s" -H "Host: api.example.com" "https://127.0.0.1:${TLS_PORT[$1]}$URL_PATH"); }
gen_3() {
  CMD=("${WRK[@]}" -t"$LOAD_THREADS" -c16 -d"$2s" -H "Host: api.example.com" -H "Connection: close"
    "https://127.0.0.1:${TLS_PORT[$1]}$URL_PATH")
}
gen_4() {
  # h2load sends the URL's authority; the host routes need api.example.com.
  CMD=(h2load -t"$LOAD_THREADS" -c4 -m32 -D "$2" --log-file="$3" -H ":authority: api.example.com"
    "https://127.0.0.1:${TLS_PORT[$1]}$URL_PATH")
}
gen_5() { CMD=("${WRK[@]}" -t"$LOAD_THREADS" -c16 -d"$2s" -H "Host: api.example.com" "http://127.0.0.1:${HTTP_PORT[$1]}/v1/users/big"); }
gen_7() {
  if [ -n "$OHA" ]; then
    CMD=("$OHA" -z "$2s" -q "$RATE" -c 64 --latency-correction --no-tui --output-format json
      -H "Host: api.example.com" "http://127.0.0.1:${HTTP_PORT[$1]}$URL_PATH")
  else
    # h2load's --rps is per client: the 64 clients share the rate.
    CMD=(h2load --h1 -t"$LOAD_THREADS" -c64 --rps "$(((RATE + 63) / 64))" -D "$2" --log-file="$3"
      -H ":authority: api.example.com" "http://127.0.0.1:${HTTP_PORT[$1]}$URL_PATH")
  fi
}
gen_8() { # the 10,000-route instances get a request for one of the filler routes
  case $1 in
    *10k) CMD=("${WRK[@]}" -t"$LOAD_THREADS" -c64 -d"$2s" -H "Host: svc87.example.com"
      "http://127.0.0.1:${HTTP_PORT[$1]}/p99/api/items") ;;
    *) gen_1 "$@" ;;
  esac
}
# Scenario 9: both instances get the same requests, each with one of the 100
# users' tokens in turn (the features-off instance does not look at it).
gen_9() {
  CMD=(wrk --latency -s "$LIB/wrk_jwt.lua" -t"$LOAD_THREADS" -c64 -d"$2s" -H "Host: api.example.com"
    "http://127.0.0.1:${HTTP_PORT[$1]}$URL_PATH" -- "$RUN_DIR/jwt/tokens.txt")
}
gen_10() {
  # Every target gets the same two credentials, which each ignores but one.
  local args=(-- "$RUN_DIR/apikey/keys.txt" X-Api-Key "")
  [ "$1" != portcullisba ] || args=(-- "$RUN_DIR/apikey/basic.txt" Authorization "Basic ")
  CMD=(wrk --latency -s "$LIB/wrk_jwt.lua" -t"$LOAD_THREADS" -c64 -d"$2s" -H "Host: api.example.com"
    "http://127.0.0.1:${HTTP_PORT[$1]}$URL_PATH" "${args[@]}")
}

# Scenario 11: cache hits of a 1 KiB answer (the backend says max-age=3600).
gen_11() {
  CMD=("${WRK[@]}" -t"$LOAD_THREADS" -c64 -d"$2s" -H "Host: api.example.com"
    "http://127.0.0.1:${HTTP_PORT[$1]}/cache/kib")
}
# Scenario 12: a 100 KiB JSON answer compressed with ENCODING.
gen_12() {
  CMD=("${WRK[@]}" -t"$LOAD_THREADS" -c16 -d"$2s" -H "Host: api.example.com"
    -H "Accept-Encoding: $ENCODING" "http://127.0.0.1:${HTTP_PORT[$1]}/gzip/json100k")
}

# The order of targets rotates between runs so that none always goes first.
rotated() {
  local run=$1
  shift
  local items=("$@") n=$# i
  for ((i = 0; i < n; i++)); do echo "${items[(i + run) % n]}"; done
}

# run_scenario ID GEN TOOL TARGET...: a warm-up per target, then RUNS
# interleaved measurements of every target. REC_ARGS go to the record.
REC_ARGS=()
run_scenario() {
  local id=$1 gen=$2 tool=$3
  shift 3
  local targets=("$@") t run
  for t in "${targets[@]}"; do # warm-up, not recorded
    "$gen" "$t" "$WARMUP" "$RUN_DIR/out/warm.log"
    taskset -c "$LOAD_CPUS" "${CMD[@]}" >/dev/null 2>&1 || true
  done
  for ((run = 1; run <= RUNS; run++)); do
    while read -r t; do
      local logf=$RUN_DIR/out/s$id-$t-$run.log
      "$gen" "$t" "$DURATION" "$logf"
      local rec=(${REC_ARGS[@]+"${REC_ARGS[@]}"})
      [ "$tool" != h2load ] || rec+=(--h2load-log "$logf")
      measure "$id" "$t" "$run" "$tool" ${rec[@]+"${rec[@]}"} -- "${CMD[@]}"
      sleep 0.5
    done < <(rotated "$run" "${targets[@]}")
  done
}

median_of() { # scenario target field
  python3 - "$RUNS_FILE" "$@" <<'EOF'
import json, statistics, sys
path, scenario, target, field = sys.argv[1:]
vals = [r[field] for r in map(json.loads, open(path))
        if r["scenario"] == scenario and r["target"] == target and r.get(field)]
print(int(statistics.median(vals)) if vals else 0)
EOF
}

scenario_6_one() { # proxy run
  local proxy=$1 run=$2
  stop_pid "${PID[$proxy]}"
  start_proxy "$proxy"
  local i
  for i in $(seq 10); do
    curl -s -o /dev/null -H 'Host: api.example.com' "http://127.0.0.1:${HTTP_PORT[$proxy]}$URL_PATH"
  done
  sleep 1
  local before after ready=$RUN_DIR/idle-ready release=$RUN_DIR/idle-release
  rm -f "$ready" "$release"
  before=$(py rss "${PID[$proxy]}")
  taskset -c "$LOAD_CPUS" python3 "$LIB/idle_conns.py" 127.0.0.1 "${HTTP_PORT[$proxy]}" \
    "$IDLE_CONNS" api.example.com "$URL_PATH" "$ready" "$release" \
    >"$RUN_DIR/out/s6-$proxy-$run.txt" 2>&1 &
  local client=$!
  STARTED+=("$client")
  for i in $(seq 1200); do
    [ -e "$ready" ] && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  [ -e "$ready" ] || { log "scenario 6: the idle client did not get ready for $proxy"; stop_pid "$client"; return 0; }
  sleep 2
  after=$(py rss "${PID[$proxy]}")
  touch "$release"
  stop_pid "$client"
  local open failed
  open=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["open"])' "$ready")
  failed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$ready")
  local per
  per=$(python3 -c "print(($after - $before) / max(1, $open))")
  py record --out "$RUNS_FILE" --scenario 6 --target "$proxy" --run "$run" --tool none \
    --output "$ready" --set "rss_before_kib=$before" --set "rss_after_kib=$after" \
    --set "connections=$open" --set "errors=$failed" --set "rss_kib_per_conn=$per"
}

GW_LOG="" # scenario 9's access log
# Scenario 9: the gateway instance must verify tokens, refuse requests
# without one or without the scope, serve metrics and write its access log;
# the features-off instance must answer the same token-carrying request alike.
check_gateway() {
  local token no_scope t got i
  token=$(head -1 "$RUN_DIR/jwt/tokens.txt")
  no_scope=$(cat "$RUN_DIR/jwt/token-no-scope.txt")
  for t in portcullis portcullisgw; do
    got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -H 'Host: api.example.com' \
      -H "Authorization: Bearer $token" "http://127.0.0.1:${HTTP_PORT[$t]}$URL_PATH")
    [ "$got" = "200 100" ] || die "$t: a request with a token answered '$got', expected '200 100'"
  done
  got=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: api.example.com' \
    "http://127.0.0.1:${HTTP_PORT[portcullisgw]}$URL_PATH")
  [ "$got" = 401 ] || die "portcullisgw: a request without a token answered '$got', expected 401"
  got=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: api.example.com' \
    -H "Authorization: Bearer $no_scope" "http://127.0.0.1:${HTTP_PORT[portcullisgw]}$URL_PATH")
  [ "$got" = 403 ] || die "portcullisgw: a token without the scope answered '$got', expected 403"
  got=$(curl -s -o "$RUN_DIR/portcullisgw/metrics-before.txt" -w '%{http_code}' \
    "http://127.0.0.1:$ADMIN_PORT/metrics")
  if [ "$got" != 200 ] || ! grep -q '^portcullis_requests_total' "$RUN_DIR/portcullisgw/metrics-before.txt"; then
    die "portcullisgw: /metrics on the admin port answered '$got' without portcullis_requests_total"
  fi
  # The log's writer thread writes queued lines out every 20 ms.
  for i in $(seq 20); do
    grep -q '"status":401' "$GW_LOG" 2>/dev/null && break
    sleep 0.1
  done
  grep '"status":401' "$GW_LOG" 2>/dev/null | grep -q '"route":"api-users"' ||
    die "portcullisgw: the access log $GW_LOG has no line for the refused request"
}

# Scenario 10: the API-key instance must let a key through and refuse a
# request without one; the plain instance answers the keyed request alike.
check_apikey() {
  local key got t
  key=$(head -1 "$RUN_DIR/apikey/keys.txt")
  for t in portcullis portcullisak; do
    got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -H 'Host: api.example.com' \
      -H "X-Api-Key: $key" "http://127.0.0.1:${HTTP_PORT[$t]}$URL_PATH")
    [ "$got" = "200 100" ] || die "$t: a request with a key answered '$got', expected '200 100'"
  done
  got=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: api.example.com' \
    "http://127.0.0.1:${HTTP_PORT[portcullisak]}$URL_PATH")
  [ "$got" = 401 ] || die "portcullisak: a request without a key answered '$got', expected 401"
  key=$(head -1 "$RUN_DIR/apikey/basic.txt")
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -H 'Host: api.example.com' \
    -H "Authorization: Basic $key" "http://127.0.0.1:${HTTP_PORT[portcullisba]}$URL_PATH")
  [ "$got" = "200 100" ] || die "portcullisba: a request with a password answered '$got', expected '200 100'"
  got=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: api.example.com' \
    "http://127.0.0.1:${HTTP_PORT[portcullisba]}$URL_PATH")
  [ "$got" = 401 ] || die "portcullisba: a request without a password answered '$got', expected 401"
}

rate_limited() { # requests the gateway instance has refused with 429 so far
  curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
    awk '/^portcullis_rate_limited_total/ { n += $NF } END { print n + 0 }'
}

# The access log is emptied before each measurement of the gateway instance
# (a 10-s run writes some 200 MB) and counted after it: lines the writer
# dropped because it fell behind would show as fewer lines than requests.
scenario_9_hook() { # before|after TARGET
  [ "$2" = portcullisgw ] || return 0
  case $1 in
    before) : >"$GW_LOG" ;;
    after)
      local size prev=-1 i
      for i in $(seq 30); do # until the writer has caught up
        size=$(stat -c %s "$GW_LOG")
        [ "$size" != "$prev" ] || break
        prev=$size
        sleep 0.3
      done
      HOOK_REC=(--set "log_bytes=$size" --set "log_lines=$(wc -l <"$GW_LOG")"
        --set "rate_limited=$(rate_limited)")
      ;;
  esac
}

# ------------------------------------------------------------------ main

install_missing
build
split_cpus
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if want 6 && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 1000)) ]; then
  IDLE_CONNS=$(($(ulimit -n) - 1000))
  log "warning: open-file limit $(ulimit -n): scenario 6 uses $IDLE_CONNS connections"
fi

RUN_DIR=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
# nginx's workers (user nobody when the harness runs as root) write the
# scenario-11 cache under it.
chmod 755 "$RUN_DIR"
mkdir -p "$RUN_DIR/out" "$RUN_DIR/routes" "$BENCH_DIR/results"
RUNS_FILE=$RUN_DIR/runs.jsonl
: >"$RUNS_FILE"

check_ports_free "${HTTP_PORT[@]}" "${TLS_PORT[@]}" "$ADMIN_PORT"

# A fresh ECDSA P-256 certificate for every TLS scenario.
CERT=$RUN_DIR/cert.pem KEY=$RUN_DIR/key.pem PEM=$RUN_DIR/haproxy.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$KEY" -out "$CERT" -subj /CN=api.example.com \
  -addext "subjectAltName=DNS:api.example.com,DNS:localhost,IP:127.0.0.1" 2>/dev/null
cat "$CERT" "$KEY" >"$PEM"

log "CPUs: proxy on $PROXY_CPUS; load generator and backend on $LOAD_CPUS;" \
  "workers $WORKERS, $RUNS runs of ${DURATION}s, scenarios $SCENARIOS"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
start_backend
for p in "${PROXIES[@]}"; do start_proxy "$p"; done
for t in direct "${PROXIES[@]}"; do check_target "$t"; done
# tokio names its workers "tokio-rt-worker" (older: "tokio-runtime-worker", cut to 15 characters).
PORTCULLIS_THREADS=$(py threads "${PID[portcullis]}" | grep -cE '^tokio-(rt-worker|runtime-w)' || true)
log "portcullis runs $PORTCULLIS_THREADS tokio worker thread(s)"

ALL=(direct "${PROXIES[@]}")
if want 1; then
  log "scenario 1: HTTP/1.1 keep-alive, 64 connections, 100-byte answers"
  run_scenario 1 gen_1 wrk "${ALL[@]}"
fi
if want 2; then
  log "scenario 2: HTTPS (TLS 1.3, ECDSA P-256) keep-alive, 64 connections"
  run_scenario 2 gen_2 wrk "${ALL[@]}"
fi
if want 3; then
  log "scenario 3: a new TLS connection for every request, 16 connections"
  run_scenario 3 gen_3 wrk "${ALL[@]}"
fi
if want 4; then
  log "scenario 4: HTTP/2 over TLS from the client (4 connections x 32 streams), HTTP/1.1 to the backend"
  run_scenario 4 gen_4 h2load "${ALL[@]}"
fi
if want 5; then
  log "scenario 5: 1 MiB answers, 16 connections"
  run_scenario 5 gen_5 wrk "${ALL[@]}"
fi
PEAK=0
if want 7; then
  PEAK=$(median_of 1 nginx rps)
  if [ "$PEAK" = 0 ]; then
    log "scenario 7: measuring nginx's scenario-1 peak first"
    saved_runs=$RUNS
    RUNS=1
    run_scenario 1 gen_1 wrk nginx
    RUNS=$saved_runs
    PEAK=$(median_of 1 nginx rps)
  fi
  tool=oha
  [ -n "$OHA" ] || tool=h2load
  for pct in 50 90; do
    RATE=$((PEAK * pct / 100))
    log "scenario 7: fixed load of $RATE req/s ($pct% of nginx's scenario-1 peak of $PEAK req/s) with $tool"
    REC_ARGS=(--set "load_pct=$pct" --set "rate=$RATE")
    run_scenario "7-$pct" gen_7 "$tool" "${ALL[@]}"
    REC_ARGS=()
  done
fi
if want 8; then
  log "scenario 8: 10,000 routes (host and path mix) beside the same proxies with 10"
  py routes 9990 "$RUN_DIR/routes"
  for p in "${PROXIES[@]}"; do start_proxy "$p" 10k; done
  for p in "${PROXIES[@]}"; do
    got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -H 'Host: svc87.example.com' \
      "http://127.0.0.1:${HTTP_PORT[${p}10k]}/p99/api/items")
    [ "$got" = "200 100" ] || die "${p}10k answered '$got', expected '200 100'"
  done
  # Each proxy's 10- and 10,000-route instances are measured side by side.
  T8=()
  for p in "${PROXIES[@]}"; do T8+=("$p" "${p}10k"); done
  run_scenario 8 gen_8 wrk "${T8[@]}"
  for p in "${PROXIES[@]}"; do stop_pid "${PID[${p}10k]}"; done
fi
if want 6; then
  log "scenario 6: $IDLE_CONNS idle keep-alive client connections (each proxy freshly started)"
  for ((run = 1; run <= RUNS; run++)); do
    while read -r p; do scenario_6_one "$p" "$run"; done < <(rotated "$run" "${PROXIES[@]}")
  done
fi
if want 9; then
  log "scenario 9: gateway features on (JWT, rate limit, metrics, access log) beside the same route without them"
  mkdir -p "$RUN_DIR/jwt"
  py jwt "$RUN_DIR/jwt" 100
  GW_LOG=$RUN_DIR/portcullisgw/access.log
  start_proxy portcullis gw
  wait_port "$ADMIN_PORT"
  check_gateway
  log "scenario 9: the gateway instance writes its access log to $GW_LOG (emptied before each measurement)"
  MEASURE_HOOK=scenario_9_hook
  run_scenario 9 gen_9 wrk portcullis portcullisgw
  MEASURE_HOOK=""
  log "scenario 9: the last measurement's access log: $(stat -c %s "$GW_LOG") bytes;" \
    "requests refused by the rate limit: $(rate_limited)"
  stop_pid "${PID[portcullisgw]}"
  # Keep a sample for BENCH_KEEP_RUN_DIR, not hundreds of MB.
  head -n 100 "$GW_LOG" >"$RUN_DIR/portcullisgw/access-head.log"
  rm -f "$GW_LOG"
fi
if want 10; then
  log "scenario 10: api_key (and basic_auth) with a per-consumer rate limit beside the same route without them"
  mkdir -p "$RUN_DIR/apikey"
  py apikeys "$RUN_DIR/apikey" 100
  py passwords "$RUN_DIR/apikey" 100 "$PORTCULLIS_BIN"
  start_proxy portcullis ak
  start_proxy portcullis ba
  check_apikey
  run_scenario 10 gen_10 wrk portcullis portcullisak portcullisba
  stop_pid "${PID[portcullisak]}"
  stop_pid "${PID[portcullisba]}"
fi
if want 11; then
  log "scenario 11: cache hits of a 1 KiB answer (nginx proxy_cache beside the cache policy), 64 connections"
  for p in nginx portcullis; do
    for i in 1 2; do
      got=$(curl -s -D - -o /dev/null -H 'Host: api.example.com' "http://127.0.0.1:${HTTP_PORT[$p]}/cache/kib" |
        tr -d '\r' | awk 'tolower($1) == "content-length:" { print $2 }')
    done
    [ "$got" = 1024 ] || die "$p: /cache/kib answered a body of '$got' bytes, expected 1024"
  done
  got=$(curl -s -D - -o /dev/null -H 'Host: api.example.com' "http://127.0.0.1:${HTTP_PORT[portcullis]}/cache/kib" |
    tr -d '\r' | awk 'tolower($1) == "cache-status:" { print $3 }')
  [ "$got" = "hit;" ] || die "portcullis: /cache/kib is not a cache hit (Cache-Status: '$got')"
  run_scenario 11 gen_11 wrk nginx portcullis
fi
if want 12; then
  for ENCODING in gzip br zstd; do
    targets=(portcullis)
    [ "$ENCODING" != gzip ] || targets=(nginx portcullis)
    for p in "${targets[@]}"; do
      got=$(curl -s -D - -o /dev/null -H 'Host: api.example.com' -H "Accept-Encoding: $ENCODING" \
        "http://127.0.0.1:${HTTP_PORT[$p]}/gzip/json100k" | tr -d '\r' |
        awk 'tolower($1) == "content-encoding:" { print $2 }')
      [ "$got" = "$ENCODING" ] || die "$p: /gzip/json100k was not $ENCODING-encoded (Content-Encoding: '$got')"
    done
    log "scenario 12-$ENCODING: a 100 KiB JSON answer compressed with $ENCODING (gzip at level 6 in both), 16 connections"
    REC_ARGS=(--set "encoding=$ENCODING")
    run_scenario "12-$ENCODING" gen_12 wrk "${targets[@]}"
    REC_ARGS=()
  done
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ report

version() { "$@" 2>&1 | head -1 || true; }
python3 - "$RUN_DIR/meta.json" <<EOF
import json, os, platform, sys
def mem():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) // 1024} MiB"
def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
meta = {
    "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "command": """$COMMAND""",
    "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "memory": mem(),
                "kernel": platform.release(), "os": """$(. /etc/os-release && echo "$PRETTY_NAME")""",
                "loadavg_before": "$LOAD_BEFORE", "loadavg_after": "$LOAD_AFTER"},
    "settings": {"workers": $WORKERS, "duration_s": $DURATION, "runs": $RUNS, "warmup_s": $WARMUP,
                 "scenarios": "$SCENARIOS", "idle_conns": $IDLE_CONNS,
                 "proxy_cpus": "$PROXY_CPUS", "load_cpus": "$LOAD_CPUS",
                 "portcullis_tokio_workers": ${PORTCULLIS_THREADS:-0},
                 "scenario7_peak_rps": ${PEAK:-0}, "scenario7_tool": "${OHA:+oha}${OHA:-h2load}"},
    "versions": {
        "portcullis": """$(version "$PORTCULLIS_BIN" version) ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ", with uncommitted changes in src/"))""",
        "nginx": """$(version nginx -v)""",
        "haproxy": """$(version haproxy -v)""",
        "wrk": """$(version wrk -v)""",
        "h2load": """$(version h2load --version)""",
        "oha": """$([ -n "$OHA" ] && version "$OHA" --version || echo "not used")""",
        "rustc": """$(version rustc --version)""",
        "openssl": """$(version openssl version)""",
    },
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF
python3 "$LIB/aggregate.py" "$RUN_DIR/meta.json" "$RUNS_FILE" "$BENCH_DIR/results"
