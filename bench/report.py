#!/usr/bin/env python3
"""Turns the raw files bench/run.sh collected in its work dir into the Markdown report.

Usage: report.py WORKDIR   (reads WORKDIR/meta.env, runs.tsv, idle-*.json, hwm.env; prints Markdown)
"""

import json
import os
import statistics
import sys

TARGETS = [
    ("direct", "(a) direct to upstream"),
    ("nginx", "(b) nginx proxy_pass"),
    ("postern", "(c) Postern, full pipeline"),
    ("pgo", None),  # labelled with the build's kind (PGO, or PGO + BOLT) from meta.env
    ("floor", "(d) hyper floor: bare hyper proxy, no pipeline"),
]


def read_env(path):
    values = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if "=" in line:
                    key, _, value = line.partition("=")
                    values[key] = value
    return values


def read_runs(path):
    rows = []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(header):
                continue
            row = dict(zip(header, fields))
            for key in header:
                if key != "target":
                    row[key] = float(row[key])
            row["rps"] = row["requests"] / row["duration_us"] * 1e6 if row["duration_us"] else 0.0
            rows.append(row)
    return rows


def ms(us):
    return f"{us / 1000:.2f}"


def signed_ms(us):
    return f"{us / 1000:+.2f}"


def main():
    work = sys.argv[1]
    meta = read_env(os.path.join(work, "meta.env"))
    hwm = read_env(os.path.join(work, "hwm.env"))
    rows = read_runs(os.path.join(work, "runs.tsv"))
    hz = float(meta.get("clk_tck", "100"))

    med = {}
    for target, _ in TARGETS:
        mine = [r for r in rows if r["target"] == target]
        if not mine:
            continue
        m = {"rounds": len(mine)}
        for key in ("rps", "p50_us", "p99_us", "p999_us", "mean_us"):
            m[key] = statistics.median(r[key] for r in mine)
        m["rps_min"] = min(r["rps"] for r in mine)
        m["rps_max"] = max(r["rps"] for r in mine)
        m["p99_min"] = min(r["p99_us"] for r in mine)
        m["p99_max"] = max(r["p99_us"] for r in mine)
        m["status_errors"] = sum(r["status_errors"] for r in mine)
        m["socket_errors"] = sum(r["socket_errors"] for r in mine)
        # CPU seconds the proxy (or, for direct, the upstream) burned per request, all rounds.
        requests = sum(r["requests"] for r in mine)
        proxy_ticks = sum(r["proxy_cpu_ticks"] for r in mine)
        upstream_ticks = sum(r["upstream_cpu_ticks"] for r in mine)
        m["proxy_cpu_us"] = proxy_ticks / hz / requests * 1e6 if requests else 0
        m["upstream_cpu_us"] = upstream_ticks / hz / requests * 1e6 if requests else 0
        m["vcsw"] = sum(r.get("proxy_vcsw", 0) for r in mine) / requests if requests else 0
        conns = [r["upstream_conns"] for r in mine if r.get("upstream_conns", -1) >= 0]
        m["upstream_conns"] = statistics.median(conns) if conns else None
        med[target] = m

    out = []
    w = out.append
    w("# Postern data-plane benchmark")
    w("")
    w(f"Command: `{meta.get('cmdline', '?')}`")
    w("")
    w(f"- Date: {meta.get('date', '?')}; Postern {meta.get('git', '?')}; nginx {meta.get('nginx_version', '?')}; wrk {meta.get('wrk_version', '?')}")
    w(f"- Machine: {meta.get('cpus', '?')} CPU(s), {meta.get('cpu_model', '?')}; kernel {meta.get('kernel', '?')}; load average {meta.get('loadavg', '?')} at start, {meta.get('loadavg_end', '?')} at end")
    w(f"- **Shared machine:** the load generator (wrk, {meta.get('wrk_threads')} threads), the proxy under test "
      f"and the upstream all run on these {meta.get('cpus', '?')} CPUs, and other tenants may be busy too. "
      "Absolute numbers are a floor for this box; the side-by-side ratios are what the run is for.")
    w(f"- Load: `wrk -t{meta.get('wrk_threads')} -c{meta.get('connections')} -d{meta.get('duration')}s --latency` "
      f"(closed loop), {meta.get('method')} `{meta.get('path')}` with `Authorization: Bearer <caller token>` on every target; "
      f"{meta.get('warmup')} s warm-up per target, then {meta.get('rounds')} rounds alternating the targets in that order; **medians** reported.")
    w(f"- Proxies: {meta.get('proxy_threads')} thread(s) each (Postern `[gateway] workers`, nginx `worker_processes`); "
      f"nginx keeps {meta.get('connections')} keep-alive connections to the upstream, access log {meta.get('nginx_access_log')}. "
      "Postern runs the full pipeline: caller token, grant, Cedar, rate limit (10M/s, never triggers), "
      "bearer credential injected from a file, one event per call written to data_dir.")
    w(f"- Upstream: `postern-bench-upstream` ({meta.get('upstream_threads')} thread), 200 + a {meta.get('body_bytes', '~100')}-byte JSON body, keep-alive.")
    if meta.get("upstream_tls") == "1":
        w("- **Upstream over HTTPS** (`--upstream-tls`): HTTP/1.1 (or h2 with `--upstream-h2`, below) over TLS with a certificate from a throwaway CA. "
          "Postern on its defaults (TLS to the vendor, no `allow_plaintext`, the CA as `ca_file`); nginx `proxy_pass https://` "
          "verifying the same CA (`proxy_ssl_verify on`, `proxy_ssl_name localhost`), sessions reused over its keep-alive "
          "connections; direct is wrk over TLS.")
    if meta.get("upstream_h2") == "1":
        w("- **The upstream offers HTTP/2** (`--upstream-h2`): ALPN `h2` first, HTTP/1.1 still served. Postern takes h2 "
          "(the calls of each worker share one connection to the vendor); nginx `proxy_pass` has no HTTP/2 to upstreams and "
          "stays on HTTP/1.1; wrk speaks HTTP/1.1.")
    if meta.get("scan") == "on":
        w(f"- **Payload scanning on**: `data_classes = [\"pii.email\"]`, `on_unapproved = \"redact\"`; every request carries a "
          f"{meta.get('request_body_bytes')}-byte JSON customer (email approved; phone and card masked before forwarding), "
          "and the upstream's JSON response is scanned too. nginx and direct get the same body.")
    w("")
    w("## Throughput and latency (median of rounds)")
    w("")
    w("| target | req/s | (min–max) | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/req | proxy sleeps/req | upstream CPU µs/req | upstream conns | peak RSS MiB | non-2xx | socket errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pgo_build = meta.get("pgo_build", "PGO")
    for target, label in TARGETS:
        if target == "pgo":
            label = f"(c′) Postern, full pipeline, {pgo_build} build"
        if target not in med:
            continue
        m = med[target]
        peak = hwm.get(f"{target}_hwm_kb")
        peak_s = f"{int(peak) / 1024:.1f}" if peak else "–"
        cpu = m["proxy_cpu_us"] if target != "direct" else None
        cpu_s = f"{cpu:.1f}" if cpu is not None else "–"
        vcsw_s = f"{m['vcsw']:.2f}" if target != "direct" else "–"
        conns_s = f"{m['upstream_conns']:.0f}" if m["upstream_conns"] is not None else "–"
        w(f"| {label} | {m['rps']:,.0f} | {m['rps_min']:,.0f}–{m['rps_max']:,.0f} | {ms(m['p50_us'])} | {ms(m['p99_us'])} | "
          f"{ms(m['p999_us'])} | {cpu_s} | {vcsw_s} | {m['upstream_cpu_us']:.1f} | {conns_s} | {peak_s} | "
          f"{int(m['status_errors'])} | {int(m['socket_errors'])} |")
    w("")
    w("Peak RSS is VmHWM from /proc (nginx: master + workers summed; direct: the upstream itself). "
      "Proxy CPU is user+system time of the proxy process(es) over all measured rounds divided by the requests served; "
      "upstream CPU the same of the upstream while that target was measured (on this shared machine, CPU the upstream "
      "does not use goes to the others). Upstream conns: the TCP connections the proxy's processes held established to "
      "the upstream at the middle of each round (`ss -p`), median over rounds; with `--upstream-h2` the evidence of "
      "which protocol each proxy took (h2: one connection per worker).")
    w("")

    if all(t in med for t in ("direct", "nginx", "postern")):
        d, n, p = med["direct"], med["nginx"], med["postern"]
        w("## Ratios")
        w("")
        w("| | Postern vs nginx | Postern vs direct | nginx vs direct |")
        w("|---|---:|---:|---:|")
        w(f"| throughput (req/s ratio) | **{p['rps'] / n['rps']:.2f}×** | {p['rps'] / d['rps']:.2f}× | {n['rps'] / d['rps']:.2f}× |")
        w(f"| p50 difference | {signed_ms(p['p50_us'] - n['p50_us'])} ms | {signed_ms(p['p50_us'] - d['p50_us'])} ms | {signed_ms(n['p50_us'] - d['p50_us'])} ms |")
        w(f"| p99 difference | **{signed_ms(p['p99_us'] - n['p99_us'])} ms** | {signed_ms(p['p99_us'] - d['p99_us'])} ms | {signed_ms(n['p99_us'] - d['p99_us'])} ms |")
        w(f"| proxy CPU per request | {p['proxy_cpu_us'] / n['proxy_cpu_us']:.2f}× ({p['proxy_cpu_us']:.1f} vs {n['proxy_cpu_us']:.1f} µs) | | |"
          if n["proxy_cpu_us"] else "| proxy CPU per request | n/a | | |")
        w("")
        w("A closed-loop load generator saturates whatever is slowest, so latency here includes queueing at "
          "saturation; with every process on the same CPUs, a proxy that needs more CPU per request also "
          "takes CPU from wrk and the upstream.")
        w("")

    if all(t in med for t in ("nginx", "postern", "pgo")):
        n, p, g = med["nginx"], med["postern"], med["pgo"]
        w(f"## The {pgo_build} build")
        w("")
        if pgo_build == "PGO":
            w("The same program built by bench/pgo.sh with profile-guided optimization (trained on this bench's "
              "load), beside the plain release build in the same rounds.")
        else:
            w("The same program built by bench/pgo.sh --bolt: profile-guided optimization, then BOLT's post-link "
              "layout (both trained on this bench's load), beside the plain release build in the same rounds.")
        w("")
        w(f"| | {pgo_build} build vs nginx | {pgo_build} build vs release build |")
        w("|---|---:|---:|")
        w(f"| throughput (req/s ratio) | **{g['rps'] / n['rps']:.2f}×** | {g['rps'] / p['rps']:.2f}× |")
        w(f"| p99 difference | **{signed_ms(g['p99_us'] - n['p99_us'])} ms** | {signed_ms(g['p99_us'] - p['p99_us'])} ms |")
        if p["proxy_cpu_us"]:
            w(f"| proxy CPU per request | {g['proxy_cpu_us']:.1f} vs {n['proxy_cpu_us']:.1f} µs | "
              f"{g['proxy_cpu_us']:.1f} vs {p['proxy_cpu_us']:.1f} µs ({g['proxy_cpu_us'] / p['proxy_cpu_us']:.2f}×) |")
        w("")

    if all(t in med for t in ("nginx", "postern", "floor")):
        n, p, f = med["nginx"], med["postern"], med["floor"]
        w("## Against the hyper floor")
        w("")
        w("The floor forwards the same request with hyper and nothing else. What it costs over nginx is the "
          "HTTP stack's; what Postern costs over it is Postern's own per-call work.")
        w("")
        w("| | floor vs nginx | Postern vs floor |")
        w("|---|---:|---:|")
        w(f"| throughput (req/s ratio) | {f['rps'] / n['rps']:.2f}× | {p['rps'] / f['rps']:.2f}× |")
        w(f"| proxy CPU per request | {f['proxy_cpu_us']:.1f} vs {n['proxy_cpu_us']:.1f} µs | "
          f"{p['proxy_cpu_us']:.1f} vs {f['proxy_cpu_us']:.1f} µs (+{p['proxy_cpu_us'] - f['proxy_cpu_us']:.1f}) |")
        w("")

    w("## Per round")
    w("")
    w("| round | target | req/s | p50 ms | p99 ms | non-2xx |")
    w("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        w(f"| {int(r['round'])} | {r['target']} | {r['rps']:,.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | {int(r['status_errors'])} |")
    w("")

    idle = []
    for target in ("nginx", "postern"):
        for mode in ("request", "connect"):
            path = os.path.join(work, f"idle-{target}-{mode}.json")
            if os.path.exists(path):
                with open(path) as f:
                    idle.append((target, json.load(f)))
    if idle:
        w("## Memory per idle connection")
        w("")
        w("Fresh proxy processes (before any load); `idle_conns.py` opens the connections and holds them idle, "
          "then VmRSS (summed over the proxy's processes) is compared with before. *request*: each connection "
          "first made one proxied call (a live keep-alive connection); *connect*: accepted only.")
        w("")
        w("| proxy | mode | connections | still open | RSS before MiB | RSS after MiB | per connection | per 1k connections |")
        w("|---|---|---:|---:|---:|---:|---:|---:|")
        for target, r in idle:
            w(f"| {target} | {r['mode']} | {r['count']} | {r['open_at_end']} | {r['rss_before_kb'] / 1024:.1f} | "
              f"{r['rss_after_kb'] / 1024:.1f} | {r['bytes_per_conn'] / 1024:.1f} KiB | {r['kb_per_1k'] / 1024:.2f} MiB |")
        w("")
    notes = meta.get("notes")
    if notes:
        w(notes)
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
