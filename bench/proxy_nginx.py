#!/usr/bin/env python3
"""`idemp serve` against nginx doing plain pass-through, in one run.

    python3 bench/proxy_nginx.py --idemp target/release/idemp [--seconds 5] [--connections 16]

One nginx serves as the upstream (`return 201` with a small JSON body, one worker);
a second nginx proxies to it with keep-alive and nothing else (the anchor: what one
extra hop costs on this machine); `idemp serve` proxies to the same upstream with each
store (memory, SQLite, Redis, Postgres), guarding POSTs with a unique
`Idempotency-Key` per request (every request claims, runs and stores), and replaying
one key (every request after the first is a replay). `wrk` drives each target with
the same connections and duration, in the same run, so the ratios compare like with
like. Prints one JSON object per target on stdout.

Needs nginx and wrk (installed with apt-get when missing), Redis and PostgreSQL on
loopback (scripts/services.sh). Each run uses its own Redis key prefix and Postgres
schema, removed at the end. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = '{"model":"m","messages":[{"role":"user","content":"charge 10 EUR to card 4242"}],"max_tokens":64}'
RESPONSE = '{"id":"ch_1","status":"succeeded"}'


def log(msg: str) -> None:
    print(f"[proxy_nginx] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def ensure_tools() -> None:
    missing = [p for p, t in (("nginx-light", "nginx"), ("wrk", "wrk")) if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(workdir: Path, name: str, server_block: str, workers: int) -> subprocess.Popen:
    d = workdir / name
    (d / "logs").mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(
        f"""
{user}
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  {server_block}
}}
"""
    )
    return subprocess.Popen([nginx_bin(), "-c", str(conf), "-p", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


WRK_LUA = """
local n = 0
function setup(thread) n = n + 1; thread:set("tid", n) end
function init(args) prefix = tostring(tid) .. "-" .. tostring(os.time()) .. "-"; counter = 0 end
local body = [[%BODY%]]
request = function()
  counter = counter + 1
  local key
  if mode == "replay" then key = "bench-replay-key" else key = "k" .. prefix .. counter end
  return wrk.format("POST", "/v1/charges", {["Content-Type"] = "application/json", ["Idempotency-Key"] = key}, body)
end
"""


def wrk(port: int, mode: str, seconds: float, connections: int, workdir: Path) -> dict:
    script = workdir / f"wrk-{mode}.lua"
    script.write_text(f'mode = "{mode}"\n' + WRK_LUA.replace("%BODY%", BODY))
    if mode == "replay":
        # The first request stores the response every later one replays.
        subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", str(script), f"http://127.0.0.1:{port}/"], capture_output=True, check=False)
    threads = max(1, min(2, connections))
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        mult = {"us": 1.0, "ms": 1e3, "s": 1e6}[unit]
        lat[f"p{pct}_us"] = float(val) * mult
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    return {"rps": rps, **lat, "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1).strip() if errors else ""}


def cleanup_redis(prefix: str) -> None:
    try:
        keys = subprocess.run(["redis-cli", "-h", "127.0.0.1", "--scan", "--pattern", f"{prefix}*"], capture_output=True, text=True, check=False).stdout.split()
        for i in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "-h", "127.0.0.1", "DEL", *keys[i : i + 500]], capture_output=True, check=False)
    except OSError:
        pass


def cleanup_pg(schema: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE"], capture_output=True, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idemp", required=True, help="the idemp binary (release build)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--stores", default="memory,sqlite,redis,postgres")
    args = ap.parse_args()
    ensure_tools()
    tag = f"{os.getpid()}_{int(time.time())}"
    redis_prefix = f"idemp_bench_nginx_{tag}"
    pg_schema = f"idemp_bench_nginx_{tag}"
    procs: list[subprocess.Popen] = []
    results = []
    with tempfile.TemporaryDirectory(prefix="idemp-nginx-bench-") as tmp:
        work = Path(tmp)
        try:
            up = free_port()
            procs.append(start_nginx(work, "upstream", f"""
  server {{ listen 127.0.0.1:{up}; location / {{ default_type application/json; return 201 '{RESPONSE}'; }} }}""", 1))
            wait_port(up)
            nx = free_port()
            procs.append(start_nginx(work, "passthrough", f"""
  upstream up {{ server 127.0.0.1:{up}; keepalive 256; }}
  server {{ listen 127.0.0.1:{nx};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""", 2))
            wait_port(nx)
            log(f"upstream nginx :{up}, pass-through nginx :{nx}")
            results.append({"target": "direct", "mode": "unique", **wrk(up, "unique", args.seconds, args.connections, work)})
            results.append({"target": "nginx", "mode": "unique", **wrk(nx, "unique", args.seconds, args.connections, work)})
            stores = {
                "memory": "memory:",
                "sqlite": f"sqlite://{work}/bench.db",
                "redis": f"redis://127.0.0.1:6379/0?prefix={redis_prefix}",
                "postgres": f"postgres://postgres@127.0.0.1:5432/test?schema={pg_schema}",
            }
            for name in args.stores.split(","):
                url = stores[name]
                port = free_port()
                p = subprocess.Popen(
                    [args.idemp, "serve", "--upstream", f"http://127.0.0.1:{up}", "--listen", f"127.0.0.1:{port}", "--admin", "off", "--store", url],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    env=dict(os.environ, IDEMP_LOG="warn"),
                )
                procs.append(p)
                try:
                    wait_port(port)
                    for mode in ("unique", "replay"):
                        r = wrk(port, mode, args.seconds, args.connections, work)
                        results.append({"target": f"idemp-{name}", "mode": mode, **r})
                        log(f"idemp-{name} {mode}: {r['rps']:.0f} req/s")
                finally:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        p.kill()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGQUIT if "nginx" in str(p.args[0]) else signal.SIGTERM)
                    try:
                        p.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        p.kill()
            cleanup_redis(redis_prefix)
            cleanup_pg(pg_schema)
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
