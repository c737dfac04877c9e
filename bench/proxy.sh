#!/usr/bin/env bash
# Postern forward-proxy benchmark: CONNECT tunnels and intercepted calls beside path mode and
# direct, side by side in one run. See bench/README.md ("bench/proxy.sh"). `bench/proxy.sh --help`.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_LOG_TAG=proxy-bench
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
CMDLINE="$(quote_cmdline bench/proxy.sh "$@")"

ROUNDS=3
DURATION=10
WARMUP=3
RUN_WARMUP=1
CONNECTIONS=64
FRESH_CONNECTIONS=16
LOAD_THREADS=2
PROXY_THREADS="$(nproc)"
UPSTREAM_THREADS=1
AUDIT_MODE=required
OUT="$BENCH_DIR/results/proxy-latest.md"
SKIP_BUILD=0
KEEP=0
VARIANTS="direct path tunnel intercept path-fresh tunnel-fresh intercept-fresh"
ALL_VARIANTS=" direct path tunnel intercept direct-fresh path-fresh tunnel-fresh intercept-fresh "
INTERCEPT_HOST="api.bench.test"

usage() {
  cat <<EOF
Usage: bench/proxy.sh [options]

Measures, in one run on this machine, side by side (load: postern-bench-load, closed loop):
  direct           HTTP/1.1 keep-alive straight to postern-bench-upstream
  path             Postern path mode: GET /bench/v1/charges/ch_123, Authorization: Bearer <token>
  tunnel           CONNECT 127.0.0.1:<upstream port> (unregistered host, [proxy] mode = "open"),
                   then plain HTTP/1.1 keep-alive requests inside the tunnel (Postern splices bytes)
  intercept        CONNECT $INTERCEPT_HOST:443 (a registered host), TLS inside the tunnel with a leaf
                   from Postern's CA, HTTP/1.1 keep-alive requests through the full pipeline
  *-fresh          the same with a new connection (+ tunnel, + TLS handshake) for every request,
                   at --fresh-connections (also available: direct-fresh)
Variants alternate in every round; the report gives medians, Postern CPU per request and ratios
against path mode and direct. Everything runs on loopback in a temp dir; every process started
is killed on exit.

Options:
  --rounds N              rounds over all variants (default $ROUNDS)
  --duration S            measured seconds per run (default $DURATION)
  --warmup S              seconds of warm-up per variant before round 1 (default $WARMUP)
  --run-warmup S          seconds each run runs before measuring (connections set up; default $RUN_WARMUP)
  --connections N         connections for keep-alive variants (default $CONNECTIONS)
  --fresh-connections N   connections for *-fresh variants (default $FRESH_CONNECTIONS)
  --load-threads N        load generator threads (default $LOAD_THREADS)
  --proxy-threads N       Postern worker threads (default nproc = $PROXY_THREADS)
  --upstream-threads N    upstream runtime threads (default $UPSTREAM_THREADS)
  --variants "LIST"       subset/order of "$VARIANTS" (+ direct-fresh)
  --audit MODE            audit mode of the bench integration: required (default) or best_effort
  --out FILE              Markdown report (default bench/results/proxy-latest.md); also on stdout
  --skip-build            use the existing release binaries
  --keep                  keep the temp dir (config, CA, logs, events, raw JSON results)
  -h, --help              this help

Needs: cargo (unless --skip-build), python3, curl. Builds with
\`cargo build --release -p postern -p postern-bench-upstream\` (honours CARGO_TARGET_DIR).
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --run-warmup) RUN_WARMUP="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --fresh-connections) FRESH_CONNECTIONS="$2"; shift 2 ;;
    --load-threads) LOAD_THREADS="$2"; shift 2 ;;
    --proxy-threads) PROXY_THREADS="$2"; shift 2 ;;
    --upstream-threads) UPSTREAM_THREADS="$2"; shift 2 ;;
    --variants) VARIANTS="$2"; shift 2 ;;
    --audit) AUDIT_MODE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "proxy.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
require_numbers proxy.sh "$ROUNDS" "$DURATION" "$WARMUP" "$RUN_WARMUP" "$CONNECTIONS" "$FRESH_CONNECTIONS" "$LOAD_THREADS" "$PROXY_THREADS" "$UPSTREAM_THREADS"
[[ "$ROUNDS" -ge 1 && "$DURATION" -ge 1 && "$DURATION" -le 600 && "$CONNECTIONS" -ge 1 && "$FRESH_CONNECTIONS" -ge 1 ]] \
  || { echo "proxy.sh: need --rounds >= 1, 1 <= --duration <= 600, connections >= 1" >&2; exit 2; }
[[ "$AUDIT_MODE" == required || "$AUDIT_MODE" == best_effort ]] || { echo "proxy.sh: --audit is required or best_effort" >&2; exit 2; }
for v in $VARIANTS; do
  [[ "$ALL_VARIANTS" == *" $v "* ]] || { echo "proxy.sh: unknown variant $v (known:$ALL_VARIANTS)" >&2; exit 2; }
done

command -v python3 >/dev/null || die "python3 is needed (bench/proxy_report.py)"
command -v curl >/dev/null || die "curl is needed for the sanity checks (Debian: apt-get install -y curl)"

# ---------------------------------------------------------------- build
build_release "--skip-build uses the last release binaries" -p postern -p postern-bench-upstream
locate_release_bins
LOAD_BIN="$TARGET_DIR/release/postern-bench-load"
[[ -x "$POSTERN_BIN" && -x "$UPSTREAM_BIN" && -x "$LOAD_BIN" ]] \
  || die "release binaries (postern, postern-bench-upstream, postern-bench-load) not found in $TARGET_DIR/release (drop --skip-build?)"

# ---------------------------------------------------------------- temp dir, cleanup
make_workdir postern-proxy-bench

read -r UPSTREAM_PORT POSTERN_PORT ADMIN_PORT < <(free_ports 3)

# ---------------------------------------------------------------- upstream
start_upstream

# ---------------------------------------------------------------- Postern config
# The same integration as bench/run.sh (static bearer from a file, audit required, rate limit
# that never triggers), plus `hosts` so CONNECT $INTERCEPT_HOST:443 is intercepted into it, and a
# [proxy] section letting the caller tunnel to the (unregistered) upstream address.
PROXY_SECTION="$(cat <<EOF
[proxy]
mode = "open"                                # the tunnel variant's destination is unregistered
allowed_ports = [443, $UPSTREAM_PORT]        # 443 for CONNECT $INTERCEPT_HOST:443
allow_private_networks = ["127.0.0.1/32"]    # the upstream listens on loopback
EOF
)"
write_postern_config bench/proxy.sh 'credential = { kind = "bearer", from_file = "vendor-key" }' \
  "$PROXY_SECTION" "hosts = [\"$INTERCEPT_HOST\"]"
"$POSTERN_BIN" ca export --config "$WORK/postern/postern.toml" >"$WORK/ca.pem" 2>"$WORK/ca-export.log" \
  || { cat "$WORK/ca-export.log" >&2; die "postern ca export failed"; }
grep -q 'BEGIN CERTIFICATE' "$WORK/ca.pem" || die "postern ca export printed no certificate"

start_postern
log "upstream :$UPSTREAM_PORT (pid $UPSTREAM_PID), postern :$POSTERN_PORT (pid $POSTERN_PID); work dir $WORK"

# ---------------------------------------------------------------- load generator
# run_load VARIANT DURATION WARMUP OUTFILE [extra args]
run_load() {
  local variant="$1" duration="$2" warmup="$3" out="$4"
  shift 4
  local mode="${variant%-fresh}" args=()
  args=(--json --threads "$LOAD_THREADS" --duration "$duration" --warmup "$warmup" --timeout 5
        --token "$TOKEN" --clk-tck "$(getconf CLK_TCK)" --expect '"object":"charge"')
  if [[ "$variant" == *-fresh ]]; then
    args+=(--fresh --connections "$FRESH_CONNECTIONS")
  else
    args+=(--connections "$CONNECTIONS")
  fi
  case "$mode" in
    direct) args+=(--target "127.0.0.1:$UPSTREAM_PORT") ;;
    path) args+=(--target "127.0.0.1:$POSTERN_PORT" --integration bench) ;;
    tunnel) args+=(--target "127.0.0.1:$POSTERN_PORT" --host "127.0.0.1:$UPSTREAM_PORT") ;;
    intercept) args+=(--target "127.0.0.1:$POSTERN_PORT" --host "$INTERCEPT_HOST:443" --ca "$WORK/ca.pem") ;;
  esac
  timeout $(( duration + warmup + 30 )) "$LOAD_BIN" "$mode" "${args[@]}" \
    --pid "$POSTERN_PID" --upstream-pid "$UPSTREAM_PID" "$@" >"$out" 2>"$out.stderr"
}

# ---------------------------------------------------------------- sanity checks
# Every variant answers 200 with the upstream's body through the load generator ...
for variant in $VARIANTS; do
  run_load "$variant" 10 0 "$WORK/check-$variant.json" --requests 3 --strict \
    || die "variant $variant failed its sanity check: $(cat "$WORK/check-$variant.json" "$WORK/check-$variant.json.stderr" | head -c 600)"
done
# ... and through an independent client: curl through HTTPS_PROXY-style settings, trusting the CA.
code="$(curl -s -o "$WORK/check-curl-intercept.body" -w '%{http_code}' --max-time 10 --cacert "$WORK/ca.pem" \
  -x "http://bench:$TOKEN@127.0.0.1:$POSTERN_PORT" "https://$INTERCEPT_HOST/v1/charges/ch_123" || true)"
[[ "$code" == 200 ]] && grep -q '"object":"charge"' "$WORK/check-curl-intercept.body" \
  || die "curl through the proxy to https://$INTERCEPT_HOST answered $code: $(head -c 300 "$WORK/check-curl-intercept.body")"
code="$(curl -s -o /dev/null -w '%{http_connect}' --max-time 10 -p -x "http://127.0.0.1:$POSTERN_PORT" \
  "http://127.0.0.1:$UPSTREAM_PORT/v1/charges/ch_123" || true)"
[[ "$code" == 407 ]] || die "CONNECT without a caller token answered $code (expected 407): is the proxy on?"
EVENTS_FILE="$WORK/postern/data/events.jsonl"
# Tunnel events are written when the tunnel closes; the writer appends every ~20 ms.
for _ in $(seq 30); do
  grep -q '"mode":"intercept"' "$EVENTS_FILE" 2>/dev/null && grep -q '"mode":"tunnel"' "$EVENTS_FILE" 2>/dev/null && break
  sleep 0.1
done
if [[ " $VARIANTS " == *" tunnel"* ]]; then
  grep -q '"mode":"tunnel"' "$EVENTS_FILE" 2>/dev/null || die "Postern wrote no tunnel event to $EVENTS_FILE"
fi
grep -q '"mode":"intercept"' "$EVENTS_FILE" 2>/dev/null || die "Postern wrote no intercept event to $EVENTS_FILE"
log "sanity checks passed (every variant 200 with the upstream body; curl through the proxy with the CA; 407 without a token; tunnel and intercept events written)"

# ---------------------------------------------------------------- meta
{
  write_meta_common
  echo "rounds=$ROUNDS"
  echo "duration=$DURATION"
  echo "warmup=$WARMUP"
  echo "run_warmup=$RUN_WARMUP"
  echo "connections=$CONNECTIONS"
  echo "fresh_connections=$FRESH_CONNECTIONS"
  echo "load_threads=$LOAD_THREADS"
  echo "proxy_threads=$PROXY_THREADS"
  echo "upstream_threads=$UPSTREAM_THREADS"
  echo "audit=$AUDIT_MODE"
  echo "variants=$VARIANTS"
  echo "intercept_host=$INTERCEPT_HOST"
} >"$WORK/meta.env"

# ---------------------------------------------------------------- rounds
if [[ "$WARMUP" -gt 0 ]]; then
  for variant in $VARIANTS; do
    log "warm-up: $variant ${WARMUP}s"
    run_load "$variant" "$WARMUP" 0 "$WORK/warmup-$variant.json" || log "warm-up of $variant reported a problem: $(head -c 300 "$WORK/warmup-$variant.json.stderr")"
  done
fi
for round in $(seq 1 "$ROUNDS"); do
  for variant in $VARIANTS; do
    sleep 1
    out="$WORK/run-$round-$variant.json"
    run_load "$variant" "$DURATION" "$RUN_WARMUP" "$out" \
      || log "round $round $variant: the load generator exited non-zero: $(head -c 300 "$out.stderr")"
    [[ -s "$out" ]] || die "no result from the load generator for $variant (see $out.stderr)"
    summary="$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
l, e, c = r["latency_us"], r["errors"], r["cpu"]
cpu = "-" if c["us_per_request"] is None else "%.1f" % c["us_per_request"]
print("%s req/s, p50 %.0fus, p99 %.0fus, Postern %s us/req, errors %d (warm-up %d)" % (
    format(round(r["requests_per_s"]), ","), l["p50"], l["p99"], cpu, e["total"], e["during_warmup"]))
' "$out")"
    log "round $round/$ROUNDS $variant: $summary"
    grep -q WARNING "$out.stderr" 2>/dev/null && log "  $(grep WARNING "$out.stderr" | head -1)"
  done
done

# ---------------------------------------------------------------- after the rounds
{
  echo "postern_hwm_kb=$(status_kb "$POSTERN_PID" VmHWM)"
  echo "postern_threads=$(awk '$1 == "Threads:" { print $2 }' "/proc/$POSTERN_PID/status" 2>/dev/null || echo 0)"
  echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "event_lines=$(cat "$WORK"/postern/data/events.jsonl* 2>/dev/null | wc -l)"
  echo "postern_log_bytes=$(wc -c <"$WORK/postern.log")"
  echo "postern_log_warn=$(grep -c -E '\bWARN\b' "$WORK/postern.log" || true)"
  echo "postern_log_error=$(grep -c -E '\bERROR\b' "$WORK/postern.log" || true)"
} >>"$WORK/meta.env"
# What Postern still holds once the load generator is gone: client connections and tunnels
# should be closed; connections to the upstream are path/intercept's keep-alive pool.
sleep 2
{
  echo "postern_fds_after=$(find "/proc/$POSTERN_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
  if command -v ss >/dev/null; then
    echo "client_conns_after=$(ss -Htn state established "( sport = :$POSTERN_PORT )" 2>/dev/null | wc -l)"
    echo "upstream_conns_after=$(ss -Htnp state established "( dport = :$UPSTREAM_PORT )" 2>/dev/null | grep -c "pid=$POSTERN_PID," || true)"
  fi
  echo "alert_lines=$(cat "$WORK"/postern/data/alerts.jsonl 2>/dev/null | wc -l)"
} >>"$WORK/meta.env"
if grep -q -E '\b(WARN|ERROR)\b' "$WORK/postern.log"; then
  # Without colours and timestamps, so repeated messages count together.
  sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9T:.Z-]+ +//' "$WORK/postern.log" | grep -E '^(WARN|ERROR)\b' \
    | sed -E 's/request_id=[^ ]+//g; s/peer=[^ ]+//g' | sort | uniq -c | sort -rn | head -10 >"$WORK/postern-warnings.txt" || true
fi

write_report proxy_report.py
