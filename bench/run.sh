#!/usr/bin/env bash
# Postern data-plane benchmark: direct vs nginx proxy_pass vs Postern, side by side, one run.
# See bench/README.md for the method. Run `bench/run.sh --help` for options.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_LOG_TAG=bench
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
CMDLINE="$(quote_cmdline bench/run.sh "$@")"

ROUNDS=3
DURATION=10
WARMUP=3
CONNECTIONS=64
WRK_THREADS=2
PROXY_THREADS="$(nproc)"
UPSTREAM_THREADS=1
IDLE_CONNS=1000
METHOD=GET
AUDIT_MODE=required
CREDENTIAL_KIND=static
SCAN=off
NGINX_ACCESS_LOG=off
OUT="$BENCH_DIR/results/latest.md"
SKIP_BUILD=0
PGO_BOLT=0
SKIP_IDLE=0
KEEP=0
PERF=0
TARGETS="direct nginx postern"

usage() {
  cat <<EOF
Usage: bench/run.sh [options]

Measures, in one run on this machine, side by side:
  (a) direct    wrk -> postern-bench-upstream
  (b) nginx     wrk -> nginx proxy_pass (no policy, keep-alive upstream) -> upstream
  (c) postern   wrk -> Postern, full pipeline (caller token, grant, Cedar, rate limit,
                bearer credential injected from a file, events to data_dir) -> upstream
  (d) floor     wrk -> a bare hyper proxy, one single-threaded runtime per thread
                (crates/postern-bench-upstream/examples/minproxy.rs) -> upstream: what any
                hyper-based proxy costs here before it does anything (only with --targets)
  (c') pgo      wrk -> Postern as (c), built with profile-guided optimization by bench/pgo.sh
                (only with --targets; without --skip-build it runs bench/pgo.sh, ~5–13 min on 2 cores;
                with --pgo-bolt, the PGO build laid out again by BOLT: bench/pgo.sh --bolt)
Runs alternate a,b,c,a,b,c,... for --rounds rounds; the report gives medians, proxy CPU per
request, peak RSS (VmHWM) and memory per idle keep-alive connection (bench/idle_conns.py).
Everything runs on loopback in a temp dir; every process started is killed on exit.

Options:
  --rounds N            rounds of (a,b,c) (default $ROUNDS)
  --duration S          seconds per measured wrk run (default $DURATION)
  --warmup S            seconds of warm-up per target before round 1 (default $WARMUP)
  --connections N       wrk connections (default $CONNECTIONS)
  --wrk-threads N       wrk threads (default $WRK_THREADS)
  --proxy-threads N     Postern [gateway] workers = nginx worker_processes (default nproc = $PROXY_THREADS)
  --upstream-threads N  upstream runtime threads (default $UPSTREAM_THREADS)
  --idle-conns N        idle connections for the memory test (default $IDLE_CONNS; 0 skips it)
  --method GET|POST     GET /v1/charges/ch_123 or POST /v1/charges with a small form body (default $METHOD)
  --nginx-access-log on|off  nginx access log to a file in the temp dir (default $NGINX_ACCESS_LOG)
  --upstream-tls        the upstream speaks HTTPS (HTTP/1.1, a throwaway CA): Postern on its
                        defaults (TLS to vendors, no allow_plaintext, the CA as ca_file) against
                        nginx proxy_pass https:// verifying the same CA and reusing sessions over
                        keep-alive; direct is wrk over TLS (not with the floor target)
  --upstream-h2         --upstream-tls, and the upstream offers HTTP/2 first by ALPN (HTTP/1.1
                        still served), as many vendors' API hosts do: Postern takes h2 (its
                        calls on a worker share one connection), nginx stays on HTTP/1.1
  --targets "LIST"      subset of "direct nginx postern pgo floor" (default "direct nginx postern")
  --out FILE            Markdown report (default bench/results/latest.md); also printed on stdout
  --perf                after the rounds, profile Postern and nginx under the same load with
                        perf (DWARF call graphs; reports in bench/results/perf-*.txt)
  --credential KIND     static (bearer from a file, default) or oauth2 (client credentials; the
                        upstream doubles as the token endpoint; the token is cached after the first call)
  --audit MODE          Postern's audit mode for the bench integration: required (default) or best_effort
  --scan on|off         payload scanning on the bench integration (data_classes = ["pii.email"],
                        on_unapproved = "redact"); implies --method POST with a 741-byte JSON customer
                        body (email approved, phone and card masked) on every target (default off)
  --pgo-bolt            the pgo target is bench/pgo.sh --bolt's PGO + BOLT build
  --skip-build          use the existing release binaries
  --keep                keep the temp dir (configs, logs, events, raw results)
  -h, --help            this help

Needs: cargo, wrk, nginx, python3, curl. Missing wrk/nginx/curl are installed with apt-get
(when running as root). Builds with \`cargo build --release -p postern -p postern-bench-upstream\`
(honours CARGO_TARGET_DIR).
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --wrk-threads) WRK_THREADS="$2"; shift 2 ;;
    --proxy-threads) PROXY_THREADS="$2"; shift 2 ;;
    --upstream-threads) UPSTREAM_THREADS="$2"; shift 2 ;;
    --idle-conns) IDLE_CONNS="$2"; shift 2 ;;
    --method) METHOD="$2"; shift 2 ;;
    --nginx-access-log) NGINX_ACCESS_LOG="$2"; shift 2 ;;
    --upstream-tls) UPSTREAM_TLS=1; shift ;;
    --upstream-h2) UPSTREAM_TLS=1; UPSTREAM_H2=1; shift ;;
    --targets) TARGETS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --perf) PERF=1; shift ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --pgo-bolt) PGO_BOLT=1; shift ;;
    --keep) KEEP=1; shift ;;
    --audit) AUDIT_MODE="$2"; shift 2 ;;
    --credential) CREDENTIAL_KIND="$2"; shift 2 ;;
    --scan) SCAN="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
require_numbers run.sh "$ROUNDS" "$DURATION" "$WARMUP" "$CONNECTIONS" "$WRK_THREADS" "$PROXY_THREADS" "$UPSTREAM_THREADS" "$IDLE_CONNS"
[[ "$ROUNDS" -ge 1 && "$DURATION" -ge 1 && "$DURATION" -le 600 ]] || { echo "run.sh: need --rounds >= 1 and 1 <= --duration <= 600" >&2; exit 2; }
[[ "$METHOD" == GET || "$METHOD" == POST ]] || { echo "run.sh: --method is GET or POST" >&2; exit 2; }
[[ "$SCAN" == on || "$SCAN" == off ]] || { echo "run.sh: --scan is on or off" >&2; exit 2; }
if [[ "$SCAN" == on ]]; then
  METHOD=POST
  SCAN_LINES='data_classes = ["pii.email"]
on_unapproved = "redact"'
  # A realistic customer-create payload: approved email, unapproved phone and card (masked).
  POST_BODY='{"object":"customer","name":"Ada Lovelace","email":"ada.lovelace@example.com","phone":"+14155550123","description":"Customer for order 8842-1193","metadata":{"order_id":"ord_8842_1193","plan":"pro-annual","source":"checkout-web","campaign":"spring-2026","notes":"prefers email contact; renewal due in March"},"shipping":{"name":"Ada Lovelace","address":{"line1":"12 St James Square","city":"London","postal_code":"SW1Y 4JH","country":"GB"}},"payment_method":{"type":"card","card":{"number":"4242424242424242","exp_month":12,"exp_year":2030,"cvc":"123"}},"preferred_locales":["en-GB","en"],"tax_exempt":"none","invoice_settings":{"footer":"Thank you for your business","custom_fields":[{"name":"PO","value":"PO-55821"}]},"created":1764326400}'
  POST_TYPE=application/json
else
  SCAN_LINES=''
  POST_BODY='amount=500&currency=usd'
  POST_TYPE=application/x-www-form-urlencoded
fi
[[ "$NGINX_ACCESS_LOG" == on || "$NGINX_ACCESS_LOG" == off ]] || { echo "run.sh: --nginx-access-log is on or off" >&2; exit 2; }
if [[ $UPSTREAM_TLS -eq 1 && " $TARGETS " == *" floor "* ]]; then
  echo "run.sh: the floor target (examples/minproxy.rs) speaks plain HTTP to the upstream only; drop it from --targets with --upstream-tls or --upstream-h2" >&2
  exit 2
fi

# ---------------------------------------------------------------- tools
need_install=()
command -v wrk >/dev/null || need_install+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_install+=(nginx)
command -v curl >/dev/null || need_install+=(curl)
apt_install "${need_install[@]}"
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
command -v python3 >/dev/null || die "python3 is needed (bench/idle_conns.py, bench/report.py)"

# ---------------------------------------------------------------- build
build_release "does every workspace crate build? --skip-build uses the last release binaries" \
  -p postern -p postern-bench-upstream --bins --example minproxy
locate_release_bins
FLOOR_BIN="$TARGET_DIR/release/examples/minproxy"
[[ -x "$POSTERN_BIN" && -x "$UPSTREAM_BIN" ]] || die "release binaries not found in $TARGET_DIR/release (drop --skip-build?)"
PGO_BIN=""
PGO_BUILD="PGO"
PGO_FLAGS=()
if [[ $PGO_BOLT -eq 1 ]]; then PGO_BUILD="PGO + BOLT"; PGO_FLAGS=(--bolt); fi
[[ $PGO_BOLT -eq 0 || " $TARGETS " == *" pgo "* ]] || die "--pgo-bolt needs the pgo target (--targets \"... pgo\")"
if [[ " $TARGETS " == *" pgo "* ]]; then
  if [[ $SKIP_BUILD -eq 1 ]]; then
    pgo_paths
    [[ $PGO_BOLT -eq 1 ]] && PGO_BIN="$BOLT_BIN"
    [[ -x "$PGO_BIN" ]] || die "$PGO_BIN not found (run bench/pgo.sh${PGO_FLAGS[*]:+ ${PGO_FLAGS[*]}}, or drop --skip-build)"
  else
    PGO_BIN="$("$BENCH_DIR/pgo.sh" --skip-build "${PGO_FLAGS[@]}" | tail -1)" || die "bench/pgo.sh failed"
  fi
fi

# ---------------------------------------------------------------- temp dir, cleanup
make_workdir postern-bench

# Helpers only this script needs (the shared ones are in bench/lib.sh).
stop_pid() {
  kill "$1" 2>/dev/null || true
  local i
  for i in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget_pid "$1"
}
ctx_switches() { # PID... -> voluntary context switches summed over all threads
  local total=0 pid n
  for pid in "$@"; do
    n="$(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '$1 == "voluntary_ctxt_switches:" { s += $2 } END { print s + 0 }')"
    total=$((total + n))
  done
  echo "$total"
}
cpu_ticks() { # PID... -> utime+stime summed (clock ticks)
  local total=0 pid stat rest
  for pid in "$@"; do
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    rest="${stat##*) }"
    # fields after "(comm) ": state(3) ... utime(14) stime(15) -> indices 11, 12 of rest
    read -r -a f <<<"$rest"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

read -r UPSTREAM_PORT NGINX_PORT POSTERN_PORT FLOOR_PORT ADMIN_PORT PGO_PORT PGO_ADMIN_PORT < <(free_ports 7)

# ---------------------------------------------------------------- upstream
start_upstream

# ---------------------------------------------------------------- Postern config
if [ "$CREDENTIAL_KIND" = oauth2 ]; then
  CREDENTIAL_LINE="credential = { kind = \"oauth2\", token_url = \"$UPSTREAM_SCHEME://127.0.0.1:$UPSTREAM_PORT/oauth/token\", client_id = \"bench\", from_file = \"vendor-key\" }"
else
  CREDENTIAL_LINE='credential = { kind = "bearer", from_file = "vendor-key" }'
fi
write_postern_config bench/run.sh "$CREDENTIAL_LINE" "" "" "$SCAN_LINES"
if [[ -n "$PGO_BIN" ]]; then
  # The same config for the PGO build, on its own ports and data_dir.
  mkdir -p "$WORK/pgo"
  cp -p "$WORK/postern/vendor-key" "$WORK/pgo/vendor-key"
  sed -e "s|^listen = .*|listen = \"127.0.0.1:$PGO_PORT\"|; s|^admin_listen = .*|admin_listen = \"127.0.0.1:$PGO_ADMIN_PORT\"|" \
    "$WORK/postern/postern.toml" >"$WORK/pgo/postern.toml"
  grep -q "^listen = \"127.0.0.1:$PGO_PORT\"" "$WORK/pgo/postern.toml" || die "could not give the PGO build its own port"
fi

POSTERN_PID=""
stop_postern() { stop_pid "$POSTERN_PID"; POSTERN_PID=""; }
PGO_PID=""
start_pgo() {
  POSTERN_LOG="${POSTERN_LOG:-info}" "$PGO_BIN" serve --config "$WORK/pgo/postern.toml" >>"$WORK/pgo.log" 2>&1 &
  PGO_PID=$!
  PIDS+=("$PGO_PID")
  wait_http "$PGO_PORT" "$PGO_PID" pgo
}

# ---------------------------------------------------------------- nginx config
mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
NGINX_USER_LINE=""
NOFILE="$(ulimit -Hn)"; [[ "$NOFILE" == unlimited || "$NOFILE" -gt 65536 ]] && NOFILE=65536
[[ $EUID -eq 0 ]] && NGINX_USER_LINE="user root;"
NGINX_TLS=""
if [[ $UPSTREAM_TLS -eq 1 ]]; then
  # As Postern: verify the vendor's certificate against the CA, by the name it was issued for;
  # TLS sessions are reused across the keep-alive connections (nginx's default).
  NGINX_TLS="      proxy_ssl_trusted_certificate $UPSTREAM_CA;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;"
fi
if [[ "$NGINX_ACCESS_LOG" == on ]]; then
  NGINX_ACCESS="access_log $WORK/nginx/logs/access.log;"
else
  NGINX_ACCESS="access_log off;"
fi
cat >"$WORK/nginx/nginx.conf" <<EOF
# Written by bench/run.sh: a plain reverse proxy, no policy.
$NGINX_USER_LINE
daemon off;
master_process on;
worker_processes $PROXY_THREADS;
worker_rlimit_nofile $NOFILE;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 8192; }
http {
  $NGINX_ACCESS
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  keepalive_timeout 75s;
  keepalive_requests 100000000;   # like Postern: never close a busy client connection
  upstream bench_upstream {
    server 127.0.0.1:$UPSTREAM_PORT;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location /bench/ {
      proxy_pass $UPSTREAM_SCHEME://bench_upstream/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
$NGINX_TLS
    }
  }
}
EOF
"$NGINX_BIN" -t -p "$WORK/nginx" -e "$WORK/nginx/logs/error.log" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx-check.log" 2>&1 \
  || { cat "$WORK/nginx-check.log" >&2; die "nginx -t rejected the bench config"; }

NGINX_PID=""
start_nginx() {
  "$NGINX_BIN" -p "$WORK/nginx" -e "$WORK/nginx/logs/error.log" -c "$WORK/nginx/nginx.conf" >>"$WORK/nginx.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_port "$NGINX_PORT" "$NGINX_PID" nginx
  local i
  for i in $(seq 1 50); do
    [[ "$(nginx_workers | wc -w)" -ge "$PROXY_THREADS" ]] && break
    sleep 0.1
  done
}
nginx_workers() { [[ -n "$NGINX_PID" ]] && pgrep -P "$NGINX_PID" | tr '\n' ' ' || true; }
stop_nginx() { stop_pid "$NGINX_PID"; NGINX_PID=""; }

# ---------------------------------------------------------------- targets
if [[ "$METHOD" == GET ]]; then VENDOR_PATH="/v1/charges/ch_123"; else VENDOR_PATH="/v1/charges"; fi
url_of() {
  case "$1" in
    direct) echo "$UPSTREAM_SCHEME://127.0.0.1:$UPSTREAM_PORT$VENDOR_PATH" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT/bench$VENDOR_PATH" ;;
    postern) echo "http://127.0.0.1:$POSTERN_PORT/bench$VENDOR_PATH" ;;
    pgo) echo "http://127.0.0.1:$PGO_PORT/bench$VENDOR_PATH" ;;
    floor) echo "http://127.0.0.1:$FLOOR_PORT/bench$VENDOR_PATH" ;;
  esac
}
proxy_pids() {
  case "$1" in
    direct) echo "$UPSTREAM_PID" ;;
    nginx) echo "$NGINX_PID $(nginx_workers)" ;;
    postern) echo "$POSTERN_PID" ;;
    pgo) echo "$PGO_PID" ;;
    floor) echo "$FLOOR_PID" ;;
  esac
}

# The same request on every target: method, path after the prefix, Authorization header, body.
cat >"$WORK/bench.lua" <<EOF
wrk.method = "$METHOD"
wrk.headers["Authorization"] = "Bearer $TOKEN"
if wrk.method == "POST" then
  wrk.body = [[$POST_BODY]]
  wrk.headers["Content-Type"] = "$POST_TYPE"
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d mean_us=%.1f status_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.mean, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

start_nginx
start_postern
[[ -n "$PGO_BIN" ]] && start_pgo
FLOOR_PID=""
if [[ " $TARGETS " == *" floor "* ]]; then
  [[ -x "$FLOOR_BIN" ]] || die "$FLOOR_BIN not found (drop --skip-build, or build it: cargo build --release -p postern-bench-upstream --example minproxy)"
  "$FLOOR_BIN" tpc "127.0.0.1:$FLOOR_PORT" "http://127.0.0.1:$UPSTREAM_PORT" "$PROXY_THREADS" >"$WORK/floor.log" 2>&1 &
  FLOOR_PID=$!
  PIDS+=("$FLOOR_PID")
  wait_port "$FLOOR_PORT" "$FLOOR_PID" floor
fi
log "upstream :$UPSTREAM_PORT (pid $UPSTREAM_PID), nginx :$NGINX_PORT (pid $NGINX_PID), postern :$POSTERN_PORT (pid $POSTERN_PID)${PGO_PID:+, pgo :$PGO_PORT (pid $PGO_PID)}; work dir $WORK"

# Sanity: every target answers 200 with the upstream's body; Postern refuses a call without a token.
SANITY_TARGETS="direct nginx postern"
[[ -n "$FLOOR_PID" ]] && SANITY_TARGETS+=" floor"
[[ -n "$PGO_PID" ]] && SANITY_TARGETS+=" pgo"
for target in $SANITY_TARGETS; do
  curl_args=(-s -o "$WORK/check-$target.body" -w '%{http_code}' -H "Authorization: Bearer $TOKEN")
  [[ $UPSTREAM_TLS -eq 1 ]] && curl_args+=(--cacert "$UPSTREAM_CA")
  [[ "$METHOD" == POST ]] && curl_args+=(-X POST -H "Content-Type: $POST_TYPE" --data-raw "$POST_BODY")
  code="$(curl "${curl_args[@]}" "$(url_of "$target")")"
  [[ "$code" == 200 ]] || die "$target answered $code, not 200: $(head -c 300 "$WORK/check-$target.body")"
  grep -q '"object":"charge"' "$WORK/check-$target.body" || die "$target did not return the upstream body"
done
POSTERNS=postern
[[ -n "$PGO_PID" ]] && POSTERNS+=" pgo"
for target in $POSTERNS; do
  code="$(curl -s -o /dev/null -w '%{http_code}' "$(url_of "$target")")"
  [[ "$code" == 401 ]] || die "$target answered $code to a call without a caller token (expected 401): is the pipeline on?"
  EVENTS_FILE="$WORK/$target/data/events.jsonl"
  # The writer appends in batches (every ~20 ms, docs/EVENTS.md): give it up to 2 s.
  for _ in $(seq 20); do [[ -s "$EVENTS_FILE" ]] && break; sleep 0.1; done
  [[ -s "$EVENTS_FILE" ]] || die "$target wrote no event to $EVENTS_FILE within 2 s"
done
BODY_BYTES="$(wc -c <"$WORK/check-direct.body")"
log "sanity checks passed (200 with the upstream body on $SANITY_TARGETS; 401 without a token; events written)"

# ---------------------------------------------------------------- meta
{
  write_meta_common
  echo "nginx_version=$("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///')"
  echo "wrk_version=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "clk_tck=$(getconf CLK_TCK)"
  echo "wrk_threads=$WRK_THREADS"
  echo "connections=$CONNECTIONS"
  echo "duration=$DURATION"
  echo "warmup=$WARMUP"
  echo "rounds=$ROUNDS"
  echo "method=$METHOD"
  echo "path=$VENDOR_PATH"
  echo "proxy_threads=$PROXY_THREADS"
  echo "upstream_threads=$UPSTREAM_THREADS"
  echo "nginx_access_log=$NGINX_ACCESS_LOG"
  echo "upstream_tls=$UPSTREAM_TLS"
  echo "upstream_h2=$UPSTREAM_H2"
  [[ -n "$PGO_BIN" ]] && echo "pgo_build=$PGO_BUILD"
  echo "body_bytes=$BODY_BYTES"
  echo "scan=$SCAN"
  echo "request_body_bytes=$([[ "$METHOD" == POST ]] && printf '%s' "$POST_BODY" | wc -c || echo 0)"
} >"$WORK/meta.env"

# ---------------------------------------------------------------- idle connections (fresh processes)
if [[ "$IDLE_CONNS" -gt 0 ]]; then
  for target in nginx postern; do
    [[ " $TARGETS " == *" $target "* ]] || continue
    for mode in request connect; do
      # Fresh process for each measurement: nothing freed by an earlier phase to reuse.
      if [[ $target == nginx ]]; then stop_nginx; start_nginx; else stop_postern; start_postern; fi
      # One call first, so the upstream pool and lazy start-up allocations are not counted.
      curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "$(url_of "$target")" >/dev/null || true
      pids="$(proxy_pids "$target" | tr -s ' ' ',' | sed 's/,$//')"
      flag=()
      [[ $mode == request ]] && flag=(--request)
      log "idle connections: $IDLE_CONNS to $target ($mode)"
      timeout 120 python3 "$BENCH_DIR/idle_conns.py" --port "$(url_of "$target" | sed -E 's|http://127.0.0.1:([0-9]+).*|\1|')" \
        --count "$IDLE_CONNS" --pids "$pids" "${flag[@]}" \
        --path "$(url_of "$target" | sed -E 's|http://127.0.0.1:[0-9]+||')" \
        --header "Authorization: Bearer $TOKEN" >"$WORK/idle-$target-$mode.json" \
        || die "idle_conns.py failed for $target ($mode)"
      log "  $(cat "$WORK/idle-$target-$mode.json")"
    done
  done
  # Fresh processes for the throughput phase, so peak RSS is that of the load alone.
  stop_nginx; start_nginx
  stop_postern; start_postern
  if [[ -n "$PGO_PID" ]]; then stop_pid "$PGO_PID"; start_pgo; fi
fi

# ---------------------------------------------------------------- throughput rounds
run_wrk() { # TARGET SECONDS OUTFILE
  timeout $(( $2 + 30 )) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2"s --timeout 5s --latency \
    -s "$WORK/bench.lua" "$(url_of "$1")" >"$3" 2>&1 || die "wrk failed against $1: $(tail -5 "$3")"
}
printf 'round\ttarget\trequests\tduration_us\tp50_us\tp99_us\tp999_us\tmean_us\tstatus_errors\tsocket_errors\tproxy_cpu_ticks\tupstream_cpu_ticks\tproxy_vcsw\tupstream_conns\n' >"$WORK/runs.tsv"
# upstream_conns_at SECONDS FILE [PID...]: after SECONDS, the TCP connections the processes PID
# hold established to the upstream (the proxy's pool; the other proxies' idle pools are not
# counted) into FILE; -1 without ss or without PIDs (direct: wrk's own).
upstream_conns_at() {
  local seconds="$1" file="$2"
  shift 2
  sleep "$seconds"
  if [[ $# -gt 0 ]] && command -v ss >/dev/null; then
    local pids
    pids="$(tr ' ' '|' <<<"$*")"
    ss -tnpH state established "( dport = :$UPSTREAM_PORT )" 2>/dev/null \
      | grep -c -E "pid=($pids)," >"$file" || true
  else
    echo -1 >"$file"
  fi
}
if [[ "$WARMUP" -gt 0 ]]; then
  for target in $TARGETS; do
    log "warm-up: $target ${WARMUP}s"
    run_wrk "$target" "$WARMUP" "$WORK/warmup-$target.txt"
  done
fi
for round in $(seq 1 "$ROUNDS"); do
  for target in $TARGETS; do
    sleep 1
    # shellcheck disable=SC2046
    cpu0="$(cpu_ticks $(proxy_pids "$target"))"; up0="$(cpu_ticks "$UPSTREAM_PID")"; cs0="$(ctx_switches $(proxy_pids "$target"))"
    conn_pids=()
    [[ "$target" != direct ]] && read -r -a conn_pids <<<"$(proxy_pids "$target")"
    upstream_conns_at "$(( (DURATION + 1) / 2 ))" "$WORK/conns-$round-$target" "${conn_pids[@]}" &
    conns_job=$!
    run_wrk "$target" "$DURATION" "$WORK/wrk-$round-$target.txt"
    wait "$conns_job" || echo -1 >"$WORK/conns-$round-$target"
    # shellcheck disable=SC2046
    cpu1="$(cpu_ticks $(proxy_pids "$target"))"; up1="$(cpu_ticks "$UPSTREAM_PID")"; cs1="$(ctx_switches $(proxy_pids "$target"))"
    line="$(grep '^BENCH ' "$WORK/wrk-$round-$target.txt" || true)"
    [[ -n "$line" ]] || die "no result line from wrk against $target (see $WORK/wrk-$round-$target.txt)"
    declare -A v=()
    for kv in ${line#BENCH }; do v["${kv%%=*}"]="${kv#*=}"; done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "${v[requests]}" "${v[duration_us]}" \
      "${v[p50_us]}" "${v[p99_us]}" "${v[p999_us]}" "${v[mean_us]}" "${v[status_errors]}" "${v[socket_errors]}" \
      "$((cpu1 - cpu0))" "$((up1 - up0))" "$((cs1 - cs0))" "$(cat "$WORK/conns-$round-$target")" >>"$WORK/runs.tsv"
    rps="$(python3 -c "print(f'{${v[requests]}/${v[duration_us]}*1e6:,.0f}')")"
    log "round $round/$ROUNDS $target: $rps req/s, p50 ${v[p50_us]}us, p99 ${v[p99_us]}us, non-2xx ${v[status_errors]}, socket errors ${v[socket_errors]}"
    unset v
  done
done

# Peak RSS (VmHWM) of each process over the throughput phase.
{
  echo "direct_hwm_kb=$(status_kb "$UPSTREAM_PID" VmHWM)"
  if [[ -n "$NGINX_PID" ]]; then
    total=0
    for pid in $NGINX_PID $(nginx_workers); do total=$((total + $(status_kb "$pid" VmHWM))); done
    echo "nginx_hwm_kb=$total"
  fi
  echo "postern_hwm_kb=$(status_kb "$POSTERN_PID" VmHWM)"
  [[ -n "$FLOOR_PID" ]] && echo "floor_hwm_kb=$(status_kb "$FLOOR_PID" VmHWM)"
  [[ -n "$PGO_PID" ]] && echo "pgo_hwm_kb=$(status_kb "$PGO_PID" VmHWM)"
} >"$WORK/hwm.env"
EVENT_LINES="$(cat "$WORK"/postern/data/events.jsonl* 2>/dev/null | wc -l)"
POSTERN_LOG_BYTES="$(wc -c <"$WORK/postern.log")"
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/meta.env"
echo "notes=Postern wrote $EVENT_LINES events to data_dir during this run (events.jsonl and its rotations); its stderr log grew to $POSTERN_LOG_BYTES bytes." >>"$WORK/meta.env"

# ---------------------------------------------------------------- report
write_report report.py

# ---------------------------------------------------------------- optional perf profile
if [[ $PERF -eq 1 ]]; then
  if command -v perf >/dev/null; then
    mkdir -p "$BENCH_DIR/results"
    for target in postern nginx; do
      [[ " $TARGETS " == *" $target "* ]] || continue
      log "perf: profiling $target under the same load"
      # shellcheck disable=SC2046
      pid_list="$(proxy_pids "$target" | tr -s ' ' ',' | sed 's/,$//')"
      # DWARF call graphs (the release profile keeps debug info), so inclusive ("children")
      # costs per function are right even without frame pointers. Shorter than a round: big data.
      perf_secs=$(( DURATION < 5 ? DURATION : 5 ))
      run_wrk "$target" $(( perf_secs + 3 )) "$WORK/wrk-perf-$target.txt" &
      wrk_job=$!
      sleep 1
      timeout $(( perf_secs + 60 )) perf record -q -F 250 --call-graph dwarf,16384 -p "$pid_list" \
        -o "$WORK/perf-$target.data" -- sleep "$perf_secs" \
        >"$WORK/perf-$target.log" 2>&1 || log "perf record failed for $target (see $WORK/perf-$target.log)"
      wait "$wrk_job" || true
      if [[ -s "$WORK/perf-$target.data" ]]; then
        tidy() { grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//'; }
        {
          echo "# perf, $target under the same wrk load, ${perf_secs}s at 250 Hz, DWARF call graphs"
          echo "## self time by shared object"
          timeout 300 perf report -i "$WORK/perf-$target.data" --no-children --stdio --percent-limit 1 -g none \
            --sort dso 2>/dev/null | grep -v '^#' | tidy
          echo "## self time by symbol (top)"
          timeout 300 perf report -i "$WORK/perf-$target.data" --no-children --stdio --percent-limit 0.7 -g none \
            --sort dso,symbol 2>/dev/null | grep -v '^#' | tidy | head -40
          echo "## inclusive time (self + callees) of user-space functions, inlined frames omitted"
          timeout 300 perf report -i "$WORK/perf-$target.data" --children --stdio --percent-limit 0.5 -g none \
            --sort symbol 2>/dev/null | grep -v '^#' | grep -v '(inlined)' | grep -F '[.]' | tidy | cut -c1-200 | head -70
        } >"$BENCH_DIR/results/perf-$target.txt" || true   # head closes pipes early (SIGPIPE)
        log "  wrote bench/results/perf-$target.txt"
      fi
    done
  else
    log "perf not installed; skipping --perf (Debian: apt-get install linux-perf)"
  fi
fi
