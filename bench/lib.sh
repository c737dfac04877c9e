# shellcheck shell=bash
# Shared set-up for the bench scripts (bench/run.sh, bench/proxy.sh, bench/instructions.sh, bench/ab.sh). This
# file is sourced, not run: it defines functions and the upstream's defaults (plain HTTP:
# UPSTREAM_TLS=0 and UPSTREAM_H2=0, which only bench/run.sh, bench/ab.sh and bench/pgo.sh change), so sourcing it before option
# parsing (and for --help) changes nothing else. It holds log/die, argument checks,
# installing missing Debian tools, the release build and locating its binaries (CARGO_TARGET_DIR
# or cargo metadata), the temp dir with the PIDS list and the cleanup trap that kills every
# process started, port helpers, starting the upstream and Postern, the Postern config the
# scripts share, the machine part of meta.env and the report step.
#
# The sourcing script runs under `set -euo pipefail` and provides:
#   BENCH_DIR, REPO_DIR   bench/ and the repository root
#   BENCH_LOG_TAG         prefix of log lines: [<tag> HH:MM:SS] (bench, proxy-bench, instructions)
#   SKIP_BUILD, KEEP      0/1 from --skip-build, --keep
#   PROXY_THREADS, UPSTREAM_THREADS, AUDIT_MODE
#   UPSTREAM_PORT, POSTERN_PORT, ADMIN_PORT   before start_upstream / write_postern_config
#   CMDLINE, OUT          for write_meta_common / write_report

log() { printf '[%s %s] %s\n' "$BENCH_LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# quote_cmdline NAME ARG... -> "NAME ARG..." with every argument shell-quoted (for the report).
quote_cmdline() {
  local line="$1" arg
  shift
  for arg in "$@"; do line+=" $(printf '%q' "$arg")"; done
  printf '%s\n' "$line"
}

# require_numbers SCRIPT VALUE... -> exit 2 unless every VALUE is a non-negative integer.
require_numbers() {
  local script="$1" n
  shift
  for n in "$@"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "$script: '$n' is not a number" >&2; exit 2; }
  done
}

# apt_install PACKAGE... -> installs these missing Debian packages with apt-get when running as
# root, else dies naming them; nothing to do without arguments.
apt_install() {
  [[ $# -gt 0 ]] || return 0
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing missing tools with apt-get: $* (Debian packages)"
    apt-get update -qq >&2 || log "apt-get update failed; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"
  else
    die "missing $*; install them (Debian: apt-get install -y $*) and re-run"
  fi
}

# ---------------------------------------------------------------- build, binaries
# build_release HINT CARGO_ARGS... -> cargo build --release CARGO_ARGS (unless --skip-build);
# HINT goes into the error message when the build fails.
build_release() {
  local hint="$1"
  shift
  [[ $SKIP_BUILD -eq 1 ]] && return 0
  command -v cargo >/dev/null || die "cargo is needed to build Postern"
  log "building: cargo build --release $*"
  (cd "$REPO_DIR" && cargo build --release --quiet "$@") >&2 \
    || die "cargo build failed ($hint)"
}

# locate_release_bins -> TARGET_DIR (CARGO_TARGET_DIR, else cargo metadata, else REPO_DIR/target),
# POSTERN_BIN, UPSTREAM_BIN. The caller checks that the binaries it needs are there.
locate_release_bins() {
  TARGET_DIR="${CARGO_TARGET_DIR:-}"
  if [[ -z "$TARGET_DIR" ]]; then
    TARGET_DIR="$(cd "$REPO_DIR" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' || echo "$REPO_DIR/target")"
  fi
  POSTERN_BIN="$TARGET_DIR/release/postern"
  UPSTREAM_BIN="$TARGET_DIR/release/postern-bench-upstream"
}

# pgo_paths -> HOST (rustc's host triple), PGO_DIR (TARGET_DIR/pgo), PGO_BIN and BOLT_BIN, where
# bench/pgo.sh puts the optimized binary (and with --bolt, that binary laid out again by BOLT).
# After locate_release_bins.
pgo_paths() {
  HOST="$(rustc -vV | awk '/^host:/ { print $2 }')"
  PGO_DIR="$TARGET_DIR/pgo"
  PGO_BIN="$PGO_DIR/optimized/$HOST/release/postern"
  BOLT_BIN="$PGO_DIR/bolted/postern"
}

# ---------------------------------------------------------------- temp dir, cleanup
# make_workdir NAME -> WORK (a new ${TMPDIR:-/tmp}/NAME.XXXXXX), PIDS=() and the traps: on exit
# every PID in PIDS is killed (TERM, then KILL) and WORK removed (kept with --keep).
make_workdir() {
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  PIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
# forget_pid PID -> PIDS without PID (a process already stopped and waited for: cleanup must not
# signal its number again, which may belong to another process by then).
forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pid in "${PIDS[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $KEEP -eq 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}

# free_ports N -> N distinct free loopback ports on one line (all bound at once while they are
# picked, so no two are the same; each is free again when this returns). The sockets are closed
# before the line is printed: callers read it through a process substitution, which does not
# wait for python to exit, and a port still held then made the next bind fail (EADDRINUSE).
free_ports() {
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
ports = [s.getsockname()[1] for s in socks]
for s in socks:
    s.close()
print(" ".join(map(str, ports)), flush=True)
' "$1"
}
wait_port() { # PORT PID NAME [TRIES of 0.1 s, default 100]
  local i
  for i in $(seq 1 "${4:-100}"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || die "$3 exited at start-up (see $WORK/$3.log)"
    sleep 0.1
  done
  die "$3 did not listen on 127.0.0.1:$1 within $(( ${4:-100} / 10 )) s"
}
# wait_http PORT PID NAME [TRIES of 0.1 s, default 100]: until a plain-HTTP request there gets a
# status line (any status). Postern listens from the start of its start-up and answers once it
# is done: a connection that succeeds does not mean it serves yet.
wait_http() {
  local i line
  for i in $(seq 1 "${4:-100}"); do
    line="$( (exec 3<>"/dev/tcp/127.0.0.1/$1" \
      && printf 'GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n' >&3 \
      && timeout 2 head -c 8 <&3) 2>/dev/null || true)"
    if [[ "$line" == HTTP/1.* ]]; then return 0; fi
    kill -0 "$2" 2>/dev/null || die "$3 exited at start-up (see $WORK/$3.log)"
    sleep 0.1
  done
  die "$3 did not answer HTTP on 127.0.0.1:$1 within $(( ${4:-100} / 10 )) s"
}
status_kb() { # PID FIELD -> kB
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# ---------------------------------------------------------------- upstream, Postern
# start_upstream -> UPSTREAM_PID: postern-bench-upstream on UPSTREAM_PORT, listening; with
# UPSTREAM_TLS=1 over HTTPS, its throwaway CA's certificate in UPSTREAM_CA (WORK/upstream/ca.pem),
# and with UPSTREAM_H2=1 as well offering HTTP/2 first by ALPN.
UPSTREAM_TLS=0
UPSTREAM_H2=0
UPSTREAM_SCHEME=http
UPSTREAM_CA=""
# An optional NAME (default upstream) names its log, WORK/NAME.log, and its CA's directory.
start_upstream() {
  local name="${1:-upstream}" tls_args=()
  if [[ "$UPSTREAM_TLS" -eq 1 ]]; then
    UPSTREAM_SCHEME=https
    UPSTREAM_CA="$WORK/$name/ca.pem"
    mkdir -p "$WORK/$name"
    tls_args=(--tls-dir "$WORK/$name")
    [[ "$UPSTREAM_H2" -eq 1 ]] && tls_args+=(--h2)
  else
    UPSTREAM_SCHEME=http
  fi
  "$UPSTREAM_BIN" --listen "127.0.0.1:$UPSTREAM_PORT" --threads "$UPSTREAM_THREADS" "${tls_args[@]}" >"$WORK/$name.log" 2>&1 &
  UPSTREAM_PID=$!
  PIDS+=("$UPSTREAM_PID")
  wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" "$name"
}

# write_postern_config WRITER CREDENTIAL_LINE [SECTIONS] [HOST_LINES] [EXTRA_LINES]
# -> TOKEN, TOKEN_SHA (a new caller token for caller "bench"), WORK/postern/vendor-key and
# WORK/postern/postern.toml, checked with `postern check`. The config: [gateway] on POSTERN_PORT,
# caller "bench", integration "bench" -> the upstream (plaintext, or HTTPS trusting UPSTREAM_CA
# when UPSTREAM_TLS=1; loopback allowed) with
# CREDENTIAL_LINE, audit = AUDIT_MODE and a rate limit that never triggers, and the grant.
# Optional TOML lines: SECTIONS after [gateway], HOST_LINES after the integration's upstream,
# EXTRA_LINES after its audit line (empty ones are left out).
write_postern_config() {
  local writer="$1" credential_line="$2" sections="${3:-}" host_lines="${4:-}" extra_lines="${5:-}"
  mkdir -p "$WORK/postern"
  local token_json
  token_json="$("$POSTERN_BIN" callers token bench --json)"
  TOKEN="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["token"])' "$token_json")"
  TOKEN_SHA="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["token_sha256"])' "$token_json")"
  (umask 077 && printf 'sk_bench_%s' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$WORK/postern/vendor-key")
  {
    cat <<EOF
# Written by $writer.
[gateway]
listen = "127.0.0.1:$POSTERN_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
data_dir = "data"
workers = $PROXY_THREADS

EOF
    [[ -z "$sections" ]] || printf '%s\n\n' "$sections"
    cat <<EOF
[[callers]]
name = "bench"
token_sha256 = "$TOKEN_SHA"

[[integrations]]
name = "bench"
vendor = "postern-bench-upstream"
owner = "bench@example.com"
upstream = "$UPSTREAM_SCHEME://127.0.0.1:$UPSTREAM_PORT"
EOF
    [[ -z "$host_lines" ]] || printf '%s\n' "$host_lines"
    if [[ "$UPSTREAM_TLS" -eq 1 ]]; then
      printf 'ca_file = "%s"\n' "$UPSTREAM_CA"
    else
      echo "allow_plaintext = true"
    fi
    cat <<EOF
allow_private_networks = ["127.0.0.1/32"]
$credential_line
audit = "${AUDIT_MODE:-required}"
EOF
    [[ -z "$extra_lines" ]] || printf '%s\n' "$extra_lines"
    cat <<EOF
rate_limit = { requests_per_second = 10000000, burst = 10000000 }
operations = [
  { id = "create_charge", method = "POST", path = "/v1/charges" },
  { id = "get_charge",    method = "GET",  path = "/v1/charges/{id}" },
]

[[grants]]
caller = "bench"
integration = "bench"
operations = ["create_charge", "get_charge"]
EOF
  } >"$WORK/postern/postern.toml"
  "$POSTERN_BIN" check --config "$WORK/postern/postern.toml" >"$WORK/postern-check.log" 2>&1 \
    || { cat "$WORK/postern-check.log" >&2; die "postern check rejected the bench config"; }
}

# start_postern -> POSTERN_PID: `postern serve` on the config above (log level POSTERN_LOG, default
# info; stderr appended to WORK/postern.log), serving. Dumpable (POSTERN_DUMPABLE=1), so the
# profiles (--perf, --syscalls) can attach to it as a user other than root; it holds no secret.
start_postern() {
  POSTERN_LOG="${POSTERN_LOG:-info}" POSTERN_DUMPABLE=1 \
    "$POSTERN_BIN" serve --config "$WORK/postern/postern.toml" >>"$WORK/postern.log" 2>&1 &
  POSTERN_PID=$!
  PIDS+=("$POSTERN_PID")
  wait_http "$POSTERN_PORT" "$POSTERN_PID" postern
}

# ---------------------------------------------------------------- meta.env, report
# write_meta_common -> the run and machine lines of meta.env (to stdout); the caller adds its own.
write_meta_common() {
  echo "cmdline=$CMDLINE"
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git=$(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO_DIR" && [[ -n "$(git status --porcelain 2>/dev/null | head -1)" ]] && echo ' (uncommitted changes)')"
  echo "cpus=$(nproc)"
  echo "cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "kernel=$(uname -r)"
  echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
}

# write_report REPORTER -> OUT from `python3 bench/REPORTER WORK`, also printed on stdout.
write_report() {
  mkdir -p "$(dirname "$OUT")"
  python3 "$BENCH_DIR/$1" "$WORK" >"$OUT.tmp" && mv "$OUT.tmp" "$OUT"
  cat "$OUT"
  log "report written to $OUT"
}
