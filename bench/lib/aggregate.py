#!/usr/bin/env python3
"""Aggregate bench/run.sh measurements: medians per scenario and target,
every ratio, the issue's targets met or missed.

usage: aggregate.py META.json RUNS.jsonl RESULTS_DIR

Writes RESULTS_DIR/latest.json (meta, medians, ratios, target checks and every
raw run) and RESULTS_DIR/latest.md, and prints the Markdown. Standard library
only.
"""

import json
import os
import statistics
import sys

PROXIES = ["nginx", "haproxy", "portcullis"]
TARGETS = ["direct"] + PROXIES
LABEL = {"direct": "direct", "nginx": "nginx", "haproxy": "HAProxy", "portcullis": "portcullis"}

# (id, title, rows): each row is (field, label, better) with better "high" or "low".
SCENARIOS = [
    ("1", "1. HTTP/1.1 keep-alive, 64 conns, 100 B", [
        ("rps", "req/s", "high"), ("p50_ms", "p50 ms", "low"), ("p99_ms", "p99 ms", "low"),
        ("cpu_us_per_req", "CPU µs/req", "low")]),
    ("2", "2. HTTPS keep-alive (TLS 1.3, P-256), 64 conns", [
        ("rps", "req/s", "high"), ("p50_ms", "p50 ms", "low"), ("p99_ms", "p99 ms", "low"),
        ("cpu_us_per_req", "CPU µs/req", "low")]),
    ("3", "3. New TLS connection per request, 16 conns", [
        ("rps", "handshakes/s", "high"), ("p99_ms", "p99 ms", "low"),
        ("cpu_us_per_req", "CPU µs/handshake", "low")]),
    ("4", "4. HTTP/2 over TLS, 4 conns × 32 streams → HTTP/1.1", [
        ("rps", "req/s", "high"), ("p50_ms", "p50 ms", "low"), ("p99_ms", "p99 ms", "low"),
        ("cpu_us_per_req", "CPU µs/req", "low")]),
    ("5", "5. 1 MiB answers, 16 conns", [
        ("mb_s", "MB/s", "high"), ("p99_ms", "p99 ms", "low"),
        ("cpu_us_per_req", "CPU µs/MiB", "low")]),
    ("6", "6. Idle keep-alive connections", [
        ("rss_kib_per_conn", "RSS KiB/conn", "low")]),
    ("7-50", "7. Fixed load, 50% of nginx's scenario-1 peak", [
        ("rps", "achieved req/s", "high"), ("p50_ms", "p50 ms", "low"),
        ("p99_ms", "p99 ms", "low"), ("p999_ms", "p99.9 ms", "low"),
        ("cpu_us_per_req", "CPU µs/req", "low")]),
    ("7-90", "7. Fixed load, 90% of nginx's scenario-1 peak", [
        ("rps", "achieved req/s", "high"), ("p50_ms", "p50 ms", "low"),
        ("p99_ms", "p99 ms", "low"), ("p999_ms", "p99.9 ms", "low"),
        ("cpu_us_per_req", "CPU µs/req", "low")]),
    ("11", "11. Cache hits, 1 KiB answers, 64 conns", [
        ("rps", "req/s", "high"), ("p50_ms", "p50 ms", "low"), ("p99_ms", "p99 ms", "low"),
        ("cpu_us_per_req", "CPU µs/req", "low")]),
    ("12-gzip", "12. gzip level 6, 100 KiB JSON, 16 conns", [
        ("rps", "req/s", "high"), ("p99_ms", "p99 ms", "low"),
        ("cpu_us_per_req", "CPU µs/req", "low")]),
    ("12-br", "12. brotli (default level 4), 100 KiB JSON, 16 conns", [
        ("rps", "req/s", "high"), ("p99_ms", "p99 ms", "low"),
        ("cpu_us_per_req", "CPU µs/req", "low")]),
    ("12-zstd", "12. zstd (default level 3), 100 KiB JSON, 16 conns", [
        ("rps", "req/s", "high"), ("p99_ms", "p99 ms", "low"),
        ("cpu_us_per_req", "CPU µs/req", "low")]),
]

FIELDS = ["rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "cpu_us_per_req", "mb_s",
          "rss_kib_per_conn", "errors"]


def medians(runs, scenario, target):
    rs = [r for r in runs if r["scenario"] == scenario and r["target"] == target]
    if not rs:
        return None
    out = {"runs": len(rs)}
    for f in FIELDS:
        vals = [r[f] for r in rs if r.get(f) is not None]
        if vals:
            out[f] = statistics.median(vals) if f != "errors" else sum(vals)
            if f in ("rps", "mb_s", "rss_kib_per_conn", "cpu_us_per_req") and len(vals) > 1:
                out[f + "_spread_pct"] = (max(vals) - min(vals)) / statistics.median(vals) * 100
            if f in ("rps", "mb_s"):
                out[f + "_best"] = max(vals)
            if f in ("cpu_us_per_req", "rss_kib_per_conn", "p99_ms"):
                out[f + "_best"] = min(vals)
    rates = [r["rate"] for r in rs if r.get("rate")]
    if rates:
        out["rate"] = rates[0]
    return out


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def fmt(v, field):
    if v is None:
        return "–"
    if field in ("rps", "mb_s"):
        return f"{v:,.0f}"
    if field == "rss_kib_per_conn":
        return f"{v:.2f}"
    if field == "cpu_us_per_req":
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def fr(v):
    return "–" if v is None else f"{v:.2f}"


def with_and_without(md, title, columns, off, on):
    """Appends a table of portcullis against itself (scenarios 9 and 10):
    req/s, p50, p99 and CPU per request without and with the feature, and
    their ratios, which it returns by field."""
    ratios = {}
    md.append(f"| {title} | {columns[0]} | {columns[1]} | {columns[2]} |")
    md.append("|---|---:|---:|---:|")
    for field, label in (("rps", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                         ("cpu_us_per_req", "CPU µs/req")):
        r = ratio(on.get(field), off.get(field))
        ratios[field] = r
        cells = []
        for m in (off, on):
            c = fmt(m.get(field), field)
            sp = m.get(field + "_spread_pct")
            if sp is not None and field in ("rps", "cpu_us_per_req"):
                c += f" ±{sp:.0f}%"
            cells.append(c)
        md.append(f"| {label} | {cells[0]} | {cells[1]} | {fr(r)} |")
    return ratios


def main():
    meta_path, runs_path, out_dir = sys.argv[1:4]
    meta = json.load(open(meta_path))
    runs = [json.loads(line) for line in open(runs_path) if line.strip()]

    result = {"meta": meta, "scenarios": {}, "targets": [], "runs": runs}
    md = []
    m = meta["machine"]
    st = meta["settings"]
    md.append(f"Date: {meta['date']}  ")
    md.append(f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory']}, "
              f"{m['os']}, kernel {m['kernel']}; load average before {m['loadavg_before']}, "
              f"after {m['loadavg_after']}  ")
    md.append(f"Command: `{meta['command']}`  ")
    md.append(f"Settings: {st['workers']} worker(s) per proxy on CPU {st['proxy_cpus']}, "
              f"load generator and backend on CPU {st['load_cpus']}; {st['runs']} interleaved "
              f"runs of {st['duration_s']} s per target (median shown); portcullis ran "
              f"{st['portcullis_tokio_workers']} tokio worker thread(s)  ")
    md.append("Versions: " + "; ".join(f"{k}: {v}" for k, v in meta["versions"].items())
              + "  ")
    foreign = [r["foreign_pct"] for r in runs if r.get("foreign_pct") is not None]
    noisy = [b for b in foreign if b > 5]
    repeated = sum(1 for r in runs if r.get("attempts", 1) > 1)
    md.append(f"Other work on the machine: {len(foreign) - len(noisy)} of {len(foreign)} "
              "measurements ran with other processes taking at most 5% of the CPUs"
              + (f"; the other {len(noisy)} up to {max(noisy):.0f}% (kept after three tries)"
                 if noisy else "")
              + f"; {repeated} were measured again because of such work")
    result["noisy_measurements"] = len(noisy)
    md.append("")
    md.append("Ratios are portcullis ÷ the other: above 1 is better for req/s and MB/s, "
              "below 1 is better for latency, CPU and memory. The direct column is the "
              "backend alone (its CPU column is the backend's own CPU). ± is the spread "
              "(max − min) of the runs as a share of the median.")
    md.append("")
    md.append("| Scenario | Metric | direct | nginx | HAProxy | portcullis "
              "| p ÷ nginx | p ÷ HAProxy | p ÷ direct |")
    md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    main_table = len(md)

    for sid, title, rows in SCENARIOS:
        meds = {t: medians(runs, sid, t) for t in TARGETS}
        if not any(meds.values()):
            continue
        rate = next((m["rate"] for m in meds.values() if m and m.get("rate")), None)
        if rate:
            title = f"{title} ({rate:,} req/s)"
        sres = {"title": title, "medians": meds, "ratios": {}}
        for i, (field, label, better) in enumerate(rows):
            vals = {t: (meds[t] or {}).get(field) for t in TARGETS}
            p = vals["portcullis"]
            rn, rh, rd = ratio(p, vals["nginx"]), ratio(p, vals["haproxy"]), ratio(p, vals["direct"])
            sres["ratios"][field] = {"nginx": rn, "haproxy": rh, "direct": rd}
            cells = []
            for t in TARGETS:
                c = fmt(vals[t], field)
                sp = (meds[t] or {}).get(field + "_spread_pct")
                if sp is not None and field in ("rps", "mb_s", "cpu_us_per_req"):
                    c += f" ±{sp:.0f}%"
                cells.append(c)
            md.append(f"| {title if i == 0 else ''} | {label} | " + " | ".join(cells)
                      + f" | {fr(rn)} | {fr(rh)} | {fr(rd)} |")
        errs = {t: (meds[t] or {}).get("errors") for t in TARGETS}
        if any(errs.values()):
            md.append(f"| | errors (all runs) | " + " | ".join(
                str(errs[t]) if errs[t] is not None else "–" for t in TARGETS) + " | | | |")
        result["scenarios"][sid] = sres

    # Scenario 8: each proxy against itself with 10 and with 10,000 routes.
    s8 = {}
    for p in PROXIES:
        a, b = medians(runs, "8", p), medians(runs, "8", p + "10k")
        if a and b:
            s8[p] = {"10_routes": a, "10000_routes": b, "ratio": ratio(b.get("rps"), a.get("rps"))}
    if s8:
        result["scenarios"]["8"] = {"title": "8. 10,000 routes vs 10", "by_proxy": s8}
        cells10 = [fmt(s8.get(p, {}).get("10_routes", {}).get("rps"), "rps") for p in PROXIES]
        cells10k = [fmt(s8.get(p, {}).get("10000_routes", {}).get("rps"), "rps") for p in PROXIES]
        cellsr = [fr(s8.get(p, {}).get("ratio")) for p in PROXIES]
        p10k = s8.get("portcullis", {}).get("10000_routes", {}).get("rps")
        md.append("| 8. 10,000 routes (host + path mix) | req/s, 10 routes | – | "
                  + " | ".join(cells10) + " | | | |")
        md.append("| | req/s, 10,000 routes | – | " + " | ".join(cells10k)
                  + f" | {fr(ratio(p10k, s8.get('nginx', {}).get('10000_routes', {}).get('rps')))}"
                  f" | {fr(ratio(p10k, s8.get('haproxy', {}).get('10000_routes', {}).get('rps')))} | |")
        md.append("| | 10,000 ÷ 10 routes | – | " + " | ".join(cellsr) + " | | | |")
    if len(md) == main_table:  # only scenario 9 was run: no empty table
        del md[main_table - 5:]

    # Scenario 9: portcullis against itself, the same route with and without
    # the gateway features, in a table of its own.
    off, on = medians(runs, "9", "portcullis"), medians(runs, "9", "portcullisgw")
    if off and on:
        title = "9. Gateway features on ÷ off (portcullis)"
        s9 = {"title": title, "medians": {"portcullis": off, "portcullisgw": on},
              "features_off": "portcullis", "features_on": "portcullisgw", "ratios": {}}
        md.append("")
        md.append("Scenario 9: portcullis as in scenario 1 (features off; it ignores the token) "
                  "and a second instance with JWT verification, a per-consumer rate limit that is "
                  "never hit, the admin listener serving metrics and a JSON access log to a file "
                  "(features on), sent the same requests, each with one of 100 users' bearer "
                  "tokens.")
        md.append("")
        s9["ratios"] = with_and_without(md, title, ("features off", "features on", "on ÷ off"),
                                        off, on)
        gw = [r for r in runs if r["scenario"] == "9" and r["target"] == "portcullisgw"]
        reqs = sum(r.get("requests", 0) for r in gw)
        lines = sum(r.get("log_lines", 0) for r in gw)
        size = sum(r.get("log_bytes", 0) for r in gw)
        limited = max((r.get("rate_limited", 0) for r in gw), default=0)
        # Lines from requests still in flight when wrk stops, which wrk does
        # not count, make this a hair above 1; well below 1 means lines were
        # dropped because the log writer fell behind.
        s9["access_log"] = {"lines_per_request": ratio(lines, reqs),
                            "bytes_per_request": ratio(size, reqs),
                            "bytes_last_run": gw[-1].get("log_bytes") if gw else None}
        s9["rate_limited"] = limited
        md.append(f"| access log lines ÷ requests | – | {fr(ratio(lines, reqs))} | |")
        bpr = ratio(size, reqs)
        md.append(f"| access log bytes/req | – | {'–' if bpr is None else f'{bpr:.0f}'} | |")
        md.append(f"| refused by the rate limit (429) | – | {limited} | |")
        errs = [(m or {}).get("errors") for m in (off, on)]
        if any(errs):
            md.append("| errors (all runs) | " + " | ".join(
                str(e) if e is not None else "–" for e in errs) + " | |")
        result["scenarios"]["9"] = s9

    # Scenario 10: portcullis against itself, the same route with and
    # without api_key and a per-consumer rate limit.
    off, on = medians(runs, "10", "portcullis"), medians(runs, "10", "portcullisak")
    if off and on:
        title = "10. API key + per-consumer limit ÷ none (portcullis)"
        s10 = {"title": title, "medians": {"portcullis": off, "portcullisak": on},
               "ratios": {}}
        md.append("")
        md.append("Scenario 10: portcullis as in scenario 1 (no policies; it ignores the key) "
                  "and a second instance whose route takes an API key (one of 100 consumers') "
                  "and counts it against a local per-consumer rate limit that is never hit, "
                  "sent the same requests.")
        md.append("")
        s10["ratios"] = with_and_without(
            md, title, ("none", "api_key + rate_limit", "with ÷ without"), off, on)
        basic = medians(runs, "10", "portcullisba")
        if basic:
            s10["medians"]["portcullisba"] = basic
            s10["basic_vs_api_key"] = {f: ratio(basic.get(f), on.get(f))
                                       for f in ("rps", "cpu_us_per_req")}
            md.append(f"| basic_auth (cached) + rate_limit, req/s | | {fmt(basic.get('rps'), 'rps')} "
                      f"| {fr(ratio(basic.get('rps'), off.get('rps')))} |")
            md.append(f"| basic_auth ÷ api_key, req/s | | "
                      f"| {fr(s10['basic_vs_api_key']['rps'])} |")
            md.append(f"| basic_auth ÷ api_key, CPU µs/req | | "
                      f"| {fr(s10['basic_vs_api_key']['cpu_us_per_req'])} |")
        result["scenarios"]["10"] = s10

    # The targets.
    checks = []

    def check(scenario, text, value, ok_if):
        met = None if value is None else ok_if(value)
        checks.append({"scenario": scenario, "target": text, "measured": value, "met": met})

    sc = result["scenarios"]
    for sid in ("1", "2", "4"):
        if sid not in sc:
            continue
        r = sc[sid]["ratios"]
        for other, name in (("nginx", "nginx"), ("haproxy", "HAProxy")):
            check(sid, f"req/s ≥ 1.0 × {name}", r["rps"][other], lambda v: v >= 1.0)
            check(sid, f"CPU/req ≤ {name}'s", r["cpu_us_per_req"][other], lambda v: v <= 1.0)
            check(sid, f"p99 ≤ {name}'s", r["p99_ms"][other], lambda v: v <= 1.0)
    if "3" in sc:
        check("3", "handshakes/s ≥ nginx", sc["3"]["ratios"]["rps"]["nginx"], lambda v: v >= 1.0)
    if "6" in sc:
        check("6", "memory/conn ≤ 2 × nginx", sc["6"]["ratios"]["rss_kib_per_conn"]["nginx"],
              lambda v: v <= 2.0)
    if "8" in sc and "portcullis" in sc["8"]["by_proxy"]:
        check("8", "10,000-route req/s ≥ 0.95 × 10-route", sc["8"]["by_proxy"]["portcullis"]["ratio"],
              lambda v: v >= 0.95)
    if "11" in sc:
        r = sc["11"]["ratios"]
        check("11", "cache hits: CPU/req ≤ nginx's ÷ 1.5", r["cpu_us_per_req"]["nginx"],
              lambda v: v <= 1 / 1.5)
        check("11", "cache hits: req/s ≥ nginx", r["rps"]["nginx"], lambda v: v >= 1.0)
    if "12-gzip" in sc:
        check("12", "gzip level 6: req/s ≥ 1.0 × nginx", sc["12-gzip"]["ratios"]["rps"]["nginx"],
              lambda v: v >= 1.0)
    if "9" in sc:
        check("9", "features on ≥ 0.85 × off (req/s)", sc["9"]["ratios"]["rps"],
              lambda v: v >= 0.85)
        # Where the load generator's CPU caps req/s, this is what the features cost.
        checks.append({"scenario": "9", "target": "CPU/req, features on ÷ off",
                       "measured": sc["9"]["ratios"]["cpu_us_per_req"], "met": None,
                       "note": "informative"})
    if "10" in sc:
        check("10", "api_key + per-consumer limit ≥ 0.95 × none (req/s)",
              sc["10"]["ratios"]["rps"], lambda v: v >= 0.95)
        if "basic_vs_api_key" in sc["10"]:
            check("10", "basic_auth (cached) ≥ 0.98 × api_key (req/s)",
                  sc["10"]["basic_vs_api_key"]["rps"], lambda v: v >= 0.98)
        checks.append({"scenario": "10", "target": "CPU/req, api_key + limit ÷ none",
                       "measured": sc["10"]["ratios"]["cpu_us_per_req"], "met": None,
                       "note": "informative"})
    result["targets"] = checks

    md.append("")
    md.append("| Scenario | Target (portcullis) | Measured ratio | Met |")
    md.append("|---|---|---:|---|")
    for c in checks:
        met = {True: "yes", False: "**no**", None: c.get("note", "not measured")}[c["met"]]
        md.append(f"| {c['scenario']} | {c['target']} | {fr(c['measured'])} | {met} |")

    text = "\n".join(md) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "latest.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write("\n")
    with open(os.path.join(out_dir, "latest.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
