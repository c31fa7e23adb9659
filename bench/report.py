#!/usr/bin/env python3
"""Turns the raw results of bench/run.sh into Markdown.

--out FILE writes the generated section between the markers
`<!-- harness:begin -->` and `<!-- harness:end -->` of FILE (creating FILE when it does
not exist) and leaves the rest of FILE alone; --summary prints the medians and the
targets to stdout. Standard library only.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

BEGIN = "<!-- harness:begin -->"
END = "<!-- harness:end -->"

ORDER = [
    "direct",
    "haproxy-copy",
    "haproxy-splice",
    "weir-forward",
    "weir-forward-notel",
    "weir-pair-plain",
    "weir-pair-plain-notel",
    "weir-pair-mtls",
    "weir-pair-mtls-notel",
]

# metric, title, unit, scale (raw -> shown), decimals, ratio to direct, ratio to HAProxy copy
FIGURES = [
    ("tput1_gbps", "Throughput, 1 stream (iperf3)", "Gbit/s", 1, 2, True, True),
    ("tput4_gbps", "Throughput, 4 streams (iperf3)", "Gbit/s", 1, 2, True, True),
    ("added_p50_us", "Added p50 latency, 64-byte request/response on a kept connection",
     "µs", 1, 1, False, True),
    ("added_p99_us", "Added p99 latency, 64-byte request/response on a kept connection",
     "µs", 1, 1, False, True),
    ("cps", "New connections per second (connect, 64-byte exchange, close; 16 in flight)",
     "conn/s", 1, 0, True, True),
    ("cpu_us_per_conn", "Proxy CPU per new connection (during the connections test)",
     "CPU µs", 1, 1, False, True),
    ("idle_bytes_per_conn", "Proxy RSS per idle connection", "KiB", 1 / 1024, 2, False, True),
    ("cpu_s_per_gb", "Proxy CPU per GB forwarded (1 stream)", "CPU s/GB", 1, 3, False, True),
    ("rss_rest_kib", "Proxy RSS at rest", "MB", 1024 / 1e6, 1, False, True),
]


def load(path):
    data = defaultdict(lambda: defaultdict(dict))  # metric -> variant -> round -> value
    for line in open(path, encoding="utf-8"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 4:
            continue
        rnd, variant, metric, value = parts
        try:
            data[metric][variant][int(rnd)] = float(value)
        except ValueError:
            continue
    # Added latency: against direct in the same round.
    for q in ("p50_us", "p99_us"):
        direct = data[q].get("direct", {})
        for variant, rounds in data[q].items():
            for rnd, value in rounds.items():
                if rnd in direct:
                    data["added_" + q][variant][rnd] = value - direct[rnd]
    return data


def stats(values):
    v = sorted(values)
    return statistics.median(v), v[0], v[-1]


def median(data, metric, variant):
    rounds = data.get(metric, {}).get(variant)
    if not rounds:
        return None
    return statistics.median(rounds.values())


def variants_of(data):
    seen = set()
    for metric in data.values():
        seen.update(metric.keys())
    return [v for v in ORDER if v in seen] + sorted(seen - set(ORDER))


def fmt(x, decimals):
    if x is None:
        return "—"
    return f"{x:,.{decimals}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def figure_table(data, variants, fig):
    metric, title, unit, scale, dec, vs_direct, vs_copy = fig
    rows = [f"#### {title} ({unit})", ""]
    head = "| variant | median | min | max |"
    rule = "|---|---:|---:|---:|"
    if vs_direct:
        head += " ÷ direct |"
        rule += "---:|"
    if vs_copy:
        head += " ÷ HAProxy copy |"
        rule += "---:|"
    rows += [head, rule]
    direct = median(data, metric, "direct")
    copy = median(data, metric, "haproxy-copy")
    for v in variants:
        rounds = data.get(metric, {}).get(v)
        if not rounds or (v == "direct" and metric.startswith("added_")):
            continue
        med, lo, hi = stats(rounds.values())
        row = f"| {v} | {fmt(med * scale, dec)} | {fmt(lo * scale, dec)} | {fmt(hi * scale, dec)} |"
        if vs_direct:
            row += f" {ratio(med, direct)} |"
        if vs_copy:
            row += f" {ratio(med, copy)} |"
        rows.append(row)
    return rows + [""]


def summary_table(data, variants):
    cols = FIGURES
    head = "| variant | " + " | ".join(f"{short_name(f[0])} ({f[2]})" for f in cols) + " |"
    rule = "|---|" + "---:|" * len(cols)
    rows = [head, rule]
    for v in variants:
        cells = []
        for metric, _, _, scale, dec, _, _ in cols:
            m = median(data, metric, v)
            cells.append(fmt(None if m is None else m * scale, dec))
        rows.append(f"| {v} | " + " | ".join(cells) + " |")
    return rows


def short_name(metric):
    return {
        "tput1_gbps": "1 stream",
        "tput4_gbps": "4 streams",
        "added_p50_us": "+p50",
        "added_p99_us": "+p99",
        "cps": "new",
        "cpu_us_per_conn": "CPU/conn",
        "idle_bytes_per_conn": "RSS/idle conn",
        "cpu_s_per_gb": "CPU/GB",
        "rss_rest_kib": "RSS at rest",
    }[metric]


def sides_table(data, variants):
    pairs = [v for v in variants if v.startswith("weir-pair")]
    if not pairs:
        return []
    rows = [
        "#### Sidecar pairs, per side (medians)",
        "",
        "| variant | side | RSS per idle connection (KiB) | RSS at rest (MB) | CPU s/GB (1 stream) | CPU µs per new connection |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for v in pairs:
        for side in ("client", "server"):
            idle = median(data, f"idle_bytes_per_conn_{side}", v)
            rest = median(data, f"rss_rest_kib_{side}", v)
            cpu = median(data, f"cpu_s_per_gb_{side}", v)
            per_conn = median(data, f"cpu_us_per_conn_{side}", v)
            rows.append(
                f"| {v} | {side} | {fmt(None if idle is None else idle / 1024, 2)} | "
                f"{fmt(None if rest is None else rest * 1024 / 1e6, 1)} | {fmt(cpu, 3)} | "
                f"{fmt(per_conn, 1)} |"
            )
    return rows + [""]


def latency_table(data, variants):
    rows = [
        "#### Round-trip latency as measured (µs, medians over rounds)",
        "",
        "| variant | p50 | p99 |",
        "|---|---:|---:|",
    ]
    for v in variants:
        p50, p99 = median(data, "p50_us", v), median(data, "p99_us", v)
        if p50 is not None:
            rows.append(f"| {v} | {fmt(p50, 1)} | {fmt(p99, 1)} |")
    return rows + [""]


def best(values, higher):
    values = [x for x in values if x is not None]
    if not values:
        return None
    return max(values) if higher else min(values)


def targets(data, meta):
    """(target, measured, verdict) rows, computed from medians of this run."""
    m = lambda metric, v: median(data, metric, v)  # noqa: E731
    rows = []

    def at_least(name, value, bound, unit, dec, what):
        if value is None or bound is None:
            rows.append((name, "not measured", "—"))
            return
        verdict = "met" if value >= bound else f"missed by {fmt(bound - value, dec)} {unit} ({(1 - value / bound) * 100:.0f}% short)"
        rows.append((name, f"{fmt(value, dec)} {unit} vs {fmt(bound, dec)} {unit} {what}", verdict))

    def at_most(name, value, bound, unit, dec, what):
        if value is None or bound is None:
            rows.append((name, "not measured", "—"))
            return
        over = (value / bound - 1) * 100 if bound > 0 else float("inf")
        verdict = "met" if value <= bound else f"missed by {fmt(value - bound, dec)} {unit} ({over:.0f}% over)"
        rows.append((name, f"{fmt(value, dec)} {unit} vs {fmt(bound, dec)} {unit} {what}", verdict))

    for s in ("1", "4"):
        at_least(f"weir proxy forward throughput, {s} stream{'s' if s != '1' else ''} ≥ HAProxy splice",
                 m(f"tput{s}_gbps", "weir-forward"), m(f"tput{s}_gbps", "haproxy-splice"),
                 "Gbit/s", 2, "(HAProxy splice)")
    hap_p50 = best([m("added_p50_us", "haproxy-copy"), m("added_p50_us", "haproxy-splice")], False)
    at_most("weir proxy forward added p50 ≤ HAProxy's (better mode)",
            m("added_p50_us", "weir-forward"), hap_p50, "µs", 1, "(HAProxy)")
    hap_cps = best([m("cps", "haproxy-copy"), m("cps", "haproxy-splice")], True)
    at_least("weir proxy forward connections/s ≥ HAProxy's (better mode)",
             m("cps", "weir-forward"), hap_cps, "conn/s", 0, "(HAProxy)")
    fwd_idle = m("idle_bytes_per_conn", "weir-forward")
    at_most("RSS per idle plaintext connection ≤ 2 KiB (weir proxy forward)",
            None if fwd_idle is None else fwd_idle / 1024, 2, "KiB", 2, "(target)")
    for v, label in (("weir-pair-plain", "plaintext"), ("weir-pair-mtls", "mTLS")):
        sides = [m(f"idle_bytes_per_conn_{s}", v) for s in ("client", "server")]
        worst = best(sides, True)
        bound = 2 if label == "plaintext" else 24
        at_most(f"RSS per idle {label} connection ≤ {bound} KiB (worse sidecar of {v})",
                None if worst is None else worst / 1024, bound, "KiB", 2, "(target)")
    rests = [("weir-forward", m("rss_rest_kib", "weir-forward"))]
    for v in ("weir-pair-plain", "weir-pair-mtls"):
        for s in ("client", "server"):
            rests.append((f"{v} {s}", m(f"rss_rest_kib_{s}", v)))
    measured = [(n, r) for n, r in rests if r is not None]
    if measured:
        name, worst = max(measured, key=lambda x: x[1])
        at_most(f"RSS at rest ≤ 12 MB (largest: {name})", worst * 1024 / 1e6, 12, "MB", 1, "(target)")
    else:
        rows.append(("RSS at rest ≤ 12 MB", "not measured", "—"))
    direct = m("tput1_gbps", "direct")
    at_least("mTLS sidecar pair, 1 stream ≥ 40% of direct",
             m("tput1_gbps", "weir-pair-mtls"), None if direct is None else 0.4 * direct,
             "Gbit/s", 2, "(40% of direct)")
    for base in ("weir-forward", "weir-pair-plain", "weir-pair-mtls"):
        on_t, off_t = m("tput1_gbps", base), m("tput1_gbps", base + "-notel")
        on_c, off_c = m("cps", base), m("cps", base + "-notel")
        if off_t is None:
            rows.append((f"{base}: telemetry on vs off, throughput ≤ 2%, conn/s ≤ 5%",
                         "not measured: this weir build has no telemetry-off switch", "—"))
            continue
        dt = (1 - on_t / off_t) * 100
        dc = (1 - on_c / off_c) * 100 if on_c and off_c else None
        ok = dt <= 2 and (dc is not None and dc <= 5)
        # Signed change from off to on: negative means telemetry made it slower.
        conns = ("not measured" if dc is None
                 else f"{on_c:,.0f} vs {off_c:,.0f} conn/s ({-dc:+.1f}%)")
        rows.append((f"{base}: telemetry on vs off, throughput ≤ 2%, conn/s ≤ 5%",
                     f"1 stream {on_t:.2f} vs {off_t:.2f} Gbit/s ({-dt:+.1f}%); {conns}",
                     "met" if ok else "missed"))
    rows.append(("Scrape of 10,000 series < 50 ms",
                 "see the criterion figures (crates/telemetry/benches/recorder.rs)", "—"))
    return rows


def targets_table(data, meta):
    rows = ["| target | measured (medians of this run) | result |", "|---|---|---|"]
    for name, measured, verdict in targets(data, meta):
        rows.append(f"| {name} | {measured} | {verdict} |")
    return rows


def section(data, meta):
    variants = variants_of(data)
    out = [
        BEGIN,
        f"## Per-hop figures ({meta['mode']} run, {meta['date']})",
        "",
        f"Command: `{meta['command']}` (took {meta['elapsed_s']} s). "
        f"{meta['repeat']} round(s), variants alternating within each round, "
        f"{meta['seconds']} s per throughput, latency and connection test, "
        f"{meta['idle']} idle connections.",
        "",
        f"Machine: {meta['cpu']}, {meta['cpus']} CPUs, {meta['mem']}, Linux {meta['kernel']}. "
        f"Load generators on CPU {meta['cpu_load']}, proxies on CPU {meta['cpu_proxy']}. "
        f"{meta['weir']} at {meta['commit']}; {meta['haproxy']}; {meta['iperf3']}.",
        "",
        "### Medians",
        "",
    ]
    out += summary_table(data, variants)
    out += [
        "",
        "Sidecar pairs count both sidecars in RSS and CPU figures (per side below). "
        "Added latency is the variant's round trip minus direct's in the same round.",
        "",
        "### Targets",
        "",
    ]
    out += targets_table(data, meta)
    out += ["", "### Each figure: median, min, max over rounds, and ratios of medians", ""]
    for fig in FIGURES:
        out += figure_table(data, variants, fig)
    out += latency_table(data, variants)
    out += sides_table(data, variants)
    failed = sorted({v for v, r in data.get("failed", {}).items() if r})
    if failed:
        out += [f"**Variants that failed to pass traffic in some round:** {', '.join(failed)}", ""]
    out.append(END)
    return "\n".join(out) + "\n"


def write(path, text):
    try:
        old = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        old = "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        new = head + text.rstrip("\n") + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--out")
    p.add_argument("--summary", action="store_true")
    a = p.parse_args()
    data = load(a.results)
    meta = json.load(open(a.meta, encoding="utf-8"))
    if a.out:
        write(a.out, section(data, meta))
    if a.summary:
        variants = variants_of(data)
        print("\n".join(summary_table(data, variants)))
        print()
        for name, measured, verdict in targets(data, meta):
            print(f"- {name}: {measured} -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
