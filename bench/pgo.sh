#!/usr/bin/env bash
# Builds `postern` with profile-guided optimization (PGO): an instrumented build serves the
# bench's load, and its profile steers the optimizing build. See bench/README.md and
# docs/BENCHMARKS.md. Run `bench/pgo.sh --help` for options.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_LOG_TAG=pgo
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

TRAIN_SECONDS=8
INTERCEPT_HOST="api.bench.test"
PROXY_THREADS="$(nproc)"
UPSTREAM_THREADS=1
SKIP_BUILD=0
KEEP=0

usage() {
  cat <<EOF
Usage: bench/pgo.sh [options]

Builds the \`postern\` binary with profile-guided optimization, in three steps (about twice a
cold release build; ~13 minutes on 2 cores from cold, ~5–8 on later runs, as the optimizing
build always rebuilds every crate for the new profile):
  1. an instrumented build (rustc -Cprofile-generate) into TARGET/pgo/instrumented;
  2. training: that binary serves the bench's load (bench/run.sh's config and upstream: caller
     token, grant, Cedar, rate limit, bearer injection, events, audit log, detector; nproc
     workers) with wrk, GET and a small JSON POST, then calls through the forward proxy
     (bench/proxy.sh's intercept variant: CONNECT, TLS from Postern's CA, the same pipeline;
     with postern-bench-load, keep-alive and a TLS handshake per call), once with
     audit = "best_effort" and once with "required"; it is stopped with SIGTERM so its
     profile is written, and the profiles of these two \`postern serve\` runs are merged
     with llvm-profdata into TARGET/pgo/postern.profdata;
  3. the optimizing build (rustc -Cprofile-use) into TARGET/pgo/optimized.
Prints the optimized binary's path on stdout: TARGET/pgo/optimized/<host triple>/release/postern.
TARGET is CARGO_TARGET_DIR (else cargo metadata's target directory). Both builds pass
--target <host triple>, so build scripts and proc macros are neither instrumented nor profiled.

The optimized binary is built from the same source as the release build; what changes is code
layout and inlining. Code the training load does not reach (TLS to vendors, h2, opaque
tunnels, payload scanning, ...) is laid out as cold, so only the bench's own path is measured faster; bench/run.sh
--targets "... pgo" compares it with the plain release build in one run. RUSTFLAGS (with the
profile flag added) replaces any build.rustflags of a cargo config, as for any build that sets it.

Options:
  --train-seconds S   seconds of load per audit mode (default $TRAIN_SECONDS; GET for S, POST for
                      S/2, intercepted keep-alive calls for S/2, a handshake per call for S/4)
  --skip-build        skip the release build of postern-bench-upstream (the PGO builds always run)
  --keep              keep the temp dir (configs, logs)
  -h, --help          this help

Needs: cargo, wrk, python3, and llvm-profdata matching rustc's LLVM (the rustup component
llvm-tools, added with rustup when missing).
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --train-seconds) TRAIN_SECONDS="$2"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "pgo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
require_numbers pgo.sh "$TRAIN_SECONDS"
[[ "$TRAIN_SECONDS" -ge 2 ]] || { echo "pgo.sh: --train-seconds is at least 2" >&2; exit 2; }
# cargo reads CARGO_ENCODED_RUSTFLAGS before RUSTFLAGS: the profile flags would be dropped.
[[ -z "${CARGO_ENCODED_RUSTFLAGS:-}" ]] || die "CARGO_ENCODED_RUSTFLAGS is set; unset it (pgo.sh passes its flags in RUSTFLAGS)"

# ---------------------------------------------------------------- tools
command -v cargo >/dev/null || die "cargo is needed to build Postern"
command -v python3 >/dev/null || die "python3 is needed"
command -v wrk >/dev/null || apt_install wrk
build_release "the upstream and load generator for training" -p postern-bench-upstream --bins
locate_release_bins
pgo_paths
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
if [[ ! -x "$PROFDATA" ]]; then
  command -v rustup >/dev/null || die "llvm-profdata not found at $PROFDATA and rustup is missing (install the llvm-tools component of this toolchain)"
  log "adding the rustup component llvm-tools (llvm-profdata)"
  rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed"
  [[ -x "$PROFDATA" ]] || die "llvm-profdata still not found at $PROFDATA"
fi

LOAD_BIN="$TARGET_DIR/release/postern-bench-load"
[[ -x "$UPSTREAM_BIN" && -x "$LOAD_BIN" ]] || die "$UPSTREAM_BIN or $LOAD_BIN not found (drop --skip-build)"
RAW_DIR="$PGO_DIR/raw"
PROFILE="$PGO_DIR/postern.profdata"
INSTRUMENTED="$PGO_DIR/instrumented/$HOST/release/postern"

# pgo_build STAGE RUSTFLAG -> cargo build --release -p postern for the host triple into
# PGO_DIR/STAGE, with RUSTFLAG added to RUSTFLAGS.
pgo_build() {
  log "building ($1): cargo build --release -p postern --target $HOST, RUSTFLAGS += $2"
  (cd "$REPO_DIR" && RUSTFLAGS="${RUSTFLAGS:-} $2" cargo build --release --quiet -p postern \
    --target "$HOST" --target-dir "$PGO_DIR/$1") >&2 || die "the $1 build failed"
}

# ---------------------------------------------------------------- 1. instrumented build
rm -rf "$RAW_DIR"
mkdir -p "$RAW_DIR"
pgo_build instrumented "-Cprofile-generate=$RAW_DIR"

# ---------------------------------------------------------------- 2. training
make_workdir postern-pgo
POSTERN_BIN="$INSTRUMENTED"
read -r UPSTREAM_PORT < <(free_ports 1)
start_upstream
for AUDIT_MODE in best_effort required; do
  # The upstream is listening by now, so these cannot be its port.
  read -r POSTERN_PORT ADMIN_PORT < <(free_ports 2)
  rm -rf "$WORK/postern"
  # bench/run.sh's integration, plus bench/proxy.sh's interception of $INTERCEPT_HOST:443.
  write_postern_config bench/pgo.sh 'credential = { kind = "bearer", from_file = "vendor-key" }' \
    "$(printf '[proxy]\nallowed_ports = [443]\nallow_private_networks = ["127.0.0.1/32"]')" \
    "hosts = [\"$INTERCEPT_HOST\"]"
  "$POSTERN_BIN" ca export --config "$WORK/postern/postern.toml" >"$WORK/ca.pem" 2>"$WORK/ca-export.log" \
    || die "postern ca export failed (see $WORK/ca-export.log)"
  # Only the serving runs' profiles are merged (`callers token` and `check` above write theirs
  # under the default name in the same directory).
  LLVM_PROFILE_FILE="$RAW_DIR/serve-%p-%m.profraw" start_postern
  url="http://127.0.0.1:$POSTERN_PORT/bench/v1/charges"
  log "training ($AUDIT_MODE): GET ${TRAIN_SECONDS}s, POST $((TRAIN_SECONDS / 2))s, intercepted $((TRAIN_SECONDS / 2))s + $((TRAIN_SECONDS / 4))s with a handshake per call"
  wrk -t2 -c64 -d"${TRAIN_SECONDS}s" -H "Authorization: Bearer $TOKEN" "$url/ch_123" >"$WORK/wrk-$AUDIT_MODE-get.txt" 2>&1 \
    || die "wrk failed (see $WORK/wrk-$AUDIT_MODE-get.txt)"
  cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"amount":2000,"currency":"usd","source":"tok_visa","description":"pgo training"}'
wrk.headers["Content-Type"] = "application/json"
EOF
  wrk -t2 -c64 -d"$((TRAIN_SECONDS / 2))s" -s "$WORK/post.lua" -H "Authorization: Bearer $TOKEN" "$url" \
    >"$WORK/wrk-$AUDIT_MODE-post.txt" 2>&1 || die "wrk failed (see $WORK/wrk-$AUDIT_MODE-post.txt)"
  grep -q -E 'Non-2xx|Socket errors' "$WORK"/wrk-"$AUDIT_MODE"-*.txt \
    && die "training calls failed (see $WORK/wrk-$AUDIT_MODE-*.txt)"
  for fresh in "" --fresh; do
    seconds=$((TRAIN_SECONDS / 2)); connections=64
    [[ -n "$fresh" ]] && { seconds=$((TRAIN_SECONDS / 4)); connections=16; }
    out="$WORK/load-$AUDIT_MODE-intercept${fresh}.json"
    timeout $((seconds + 60)) "$LOAD_BIN" intercept --target "127.0.0.1:$POSTERN_PORT" \
      --host "$INTERCEPT_HOST:443" --ca "$WORK/ca.pem" --token "$TOKEN" --connections "$connections" \
      --duration "$seconds" --warmup 0 --expect '"object":"charge"' --strict --json $fresh \
      >"$out" 2>"$out.stderr" || die "intercepted training calls failed (see $out.stderr)"
  done
  # SIGTERM: a graceful stop returns from main, which is when the profile is written.
  kill -TERM "$POSTERN_PID" || die "the instrumented postern exited during training (see $WORK/postern.log)"
  wait "$POSTERN_PID" || die "the instrumented postern did not stop cleanly (see $WORK/postern.log)"
  forget_pid "$POSTERN_PID"
done
served="$(compgen -G "$RAW_DIR/serve-*.profraw" | wc -l)"
[[ "$served" -eq 2 ]] || die "expected 2 profiles from the training runs in $RAW_DIR, found $served"

log "merging the $served training profiles into $PROFILE"
"$PROFDATA" merge -o "$PROFILE" "$RAW_DIR"/serve-*.profraw >&2 || die "llvm-profdata merge failed"

# ---------------------------------------------------------------- 3. optimizing build
pgo_build optimized "-Cprofile-use=$PROFILE"
[[ -x "$PGO_BIN" ]] || die "$PGO_BIN was not built"
log "PGO build: $PGO_BIN"
echo "$PGO_BIN"
