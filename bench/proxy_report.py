#!/usr/bin/env python3
"""Markdown report for bench/proxy.sh: reads WORK/meta.env and WORK/run-<round>-<variant>.json
(postern-bench-load --json) and prints medians per variant, ratios against path mode and direct,
and the per-round figures."""

import json
import re
import statistics
import sys
from pathlib import Path

DESCRIPTIONS = {
    "direct": "direct to upstream, keep-alive",
    "path": "path mode `GET /bench/…`, keep-alive",
    "tunnel": "CONNECT tunnel (unregistered host), plain HTTP inside, keep-alive",
    "intercept": "CONNECT + TLS interception, full pipeline, keep-alive",
    "direct-fresh": "direct, new connection per request",
    "path-fresh": "path mode, new connection per request",
    "tunnel-fresh": "CONNECT per request (+ dial upstream)",
    "intercept-fresh": "CONNECT + TLS handshake per request",
}


def load(work: Path):
    meta = {}
    for line in (work / "meta.env").read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key] = value
    runs = []
    for path in sorted(work.glob("run-*.json")):
        match = re.match(r"run-(\d+)-(.+)\.json$", path.name)
        if not match:
            continue
        try:
            result = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        runs.append((int(match.group(1)), match.group(2), result))
    return meta, runs


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, pattern="{:.2f}"):
    return "–" if value is None else pattern.format(value)


def main():
    work = Path(sys.argv[1])
    meta, runs = load(work)
    variants = [v for v in meta.get("variants", "").split() if any(r[1] == v for r in runs)]
    summary = {}
    for variant in variants:
        results = [r[2] for r in runs if r[1] == variant]
        rates = [r["requests_per_s"] for r in results]
        summary[variant] = {
            "connections": results[0]["connections"],
            "rps": median(rates),
            "rps_min": min(rates),
            "rps_max": max(rates),
            "p50": median([r["latency_us"]["p50"] / 1000 for r in results]),
            "p99": median([r["latency_us"]["p99"] / 1000 for r in results]),
            "cpu": None if variant.startswith("direct") else median([r["cpu"]["us_per_request"] for r in results]),
            "upstream_cpu": median([r["cpu"]["upstream_us_per_request"] for r in results]),
            "load_cpu": median([r["cpu"]["load_generator_us_per_request"] for r in results]),
            "errors": sum(r["errors"]["total"] for r in results),
            "warmup_errors": sum(r["errors"]["during_warmup"] for r in results),
            "first_error": next((r["errors"]["first"] for r in results if r["errors"]["first"]), None),
        }

    def ratio(variant, base, key):
        a, b = summary.get(variant, {}).get(key), summary.get(base, {}).get(key)
        if a is None or b is None or b == 0:
            return None
        return a / b

    out = []
    out.append("# Postern forward-proxy benchmark")
    out.append("")
    out.append(f"Command: `{meta.get('cmdline', 'bench/proxy.sh')}` — {meta.get('date', '')}, build {meta.get('git', '?')}.")
    out.append(
        f"Machine: {meta.get('cpus', '?')} CPUs ({meta.get('cpu_model', '?')}), kernel {meta.get('kernel', '?')}, "
        f"load average {meta.get('loadavg', '?')} at start, {meta.get('loadavg_end', '?')} at the end."
    )
    out.append(
        f"Load: postern-bench-load, closed loop, {meta.get('load_threads', '?')} threads, "
        f"{meta.get('connections', '?')} connections (keep-alive variants) / {meta.get('fresh_connections', '?')} "
        f"(`-fresh` variants), {meta.get('duration', '?')} s per run after {meta.get('run_warmup', '?')} s of set-up, "
        f"{meta.get('rounds', '?')} rounds alternating the variants; GET /v1/charges/ch_123. Postern: "
        f"{meta.get('proxy_threads', '?')} worker threads, audit = \"{meta.get('audit', '?')}\"; upstream: "
        f"{meta.get('upstream_threads', '?')} thread."
    )
    out.append("")
    out.append(
        "| variant | conns | req/s (median) | min–max | p50 ms | p99 ms | Postern CPU µs/req | "
        "req/s × path | req/s × direct | CPU × path | load gen CPU µs/req | errors |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant in variants:
        s = summary[variant]
        errors = str(s["errors"]) if s["errors"] == 0 else f"**{s['errors']}**"
        if s["warmup_errors"]:
            errors += f" (+{s['warmup_errors']} in set-up)"
        out.append(
            f"| {variant} — {DESCRIPTIONS.get(variant, '')} | {s['connections']} | {s['rps']:,.0f} | "
            f"{s['rps_min']:,.0f}–{s['rps_max']:,.0f} | {fmt(s['p50'])} | {fmt(s['p99'])} | {fmt(s['cpu'], '{:.1f}')} | "
            f"{fmt(ratio(variant, 'path', 'rps'), '{:.2f}×')} | {fmt(ratio(variant, 'direct', 'rps'), '{:.2f}×')} | "
            f"{fmt(ratio(variant, 'path', 'cpu'), '{:.2f}×')} | {fmt(s['load_cpu'], '{:.1f}')} | {errors} |"
        )
    out.append("")
    out.append(
        "Postern CPU µs/req = utime + stime of the `postern serve` process over the measured window ÷ "
        "requests completed in it (medians over rounds; for `-fresh` variants a request includes its "
        "connection, tunnel and TLS set-up). Ratios are of the medians."
    )
    out.append("")
    out.append("## Per round")
    out.append("")
    out.append("| round | variant | req/s | p50 ms | p90 ms | p99 ms | Postern CPU µs/req | Postern cores | errors |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for round_no, variant, r in sorted(runs, key=lambda x: (x[0], variants.index(x[1]) if x[1] in variants else 99)):
        cpu = r["cpu"]
        out.append(
            f"| {round_no} | {variant} | {r['requests_per_s']:,.0f} | {r['latency_us']['p50'] / 1000:.2f} | "
            f"{r['latency_us']['p90'] / 1000:.2f} | {r['latency_us']['p99'] / 1000:.2f} | "
            f"{fmt(None if variant.startswith('direct') else cpu['us_per_request'], '{:.1f}')} | "
            f"{fmt(cpu['cores'], '{:.2f}')} | {r['errors']['total']} |"
        )
    out.append("")
    out.append("## Notes")
    out.append("")
    failing = [(v, s) for v, s in summary.items() if s["errors"] or s["warmup_errors"]]
    if failing:
        for variant, s in failing:
            out.append(
                f"- **{variant} had errors**: {s['errors']} in measured windows, {s['warmup_errors']} during "
                f"set-up/warm-up; first: `{s['first_error']}`"
            )
    else:
        out.append("- No request failed in any run (non-2xx, IO error, timeout or unexpected body).")
    hwm = meta.get("postern_hwm_kb")
    if hwm:
        out.append(f"- Postern peak RSS over the run: {int(hwm) / 1024:.1f} MiB; threads at the end: {meta.get('postern_threads', '?')}.")
    out.append(
        f"- Postern wrote {meta.get('event_lines', '?')} event lines; its log has {meta.get('postern_log_warn', '?')} "
        f"WARN and {meta.get('postern_log_error', '?')} ERROR lines ({meta.get('postern_log_bytes', '?')} bytes)."
    )
    out.append(
        f"- 2 s after the last run Postern held {meta.get('postern_fds_after', '?')} file descriptors, "
        f"{meta.get('client_conns_after', '?')} client connections (tunnels included) and "
        f"{meta.get('upstream_conns_after', '?')} connections to the upstream (the keep-alive pool of path "
        f"mode and intercepted calls); the anomaly detector wrote {meta.get('alert_lines', '?')} alert lines."
    )
    warnings = work / "postern-warnings.txt"
    if warnings.exists() and warnings.read_text().strip():
        out.append("- Most frequent WARN/ERROR log lines:")
        out.append("")
        out.append("```")
        out.extend(line[:300] for line in warnings.read_text().splitlines())
        out.append("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()
