"""The proxy against nginx doing plain pass-through (bench/proxy_nginx.py)."""

import json

RAW = ["proxy_nginx"]

GOALS = {  # target, mode -> minimum ratio to nginx pass-through
    ("idemp-memory", "unique"): 0.8,
    ("idemp-sqlite", "unique"): 0.5,
    ("idemp-redis", "unique"): 0.6,
    ("idemp-postgres", "unique"): 0.25,
    ("idemp-memory", "replay"): 1.0,
    ("idemp-sqlite", "replay"): 1.0,
    ("idemp-redis", "replay"): 1.0,
    ("idemp-postgres", "replay"): 1.0,
}


def build(run, lib):
    a = lib.Area(
        "proxy_nginx",
        "Proxy against nginx pass-through",
        "wrk at 16 connections against one nginx upstream (`return 201`): directly, through a "
        "second nginx that only proxies (keep-alive, the anchor), and through `idemp serve` "
        "guarding every POST, with unique keys (each request claims, runs and stores) and "
        "with one key replayed. Load generator, upstream and proxy share the machine's cores.",
    )
    rows = []
    for line in run.text("proxy_nginx").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    if not rows:
        a.notes.append(lib.nm(run.why_missing("proxy_nginx")))
        return [a]
    base = next((r for r in rows if r["target"] == "nginx"), None)
    a.header = ["target", "keys", "req/s", "p50", "p99", "vs nginx", "goal"]
    for r in rows:
        ratio = lib.ratio(r["rps"], base["rps"]) if base else "n/a"
        goal = GOALS.get((r["target"], r["mode"]))
        met = ""
        if goal is not None and base:
            met = f"≥ {goal:g}× " + ("(met)" if r["rps"] / base["rps"] >= goal else "(missed)")
        a.rows.append([
            r["target"],
            r["mode"],
            f"{r['rps']:,.0f}",
            f"{r.get('p50_us', 0) / 1000:.2f} ms",
            f"{r.get('p99_us', 0) / 1000:.2f} ms",
            ratio,
            met,
        ])
        if r["target"].startswith("idemp") and base:
            a.bars.append((f"{r['target']} {r['mode']}", r["rps"], "idemp"))
            if goal is not None:
                a.headline.append(f"{r['target'][6:]} {r['mode']} {r['rps'] / base['rps']:.2f}× nginx (goal {goal:g}×)")
    if base:
        a.bars.insert(0, ("nginx pass-through", base["rps"], "peer"))
    a.bar_unit = "req/s"
    a.bar_title = "Guarded POSTs through idemp serve vs nginx pass-through (wrk -c16)"
    return [a]
