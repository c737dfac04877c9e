#!/usr/bin/env bash
# Two Postern builds side by side under the same load, alternating, so that a change's effect
# shows on a shared, noisy machine. See bench/README.md. Run `bench/ab.sh --help` for options.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_LOG_TAG=ab
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

PAIRS=4
DURATION=10
WARMUP=2
CONNECTIONS=64
WRK_THREADS=2
AUDIT_MODE=best_effort
PROXY_THREADS="$(nproc)"
UPSTREAM_THREADS=1
SKIP_BUILD=1
KEEP=0
SYSCALLS=0
CLOSE=0
METHOD=GET
SYSCALL_EVENTS="syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_write,syscalls:sys_enter_pwrite64,context-switches"

usage() {
  cat <<EOF
Usage: bench/ab.sh [options] OLD_POSTERN NEW_POSTERN

Runs two \`postern\` binaries (for example the build before a change, built from a worktree
into its own CARGO_TARGET_DIR, and the build after it) one at a time against the same
upstream, with the same config and load as bench/run.sh's Postern target, alternating
old, new, old, new, ... for --pairs pairs. Each run starts Postern on an empty data_dir, warms
up for --warmup seconds, then measures \`wrk -t$WRK_THREADS -c$CONNECTIONS -d<duration>s --latency\`
(GET /bench/v1/charges/ch_123 with the caller token, or --method POST). Prints one line per run and the medians:
req/s, p99, and Postern's CPU per call (utime+stime from /proc over the measured run, divided
by the requests), with its user-space share, and the same split by thread kind (the
data-plane workers summed, the audit sequencer, the detector, ...), and with --syscalls the
median syscalls and context switches per call.

The upstream is postern-bench-upstream from the release build (CARGO_TARGET_DIR, else
cargo metadata); it is not built here.

Options:
  --pairs N         old/new pairs (default $PAIRS)
  --duration S      seconds per measured run (default $DURATION)
  --warmup S        seconds of warm-up per run (default $WARMUP)
  --audit MODE      required or best_effort (default $AUDIT_MODE)
  --syscalls        also count, with \`perf stat -p\` over each measured run, Postern's
                    recvfrom, sendto, epoll_wait, futex, write (eventfd wake-ups between
                    threads), pwrite64 (audit commits) and context switches per call
                    (needs perf: apt-get install linux-perf; run as root)
  --upstream-tls    the upstream speaks HTTPS (HTTP/1.1), Postern verifies it with its CA as
                    ca_file, as bench/run.sh --upstream-tls
  --upstream-h2     the same, the upstream offering HTTP/2 first (bench/run.sh --upstream-h2)
  --proxy-threads N Postern's [gateway] workers (default nproc = $PROXY_THREADS)
  --method GET|POST GET /v1/charges/ch_123, or POST /v1/charges with bench/run.sh's small form
                    body (read whole by Postern's server, forwarded as an upload; default $METHOD)
  --close           every request on a new connection (\`Connection: close\`): what a
                    connection costs (accept, hand-over between workers, close), not a call
  --keep            keep the temp dir (config, logs, wrk output)
  -h, --help        this help
EOF
}

BINS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --pairs) PAIRS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --audit) AUDIT_MODE="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --close) CLOSE=1; shift ;;
    --method) METHOD="$2"; shift 2 ;;
    --syscalls) SYSCALLS=1; shift ;;
    --upstream-tls) UPSTREAM_TLS=1; shift ;;
    --upstream-h2) UPSTREAM_TLS=1; UPSTREAM_H2=1; shift ;;
    --proxy-threads) PROXY_THREADS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "ab.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) BINS+=("$1"); shift ;;
  esac
done
[[ ${#BINS[@]} -eq 2 ]] || { echo "ab.sh: give two postern binaries, OLD and NEW (see --help)" >&2; exit 2; }
require_numbers ab.sh "$PAIRS" "$DURATION" "$WARMUP" "$PROXY_THREADS"
[[ "$PAIRS" -ge 1 && "$DURATION" -ge 1 && "$PROXY_THREADS" -ge 1 ]] || { echo "ab.sh: need --pairs >= 1, --duration >= 1 and --proxy-threads >= 1" >&2; exit 2; }
[[ "$AUDIT_MODE" == required || "$AUDIT_MODE" == best_effort ]] || { echo "ab.sh: --audit is required or best_effort" >&2; exit 2; }
[[ "$METHOD" == GET || "$METHOD" == POST ]] || { echo "ab.sh: --method is GET or POST" >&2; exit 2; }
for bin in "${BINS[@]}"; do [[ -x "$bin" ]] || { echo "ab.sh: $bin is not an executable" >&2; exit 2; }; done
command -v wrk >/dev/null || apt_install wrk
if [[ $SYSCALLS == 1 ]]; then
  command -v perf >/dev/null || apt_install linux-perf
  perf stat -e syscalls:sys_enter_futex -- true >/dev/null 2>&1 \
    || die "--syscalls: perf cannot read the syscall tracepoints here (run as root)"
fi

locate_release_bins
[[ -x "$UPSTREAM_BIN" ]] || die "$UPSTREAM_BIN not found (cargo build --release -p postern-bench-upstream)"
make_workdir postern-ab
read -r UPSTREAM_PORT POSTERN_PORT ADMIN_PORT < <(free_ports 3)
start_upstream
POSTERN_BIN="${BINS[1]}"
write_postern_config bench/ab.sh 'credential = { kind = "bearer", from_file = "vendor-key" }'
cat >"$WORK/bench.lua" <<EOF
wrk.headers["Authorization"] = "Bearer $TOKEN"
$([[ $METHOD == POST ]] && printf '%s\n' 'wrk.method = "POST"' 'wrk.body = "amount=500&currency=usd"' 'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"')
$([[ $CLOSE == 1 ]] && echo 'wrk.headers["Connection"] = "close"')
done = function(summary, latency, requests)
  io.write(string.format("AB requests=%d p99_us=%d errors=%d\n", summary.requests,
    latency:percentile(99), summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
EOF
URL="http://127.0.0.1:$POSTERN_PORT/bench/v1/charges"
[[ $METHOD == POST ]] || URL="$URL/ch_123"
TICK="$(getconf CLK_TCK)"
cpu_fields() { local stat; stat="$(cat "/proc/$1/stat")"; stat="${stat##*) }"; read -r -a f <<<"$stat"; echo "${f[11]} ${f[12]}"; }
# thread_cpu PID -> one line per thread: "name utime stime" (clock ticks), name as in
# /proc/PID/task/TID/comm with spaces made underscores.
thread_cpu() {
  local task name stat
  for task in /proc/"$1"/task/*; do
    # A thread may end between the reads: skip it.
    name="$(tr ' ' _ <"$task/comm" 2>/dev/null)" || continue
    stat="$(cat "$task/stat" 2>/dev/null)" || continue
    stat="${stat##*) }"; read -r -a f <<<"$stat"
    echo "$name ${f[11]} ${f[12]}"
  done
}

# run LABEL BIN -> one result line "LABEL req/s p99_ms cpu_us user_us" on stdout
run() {
  rm -rf "$WORK/postern/data"
  POSTERN_BIN="$2"
  start_postern
  wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP"s -s "$WORK/bench.lua" "$URL" >/dev/null 2>&1 || true
  local before after out
  before="$(cpu_fields "$POSTERN_PID")"
  thread_cpu "$POSTERN_PID" >"$WORK/threads.before"
  local perf_pid=""
  if [[ $SYSCALLS == 1 ]]; then
    perf stat -x, -e "$SYSCALL_EVENTS" -p "$POSTERN_PID" -o "$WORK/perf.$1.txt" -- sleep "$DURATION" &
    perf_pid=$!
  fi
  out="$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION"s --latency -s "$WORK/bench.lua" "$URL" 2>&1)" \
    || die "wrk failed against $1: $(tail -3 <<<"$out")"
  if [[ -n $perf_pid ]]; then
    wait "$perf_pid" || die "perf stat failed (see $WORK/perf.$1.txt)"
  fi
  after="$(cpu_fields "$POSTERN_PID")"
  thread_cpu "$POSTERN_PID" >"$WORK/threads.after"
  kill "$POSTERN_PID"; wait "$POSTERN_PID" 2>/dev/null || true
  local line; line="$(grep '^AB ' <<<"$out")" || die "no result from wrk against $1"
  python3 - "$1" "$line" "$before" "$after" "$DURATION" "$TICK" "$WORK" <<'EOF'
import collections, re, sys
label, line, before, after, duration, tick, work = sys.argv[1:]
fields = dict(part.split("=") for part in line.split()[1:])
requests = int(fields["requests"])
if requests == 0 or int(fields["errors"]):
    sys.exit(f"ab.sh: {label}: {requests} requests, {fields['errors']} errors")
u0, s0 = map(int, before.split()); u1, s1 = map(int, after.split())
per_call = 1e6 / int(tick) / requests
# Per thread kind (workers summed: the name without its number), user and kernel µs per call.
def threads(path):
    ticks = collections.Counter()
    for row in open(path):
        name, user, kernel = row.split()
        name = re.sub(r"\d+$", "", name).rstrip("-_") or name
        ticks[name, "user"] += int(user); ticks[name, "kernel"] += int(kernel)
    return ticks
spent = threads(f"{work}/threads.after"); spent.subtract(threads(f"{work}/threads.before"))
with open(f"{work}/threads.txt", "a") as out:
    for (name, kind), value in sorted(spent.items()):
        out.write(f"{label} {name} {kind} {value * per_call:.2f}\n")
# perf stat -x, rows: count,unit,event,... over the measured run (--syscalls), per call.
try:
    with open(f"{work}/perf.{label}.txt") as counts, open(f"{work}/syscalls.txt", "a") as out:
        for row in counts:
            cells = row.strip().split(",")
            if len(cells) > 2 and cells[0].startswith("<"):
                print(f"ab.sh: {label}: perf did not count {cells[2]} ({cells[0]})", file=sys.stderr)
            if len(cells) > 2 and cells[0].replace(".", "").isdigit():
                event = cells[2].removeprefix("syscalls:sys_enter_")
                out.write(f"{label} {event} {float(cells[0]) / requests:.4f}\n")
except FileNotFoundError:
    pass
print(f"{label} {requests / int(duration):.0f} {int(fields['p99_us']) / 1000:.2f} "
      f"{((u1 - u0) + (s1 - s0)) * per_call:.1f} {(u1 - u0) * per_call:.1f}")
EOF
}

UPSTREAM_KIND="plain HTTP"
[[ $UPSTREAM_TLS -eq 1 ]] && UPSTREAM_KIND="HTTPS"
[[ $UPSTREAM_H2 -eq 1 ]] && UPSTREAM_KIND="HTTPS offering h2"
log "upstream :$UPSTREAM_PORT ($UPSTREAM_KIND), Postern :$POSTERN_PORT; $PAIRS pairs of ${DURATION}s runs, audit = $AUDIT_MODE"
echo "| pair | build | req/s | p99 ms | CPU µs/call | of which user |"
echo "|---:|---|---:|---:|---:|---:|"
RESULTS="$WORK/results.txt"
: >"$RESULTS"
for pair in $(seq 1 "$PAIRS"); do
  for label in old new; do
    if [[ $label == old ]]; then bin="${BINS[0]}"; else bin="${BINS[1]}"; fi
    result="$(run "$label" "$bin")"
    echo "$result" >>"$RESULTS"
    read -r _ rps p99 cpu user <<<"$result"
    echo "| $pair | $label | $rps | $p99 | $cpu | $user |"
  done
done
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def median(label, column):
    return statistics.median(float(row[column]) for row in rows if row[0] == label)
print()
print("| medians | req/s | p99 ms | CPU µs/call | of which user |")
print("|---|---:|---:|---:|---:|")
for label in ("old", "new"):
    print(f"| {label} | {median(label, 1):.0f} | {median(label, 2):.2f} | {median(label, 3):.1f} | {median(label, 4):.1f} |")
print(f"| new / old | {median('new', 1) / median('old', 1):.3f}× | | {median('new', 3) / median('old', 3):.3f}× | |")
EOF
# Where Postern's CPU goes, by thread kind (medians of the runs; threads that used less than
# 0.05 µs per call in every run are left out).
python3 - "$WORK/threads.txt" <<'EOF'
import collections, statistics, sys
values = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, name, kind, value = line.split()
    values[label, name, kind].append(float(value))
names = sorted({name for (_, name, _), v in values.items() if max(v) >= 0.05})
def median(label, name, kind):
    return statistics.median(values.get((label, name, kind), [0.0]))
print()
print("| thread | old user µs/call | old kernel | new user µs/call | new kernel |")
print("|---|---:|---:|---:|---:|")
for name in names:
    print(f"| {name} | {median('old', name, 'user'):.2f} | {median('old', name, 'kernel'):.2f} "
          f"| {median('new', name, 'user'):.2f} | {median('new', name, 'kernel'):.2f} |")
EOF
if [[ $SYSCALLS == 1 ]]; then
  python3 - "$WORK/syscalls.txt" <<'EOF'
import collections, statistics, sys
values = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, event, value = line.split()
    values[label, event].append(float(value))
events = list(dict.fromkeys(event for _, event in values))
print()
print("| per call (medians) | old | new |")
print("|---|---:|---:|")
for event in events:
    cells = [f"{statistics.median(values[label, event]):.3f}" if (label, event) in values else "–"
             for label in ("old", "new")]
    print(f"| {event} | {cells[0]} | {cells[1]} |")
EOF
fi
