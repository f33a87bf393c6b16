"""Streamed responses through `idemp serve` (bench/steps/50-proxy-stream.sh)."""

import re

RAW = ["bench_proxy_stream"]


def parse(text):
    ttfb, rss = {}, None
    for line in text.splitlines():
        m = re.match(r"ttfb (\S+) n=(\d+) p50_us=([\d.]+) p99_us=([\d.]+)", line)
        if m:
            ttfb[m.group(1)] = {"n": int(m.group(2)), "p50": float(m.group(3)), "p99": float(m.group(4))}
        m = re.match(r"rss responses=(\d+) size_mib=(\d+) baseline_kib=(\d+) peak_kib=(\d+) bytes_read=(\d+)", line)
        if m:
            rss = {k: int(v) for k, v in zip(["responses", "size_mib", "baseline", "peak", "read"], m.groups())}
    return ttfb, rss


def build(run, lib):
    a = lib.Area(
        "proxy_stream",
        "Streamed responses through `idemp serve`",
        "`cargo bench -p idemp-cli --bench proxy_stream`: a loopback upstream streams a server-sent-events "
        "response (first event at once, nine more 1 ms apart); each request carries a fresh "
        "`Idempotency-Key`, so through the proxy every one is claimed, streamed through the tee and "
        "recorded (memory store). *Time to first byte* is measured by the client from sending to the "
        "first body byte, direct and through the proxy, interleaved. Then a fresh proxy serves 16 "
        "concurrent guarded 64 MiB responses (default 8 MiB stored-response limit), each read to its "
        "end; its peak resident memory (VmHWM) is reported.",
    )
    ttfb, rss = parse(run.text("bench_proxy_stream"))
    if not ttfb and not rss:
        a.notes.append(lib.nm(run.why_missing("bench_proxy_stream")))
        return [a]
    a.header = ["measure", "direct", "through idemp serve", "difference"]
    d, p = ttfb.get("direct"), ttfb.get("proxy")
    if d and p:
        a.rows.append(["time to first byte p50", f"{d['p50']:.0f} µs", f"{p['p50']:.0f} µs", f"+{p['p50'] - d['p50']:.0f} µs"])
        a.rows.append(["time to first byte p99", f"{d['p99']:.0f} µs", f"{p['p99']:.0f} µs", f"+{p['p99'] - d['p99']:.0f} µs"])
        a.headline.append(f"first streamed byte through the proxy +{(p['p50'] - d['p50']) / 1000:.2f} ms at p50 (goal: within 1 ms)")
        a.bars.append(("direct p50", d["p50"], "bound"))
        a.bars.append(("proxy p50", p["p50"], "idemp"))
        a.bars.append(("direct p99", d["p99"], "bound"))
        a.bars.append(("proxy p99", p["p99"], "idemp"))
        a.bar_unit, a.bar_title = "µs", "time to first streamed byte (shorter is faster)"
    if rss:
        total = rss["responses"] * rss["size_mib"]
        a.rows.append([
            f"peak proxy RSS, {rss['responses']} × {rss['size_mib']} MiB guarded responses",
            "–",
            f"{rss['peak'] / 1024:.0f} MiB (baseline {rss['baseline'] / 1024:.0f} MiB)",
            f"{total} MiB streamed",
        ])
        a.headline.append(f"peak RSS {rss['peak'] / 1024:.0f} MiB while streaming {total} MiB of guarded responses (goal: under 200 MiB)")
        if rss["read"] != total << 20:
            a.notes.append(f"the clients read {rss['read']} bytes, not {total << 20}: a response was cut short")
    a.notes.append("Upstream, clients and proxy share the machine's 2 cores; the p99 carries that noise. "
                   "Each proxy request also writes its record (claim, complete) to the memory store.")
    return [a]
