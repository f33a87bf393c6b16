"""The Python examples run and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_decorator_example(sqlite_url):
    assert "attempts: 8, charges: 1" in run("decorator.py", sqlite_url)


def test_agent_tool_loop_example():
    assert "lookups executed: 1, emails sent: 1" in run("agent_tool_loop.py")


def test_fastapi_example():
    from fastapi.testclient import TestClient  # scripts/pyenv/py.txt installs fastapi

    sys.path.insert(0, str(EXAMPLES))
    try:
        import fastapi_agent_runs as ex
    finally:
        sys.path.pop(0)
    client = TestClient(ex.app)
    body = {"task": "refund order 7", "customer_id": "c-1"}
    first = client.post("/agent/run", json=body, headers={"Idempotency-Key": "run-7"})
    again = client.post("/agent/run", json=body, headers={"Idempotency-Key": "run-7"})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    other = client.post("/agent/run", json={**body, "task": "other"}, headers={"Idempotency-Key": "run-7"})
    assert other.status_code == 422
    # Without a key: derived from the body, so an identical retry is deduplicated too.
    a = client.post("/agent/run", json={"task": "t", "customer_id": "c-2"})
    b = client.post("/agent/run", json={"customer_id": "c-2", "task": "t"})
    assert a.json() == b.json()
    assert ex.runs_started == 2
