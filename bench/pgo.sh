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
BOLT=0

usage() {
  cat <<EOF
Usage: bench/pgo.sh [options]

Builds the \`postern\` binary with profile-guided optimization, in three steps, four with --bolt (about twice a
cold release build; ~13 minutes on 2 cores from cold, ~5–8 on later runs, as the optimizing
build always rebuilds every crate for the new profile):
  1. an instrumented build (rustc -Cprofile-generate) into TARGET/pgo/instrumented;
  2. training: that binary serves the bench's load (bench/run.sh's config and upstream: caller
     token, grant, Cedar, rate limit, bearer injection, events, audit log, detector; nproc
     workers) with wrk, GET and a small JSON POST, then calls through the forward proxy
     (bench/proxy.sh's intercept variant: CONNECT, TLS from Postern's CA, the same pipeline;
     with postern-bench-load, keep-alive and a TLS handshake per call), four times: with
     audit = "best_effort" and with "required" to the plain-HTTP upstream, with
     "required" to the same upstream over HTTPS (Postern's default for vendors: TLS,
     verified against the upstream's throwaway CA), and with "best_effort" to an HTTPS
     upstream that offers HTTP/2 (bench/run.sh --upstream-h2); it is stopped with SIGTERM so its
     profile is written, and the profiles of these four \`postern serve\` runs are merged
     with llvm-profdata into TARGET/pgo/postern.profdata;
  3. the optimizing build (rustc -Cprofile-use) into TARGET/pgo/optimized;
  4. with --bolt, a post-link pass: BOLT (llvm-bolt) instruments the optimized binary, the
     same training runs it, and BOLT lays out its code again from that profile (hot paths
     together, cold blocks split off) into TARGET/pgo/bolted/postern.
Prints the final binary's path on stdout: TARGET/pgo/optimized/<host triple>/release/postern,
or with --bolt TARGET/pgo/bolted/postern (bench/run.sh --pgo-bolt runs that one as its pgo target).
TARGET is CARGO_TARGET_DIR (else cargo metadata's target directory). Both builds pass
--target <host triple>, so build scripts and proc macros are neither instrumented nor profiled.

The optimized binary is built from the same source as the release build; what changes is code
layout and inlining. Code the training load does not reach (h2 from callers, opaque tunnels, payload
scanning, OAuth2, ...) is laid out as cold, so only the bench's own path is measured faster; bench/run.sh
--targets "... pgo" compares it with the plain release build in one run. RUSTFLAGS (with the
profile flag added) replaces any build.rustflags of a cargo config, as for any build that sets it.

Options:
  --train-seconds S   seconds of load per pass (default $TRAIN_SECONDS; GET for S, POST for
                      S/2, intercepted keep-alive calls for S/2, a handshake per call for S/4)
  --skip-build        skip the release build of postern-bench-upstream (the PGO builds always run)
  --bolt              also step 4 (adds -Clink-arg=-Wl,--emit-relocs to step 3, which BOLT needs
                      to move functions; llvm-bolt and merge-fdata from Debian's bolt-N package,
                      installed with apt-get when missing and running as root; ~1–2 minutes more)
  --keep              keep the temp dir (configs, logs)
  -h, --help          this help

Needs: cargo, wrk, python3, and llvm-profdata matching rustc's LLVM (the rustup component
llvm-tools, added with rustup when missing); with --bolt, llvm-bolt and merge-fdata.
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --train-seconds) TRAIN_SECONDS="$2"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --keep) KEEP=1; shift ;;
    --bolt) BOLT=1; shift ;;
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
# A BOLT binary of an earlier PGO build must not outlive it (run.sh --pgo-bolt --skip-build).
rm -f "$BOLT_BIN"
mkdir -p "$RAW_DIR"
pgo_build instrumented "-Cprofile-generate=$RAW_DIR"

# ---------------------------------------------------------------- 2. training
make_workdir postern-pgo
read -r PLAIN_PORT TLS_PORT H2_PORT < <(free_ports 3)
# Three upstreams: plain HTTP (bench/run.sh's default), HTTPS (Postern's default for vendors:
# TLS, verified against the upstream's throwaway CA), and HTTPS offering HTTP/2 first.
UPSTREAM_PORT=$TLS_PORT UPSTREAM_TLS=1 start_upstream upstream-tls
TLS_CA="$UPSTREAM_CA"
UPSTREAM_PORT=$H2_PORT UPSTREAM_TLS=1 UPSTREAM_H2=1 start_upstream upstream-h2
H2_CA="$UPSTREAM_CA"
UPSTREAM_PORT=$PLAIN_PORT start_upstream

# train BIN [PROFILE_FILE] -> the training load, once per pass (audit mode and upstream
# scheme), each on a fresh
# `postern serve` of BIN (with LLVM_PROFILE_FILE=PROFILE_FILE when given); SERVE_PIDS gets the
# pids of those serve runs, whose profiles are the ones to merge.
train() {
  local profile_file="${2:-}"
  POSTERN_BIN="$1"
  SERVE_PIDS=()
  local pass label
  for pass in best_effort:http required:http required:https best_effort:h2; do
    AUDIT_MODE="${pass%%:*}"
    label="${pass/:/-}"
    case "${pass#*:}" in
      https) UPSTREAM_TLS=1 UPSTREAM_SCHEME=https UPSTREAM_PORT=$TLS_PORT UPSTREAM_CA="$TLS_CA" ;;
      h2) UPSTREAM_TLS=1 UPSTREAM_SCHEME=https UPSTREAM_PORT=$H2_PORT UPSTREAM_CA="$H2_CA" ;;
      *) UPSTREAM_TLS=0 UPSTREAM_SCHEME=http UPSTREAM_PORT=$PLAIN_PORT ;;
    esac
    # The upstream is listening by now, so these cannot be its port.
    read -r POSTERN_PORT ADMIN_PORT < <(free_ports 2)
    rm -rf "$WORK/postern"
    # bench/run.sh's integration, plus bench/proxy.sh's interception of $INTERCEPT_HOST:443.
    write_postern_config bench/pgo.sh 'credential = { kind = "bearer", from_file = "vendor-key" }' \
      "$(printf '[proxy]\nallowed_ports = [443]\nallow_private_networks = ["127.0.0.1/32"]')" \
      "hosts = [\"$INTERCEPT_HOST\"]"
    "$POSTERN_BIN" ca export --config "$WORK/postern/postern.toml" >"$WORK/ca.pem" 2>"$WORK/ca-export.log" \
      || die "postern ca export failed (see $WORK/ca-export.log)"
    # Only the serving runs' profiles are merged (`callers token` and `ca export` above write
    # theirs too: PGO's under the default name in the same directory, BOLT's under their pids).
    if [[ -n "$profile_file" ]]; then LLVM_PROFILE_FILE="$profile_file" start_postern; else start_postern; fi
    SERVE_PIDS+=("$POSTERN_PID")
    url="http://127.0.0.1:$POSTERN_PORT/bench/v1/charges"
    log "training ($AUDIT_MODE, ${pass#*:} upstream): GET ${TRAIN_SECONDS}s, POST $((TRAIN_SECONDS / 2))s, intercepted $((TRAIN_SECONDS / 2))s + $((TRAIN_SECONDS / 4))s with a handshake per call"
    wrk -t2 -c64 -d"${TRAIN_SECONDS}s" -H "Authorization: Bearer $TOKEN" "$url/ch_123" >"$WORK/wrk-$label-get.txt" 2>&1 \
      || die "wrk failed (see $WORK/wrk-$label-get.txt)"
    cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"amount":2000,"currency":"usd","source":"tok_visa","description":"pgo training"}'
wrk.headers["Content-Type"] = "application/json"
EOF
    wrk -t2 -c64 -d"$((TRAIN_SECONDS / 2))s" -s "$WORK/post.lua" -H "Authorization: Bearer $TOKEN" "$url" \
      >"$WORK/wrk-$label-post.txt" 2>&1 || die "wrk failed (see $WORK/wrk-$label-post.txt)"
    grep -q -E 'Non-2xx|Socket errors' "$WORK"/wrk-"$label"-*.txt \
      && die "training calls failed (see $WORK/wrk-$label-*.txt)"
    for fresh in "" --fresh; do
      seconds=$((TRAIN_SECONDS / 2)); connections=64
      [[ -n "$fresh" ]] && { seconds=$((TRAIN_SECONDS / 4)); connections=16; }
      out="$WORK/load-$label-intercept${fresh}.json"
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
}

train "$INSTRUMENTED" "$RAW_DIR/serve-%p-%m.profraw"
served="$(compgen -G "$RAW_DIR/serve-*.profraw" | wc -l)"
[[ "$served" -eq 4 ]] || die "expected 4 profiles from the training runs in $RAW_DIR, found $served"

log "merging the $served training profiles into $PROFILE"
"$PROFDATA" merge -o "$PROFILE" "$RAW_DIR"/serve-*.profraw >&2 || die "llvm-profdata merge failed"

# ---------------------------------------------------------------- 3. optimizing build
# BOLT moves functions only in a binary linked with its relocations kept.
RELOCS=""
[[ $BOLT -eq 1 ]] && RELOCS=" -Clink-arg=-Wl,--emit-relocs"
pgo_build optimized "-Cprofile-use=$PROFILE$RELOCS"
[[ -x "$PGO_BIN" ]] || die "$PGO_BIN was not built"
log "PGO build: $PGO_BIN"
if [[ $BOLT -eq 0 ]]; then
  echo "$PGO_BIN"
  exit 0
fi

# ---------------------------------------------------------------- 4. BOLT
# llvm-bolt and merge-fdata: on PATH, else the newest Debian bolt-N's, else installed.
bolt_tool() { # NAME -> its path, or nothing
  command -v "$1" 2>/dev/null && return 0
  compgen -G "/usr/lib/llvm-*/bin/$1" | sort -t- -k2 -n | tail -1 || true
}
if [[ -z "$(bolt_tool llvm-bolt)" ]]; then
  package="$(apt-cache search --names-only '^bolt-[0-9]+$' 2>/dev/null | awk '{ print $1 }' | sort -t- -k2 -n | tail -1 || true)"
  [[ -n "$package" ]] || die "llvm-bolt not found, and apt has no bolt-N package (install LLVM's BOLT)"
  apt_install "$package"
fi
LLVM_BOLT="$(bolt_tool llvm-bolt)"
MERGE_FDATA="$(bolt_tool merge-fdata)"
[[ -x "$LLVM_BOLT" && -x "$MERGE_FDATA" ]] || die "llvm-bolt or merge-fdata not found after installing BOLT"
BOLT_DIR="$PGO_DIR/bolt"
rm -rf "$BOLT_DIR" && mkdir -p "$BOLT_DIR" "$(dirname "$BOLT_BIN")"
log "BOLT ($("$LLVM_BOLT" --version | awk '/LLVM version/ { print $NF }')): instrumenting $PGO_BIN"
"$LLVM_BOLT" "$PGO_BIN" -instrument -o "$BOLT_DIR/postern.instrumented" \
  --instrumentation-file="$BOLT_DIR/profile" --instrumentation-file-append-pid \
  >"$BOLT_DIR/instrument.log" 2>&1 || die "llvm-bolt -instrument failed (see $BOLT_DIR/instrument.log)"
train "$BOLT_DIR/postern.instrumented"
profiles=()
for pid in "${SERVE_PIDS[@]}"; do
  [[ -s "$BOLT_DIR/profile.$pid.fdata" ]] || die "the BOLT training run $pid wrote no profile ($BOLT_DIR/profile.$pid.fdata)"
  profiles+=("$BOLT_DIR/profile.$pid.fdata")
done
"$MERGE_FDATA" "${profiles[@]}" >"$BOLT_DIR/postern.fdata" 2>"$BOLT_DIR/merge.log" \
  || die "merge-fdata failed (see $BOLT_DIR/merge.log)"
log "BOLT: laying out $PGO_BIN again from the ${#profiles[@]} training profiles"
"$LLVM_BOLT" "$PGO_BIN" -o "$BOLT_BIN" --data="$BOLT_DIR/postern.fdata" \
  --reorder-blocks=ext-tsp --reorder-functions=cdsort --split-functions --split-all-cold --split-eh \
  --icf=all --use-gnu-stack --dyno-stats >"$BOLT_DIR/optimize.log" 2>&1 \
  || die "llvm-bolt failed (see $BOLT_DIR/optimize.log)"
log "PGO + BOLT build: $BOLT_BIN"
echo "$BOLT_BIN"
