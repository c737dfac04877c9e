#!/usr/bin/env bash
# Instructions per forwarded call, counted by callgrind: the same figure on a busy shared machine
# as on an idle one, so a change to the per-call work shows even when req/s are noise.
# See bench/README.md. Run `bench/instructions.sh --help` for options.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_LOG_TAG=instructions
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
CMDLINE="$(quote_cmdline bench/instructions.sh "$@")"

SMALL=500
LARGE=2500
AUDIT_MODE=best_effort
TARGETS="postern floor"
SKIP_BUILD=0
KEEP=0
PROXY_THREADS=1
UPSTREAM_THREADS=1

usage() {
  cat <<EOF
Usage: bench/instructions.sh [options]

Runs each target under valgrind --tool=callgrind twice, serving --small and then --large calls
(GET /bench/v1/charges/ch_123 over 8 keep-alive connections from postern-bench-load), and prints
(total instructions of the large run - those of the small run) / (large - small): what one more
forwarded call costs the proxy process in user space, start-up excluded. The same difference
of the calls into the allocators (mimalloc's and libc's, from every thread) gives the
allocations per call. For postern it then maps where those instructions go: the same
difference of each phase's inclusive count (with what it calls), from reading the caller's
request to the audit sequencer thread (callgrind runs one thread at a time, so the calls per
audit commit, and with them the sequencer's share, differ from a real run). Targets:
  postern  the full pipeline (one worker; caller token, grant, Cedar, rate limit, bearer
           injection, event, audit entries, detector), with --audit MODE
  floor    the bare hyper proxy (examples/minproxy.rs, one thread)
valgrind has no SHA-NI: SHA-256 runs in software under it, so hashing (audit leaf and node
hashes, the target HMAC, the caller token) counts for far more than on the CPU (more than a
third of Postern's count). Postern's totals vary by up to ~4 % from run to run (the audit
sequencer's batches, and so its tree hashes, follow timing): compare ranges of several runs.

Options:
  --small N        calls in the short run (default $SMALL)
  --large N        calls in the long run (default $LARGE)
  --audit MODE     required or best_effort (default $AUDIT_MODE)
  --targets LIST   subset of "postern floor" (default "$TARGETS")
  --skip-build     use the existing release binaries
  --keep           keep the temp dir (configs, logs, callgrind files)
  -h, --help       this help

Needs: cargo, valgrind (installed with apt-get when missing and running as root), python3.
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --small) SMALL="$2"; shift 2 ;;
    --large) LARGE="$2"; shift 2 ;;
    --audit) AUDIT_MODE="$2"; shift 2 ;;
    --targets) TARGETS="$2"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "instructions.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
require_numbers instructions.sh "$SMALL" "$LARGE"
[[ "$LARGE" -gt "$SMALL" && "$SMALL" -ge 1 ]] || { echo "instructions.sh: need 1 <= --small < --large" >&2; exit 2; }
[[ "$AUDIT_MODE" == required || "$AUDIT_MODE" == best_effort ]] || { echo "instructions.sh: --audit is required or best_effort" >&2; exit 2; }
for target in $TARGETS; do
  [[ "$target" == postern || "$target" == floor ]] || { echo "instructions.sh: unknown target $target (postern, floor)" >&2; exit 2; }
done

command -v valgrind >/dev/null || apt_install valgrind

build_release "--skip-build uses the last release binaries" \
  -p postern -p postern-bench-upstream --bins --example minproxy
locate_release_bins
LOAD_BIN="$TARGET_DIR/release/postern-bench-load"
FLOOR_BIN="$TARGET_DIR/release/examples/minproxy"
for bin in "$POSTERN_BIN" "$UPSTREAM_BIN" "$LOAD_BIN" "$FLOOR_BIN"; do
  [[ -x "$bin" ]] || die "$bin not found (drop --skip-build?)"
done

make_workdir postern-instructions
read -r UPSTREAM_PORT POSTERN_PORT ADMIN_PORT < <(free_ports 3)
start_upstream
write_postern_config bench/instructions.sh 'credential = { kind = "bearer", from_file = "vendor-key" }'

# count TARGET CALLS -> TOTAL (instructions of the proxy process)
count() {
  local target="$1" calls="$2" out="$WORK/callgrind.$1.$2" pid
  rm -rf "$WORK/postern/data"
  case "$target" in
    postern)
      (cd "$WORK/postern" && POSTERN_LOG=warn exec valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$POSTERN_BIN" serve --config postern.toml) >"$WORK/valgrind.$target.$calls.log" 2>&1 &
      ;;
    floor)
      valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$FLOOR_BIN" tpc "127.0.0.1:$POSTERN_PORT" "http://127.0.0.1:$UPSTREAM_PORT" 1 \
        >"$WORK/valgrind.$target.$calls.log" 2>&1 &
      ;;
  esac
  pid=$!
  PIDS+=("$pid")
  wait_http "$POSTERN_PORT" "$pid" "valgrind.$target.$calls" 1200
  "$LOAD_BIN" path --target "127.0.0.1:$POSTERN_PORT" --token "$TOKEN" --connections 8 --threads 1 \
    --requests "$calls" --timeout 60 --strict >"$WORK/load.$target.$calls.log" 2>&1 \
    || die "calls through $target failed (see $WORK/load.$target.$calls.log)"
  sleep 1
  # Postern shuts down gracefully on SIGINT; the floor has no handler and stops on SIGTERM.
  if [[ "$target" == postern ]]; then kill -INT "$pid"; else kill -TERM "$pid"; fi
  wait "$pid" 2>/dev/null || true
  [[ -s "$out" ]] || die "callgrind wrote no profile for $target (see $WORK/valgrind.$target.$calls.log)"
  callgrind_annotate --threshold=100 --inclusive=yes "$out" >"$out.inclusive" 2>/dev/null \
    || die "callgrind_annotate failed on $out"
  TOTAL="$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}' "$out.inclusive")"
  ALLOCS="$(python3 - "$out" <<'PY'
import re, sys
# Calls into an allocator from outside it, in every thread of the process: mimalloc's aligned
# entry points (what Rust's GlobalAlloc calls in Postern) and libc's (the floor, C code).
ENTRY = {"mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned", "malloc", "calloc", "realloc"}
names, total, caller, callee = {}, 0, "", None
pattern = re.compile(r"(c?fn)=\((\d+)\)(?: (.*))?$")
for line in open(sys.argv[1], errors="replace"):
    if line.startswith(("fn=", "cfn=")):
        found = pattern.match(line.rstrip("\n"))
        if found:
            kind, ident, name = found.groups()
            if name:
                names[ident] = name
            if kind == "fn":
                caller = names.get(ident, "")
            else:
                callee = names.get(ident, "")
    elif line.startswith("calls=") and callee is not None:
        if callee in ENTRY and not caller.startswith(("mi_", "_mi_", "malloc", "calloc", "realloc", "_int_")):
            total += int(line[6:].split()[0])
        callee = None
print(total)
PY
)"
}

printf '%s\n' "# Instructions per forwarded call (callgrind)" "" "Command: \`$CMDLINE\`" \
  "" "| target | instructions per call | allocations per call |" "|---|---:|---:|"
for target in $TARGETS; do
  log "$target: $SMALL calls"
  count "$target" "$SMALL"
  small_total=$TOTAL
  small_allocs=$ALLOCS
  log "$target: $LARGE calls"
  count "$target" "$LARGE"
  python3 - "$target" "$SMALL" "$LARGE" "$small_total" "$TOTAL" "$small_allocs" "$ALLOCS" <<'PY'
import sys
target, small, large, st, lt, sa, la = sys.argv[1], *map(int, sys.argv[2:])
print(f"| {target} | {(lt - st) / (large - small):,.0f} | {(la - sa) / (large - small):.1f} |")
PY
done

# Where Postern's instructions go: each phase's inclusive count, differenced the same way.
if [[ " $TARGETS " == *" postern "* ]]; then
  python3 - "$WORK/callgrind.postern.$SMALL.inclusive" "$WORK/callgrind.postern.$LARGE.inclusive" \
    "$SMALL" "$LARGE" "$AUDIT_MODE" <<'PY'
import re, sys
small_path, large_path, small, large, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def inclusive(path):
    """Function -> inclusive instructions. callgrind_annotate prints a function once per file its
    code comes from (inlining); the largest line is the whole function, the others parts of it."""
    whole = {}
    for line in open(path):
        found = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
        if not found:
            continue
        count, rest = int(found.group(1).replace(",", "")), found.group(2).rstrip()
        if rest.startswith("PROGRAM TOTALS"):
            whole[None] = count
            continue
        named = re.match(r"\S*?:(.+?)(?: \[[^\]]+\])?$", rest)
        if named:
            whole[named.group(1)] = max(whole.get(named.group(1), 0), count)
    return whole

before, after = inclusive(small_path), inclusive(large_path)
rows = [
    (0, "the whole process", None),
    (1, "SHA-256 in software, wherever it runs", "sha2::sha256::soft::compress"),
    (0, "the caller connections' tasks (not the audit pipe's)", "postern_gateway::listener::accept_loop::{{closure}}::{{closure}}"),
    (1, "reading and parsing the caller's request", "postern_gateway::h1server::next_request::{{closure}}"),
    (1, "call set-up: context, target HMAC", "postern_gateway::proxy::handle"),
    (1, "the pipeline", "<postern_gateway::proxy::Handled<F> as core::future::future::Future>::poll"),
    (2, "caller identification", "postern_gateway::proxy::identify_caller"),
    (2, "operation match and Cedar", "postern_gateway::proxy::authorize"),
    (2, "credential injection", "postern_gateway::proxy::inject"),
    # Every copy of tokio's Timeout::poll demangles to one name: mostly the vendor exchange
    # (under request_timeout_ms), but also the audit pipe's wait (required) and the like.
    (2, "futures under a tokio timeout, mostly the vendor exchange", "<tokio::time::timeout::Timeout<T> as core::future::future::Future>::poll"),
    (2, "audit entries encoded", "postern_gateway::audit::Audit::record"),
    (2, "the answer prepared", "postern_gateway::proxy::prepare_response"),
    (1, "the answer's head written", "postern_gateway::h1server::write_head"),
    (1, "answering the caller", "postern_gateway::h1server::write_answer::{{closure}}"),
    (2, "the call recorded when its body ends", "postern_gateway::body::ResponseBody::finish"),
    (3, "its event", "postern_gateway::events::EventSink::record_ref"),
    (3, "its metrics", "postern_gateway::metrics::Metrics::observe_call"),
    (0, "the audit pipe's tasks (required)", "postern_gateway::audit::run_pipe::{{closure}}"),
    (0, "the audit sequencer thread", "postern_ledger::ledger::run_sequencer"),
    (0, "the detector thread", "postern_gateway::detect::run"),
]
print()
print(f"## Where Postern's instructions go (audit = {mode}, inclusive, per call)")
print()
print("| phase | function | instructions per call |")
print("|---|---|---:|")
for depth, label, function in rows:
    if function in before and function in after:
        value = f"{(after[function] - before[function]) / (large - small):,.0f}"
    else:
        value = "not found (inlined or renamed?)"
    print(f"| {'… ' * depth}{label} | {'' if function is None else f'`{function}`'} | {value} |")
PY
fi
