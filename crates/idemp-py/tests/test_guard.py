"""The guard from Python: replay, waiting, failures, ambiguity, the manual API, and
the held properties with real processes and a real crash."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import idemp

HERE = Path(__file__).resolve().parent


def test_decorator_replays_and_keys_by_argument_name():
    calls = []

    @idemp.idempotent(store=idemp.open_store("memory:"))
    def create_invoice(user_id: int, amount: float, note: str = "") -> dict:
        calls.append((user_id, amount))
        return {"invoice": len(calls), "amount": amount, "lines": (1, 2)}

    first = create_invoice(1, 100.0)
    assert first == {"invoice": 1, "amount": 100.0, "lines": [1, 2]}  # as stored: JSON
    assert create_invoice(user_id=1, amount=100.0) == first
    assert create_invoice(1, amount=100.0, note="") == first
    assert create_invoice(2, 100.0)["invoice"] == 2
    assert len(calls) == 2
    assert create_invoice.key_for(1, 100.0) == create_invoice.key_for(amount=100.0, user_id=1)
    assert create_invoice.guard.scope.endswith("create_invoice")


def test_two_functions_never_share_a_key():
    store = idemp.open_store("memory:")

    @idemp.idempotent(store=store)
    def a(x):
        return "a"

    @idemp.idempotent(store=store)
    def b(x):
        return "b"

    assert (a(1), b(1)) == ("a", "b")


def test_custom_key_and_fingerprint_mismatch():
    @idemp.idempotent(store="memory:", key=lambda user, amount: f"invoice-{user}", fingerprint=True)
    def invoice(user, amount):
        return amount

    assert invoice(1, 100) == 100
    assert invoice(1, 100) == 100
    with pytest.raises(idemp.MismatchError):
        invoice(1, 200)


def test_methods_are_keyed_without_self():
    class Billing:
        def __init__(self, name):
            self.name = name
            self.calls = 0

        @idemp.idempotent(store="memory:")
        def charge(self, order: str) -> str:
            self.calls += 1
            return f"{order}-charged"

    one, two = Billing("a"), Billing("b")
    assert one.charge("o-1") == "o-1-charged"
    assert two.charge("o-1") == "o-1-charged"
    assert one.calls + two.calls == 1


def test_reject_and_sticky_failures():
    g = idemp.Guard(idemp.open_store("memory:"), scope="s", on_duplicate="reject", on_failure="sticky")
    assert g.run("k", lambda: 1) == 1
    with pytest.raises(idemp.DuplicateError) as e:
        g.run("k", lambda: 2)
    assert e.value.state == "completed"

    def boom():
        raise ValueError("card declined", 402)

    with pytest.raises(ValueError):
        g.run("k2", boom)
    with pytest.raises(idemp.DuplicateError):
        g.run("k2", boom)
    replay = idemp.Guard(g.store, scope="s", on_failure="sticky")
    with pytest.raises(idemp.FailedError) as f:
        replay.run("k2", lambda: "never")
    assert f.value.kind == "builtins.ValueError"
    assert f.value.error_message == str(ValueError("card declined", 402))
    assert f.value.data == {"args": ["card declined", 402]}


def test_failures_release_by_default():
    g = idemp.Guard(idemp.open_store("memory:"))
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("timeout")
        return "ok"

    with pytest.raises(RuntimeError):
        g.run("k", flaky)
    assert g.run("k", flaky) == "ok"
    assert len(attempts) == 2


def test_threads_wait_for_the_running_call_and_run_once(sqlite_url):
    g = idemp.Guard(sqlite_url, scope="wait", on_duplicate="wait", wait_timeout=30)
    runs = []
    gate = threading.Event()

    def slow():
        runs.append(threading.get_ident())
        gate.wait(10)
        return {"receipt": "r-1"}

    results = []
    threads = [threading.Thread(target=lambda: results.append(g.run("order-7", slow))) for _ in range(8)]
    for t in threads:
        t.start()
    while not runs:
        time.sleep(0.01)
    time.sleep(0.2)  # the others are waiting (GIL released) while the owner runs
    gate.set()
    for t in threads:
        t.join(30)
    assert len(runs) == 1
    assert results == [{"receipt": "r-1"}] * 8


async def test_async_tasks_race_one_key_and_execute_once(sqlite_url):
    runs = []

    @idemp.idempotent(store=sqlite_url, on_duplicate="wait", wait_timeout=30)
    async def transfer(account: str, cents: int) -> dict:
        runs.append(account)
        await asyncio.sleep(0.2)
        return {"ok": True, "cents": cents}

    results = await asyncio.gather(*[transfer("acct-1", 500) for _ in range(32)])
    assert runs == ["acct-1"]
    assert results == [{"ok": True, "cents": 500}] * 32


async def test_async_in_progress_without_wait():
    g = idemp.Guard(idemp.open_store("memory:"), scope="a")
    started = asyncio.Event()

    async def slow():
        started.set()
        await asyncio.sleep(0.3)
        return 1

    task = asyncio.create_task(g.arun("k", slow))
    await started.wait()
    with pytest.raises(idemp.InProgressError) as e:
        await g.arun("k", slow)
    assert 0 < e.value.retry_after <= 60
    assert await task == 1


async def test_cancelled_task_releases_the_key():
    g = idemp.Guard(idemp.open_store("memory:"))
    started = asyncio.Event()

    async def hang():
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(g.arun("k", hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await g.arun("k", lambda: asyncio.sleep(0, "second")) == "second"


def test_manual_begin_lease_api():
    g = idemp.Guard(idemp.open_store("memory:"), scope="email")
    b = g.begin("welcome-42")
    assert b.state == "acquired" and b.lease.attempt == 1
    assert b.lease.complete({"sent": True}) == {"sent": True}
    again = g.begin("welcome-42")
    assert again.state == "completed" and again.result() == {"sent": True}
    rec = g.store.get("welcome-42", scope="email")
    assert rec.state == "completed" and rec.value == {"sent": True} and rec.token > 0


def test_lease_heartbeat_keeps_a_long_call_owned():
    g = idemp.Guard(idemp.open_store("memory:"), lease=1.5, on_ambiguous="surface")
    b = g.begin("long")
    time.sleep(3.5)  # more than two leases: renewed in the background every 0.5 s
    other = g.begin("long")
    assert other.state == "in_progress"
    b.lease.complete("done")
    assert g.begin("long").result() == "done"


WORKER = textwrap.dedent(
    """
    import os, sys, time
    import idemp
    url, key, effects, mode = sys.argv[1:5]
    guard = idemp.Guard(url, scope="race", lease=float(os.environ.get("LEASE", "30")),
                        on_duplicate="wait", wait_timeout=60)
    def effect():
        with open(effects, "a") as f:
            f.write(f"{os.getpid()}\\n")
            f.flush()
            os.fsync(f.fileno())
        if mode == "crash":
            print("effect-done", flush=True)
            time.sleep(60)
        time.sleep(0.2)
        return {"by": os.getpid()}
    print(guard.run(key, effect)["by"], flush=True)
    """
)


def _spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_processes_racing_one_key_on_one_sqlite_file_execute_once(tmp_path, sqlite_url):
    effects = tmp_path / "effects.log"
    procs = [_spawn(sqlite_url, "order-1", str(effects), "ok") for _ in range(6)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    lines = effects.read_text().splitlines()
    assert len(lines) == 1, lines  # the side effect ran once
    assert set(outs) == {lines[0]}  # every process got that execution's result


def test_a_crash_mid_call_is_ambiguous_after_the_lease(tmp_path, sqlite_url):
    effects = tmp_path / "effects.log"
    p = _spawn(sqlite_url, "order-9", str(effects), "crash", env={"LEASE": "1"})
    assert p.stdout.readline().strip() == "effect-done"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    surface = idemp.Guard(sqlite_url, scope="race", lease=1, on_ambiguous="surface")
    deadline = time.monotonic() + 30
    while True:  # live until its lease passes (it is no longer renewed)
        try:
            surface.run("order-9", lambda: "again")
        except idemp.InProgressError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
            continue
        except idemp.AmbiguousError as e:
            assert e.key == "order-9" and e.scope == "race" and e.attempts == 1
            assert e.record.state == "in_progress" and e.record.is_ambiguous
            break
        raise AssertionError("an ambiguous key ran again under on_ambiguous=surface")
    assert len(effects.read_text().splitlines()) == 1
    # Verify: the effect happened (it is in the log), so nothing runs again.
    verified = idemp.Guard(sqlite_url, scope="race", on_ambiguous="verify",
                           verify=lambda key: {"by": "reconciled"} if effects.exists() else None)
    assert verified.run("order-9", lambda: pytest.fail("must not run")) == {"by": "reconciled"}
    assert len(effects.read_text().splitlines()) == 1


def test_resolve_an_ambiguous_key():
    g = idemp.Guard(idemp.open_store("memory:"), lease=0.05, on_ambiguous="surface")
    b = g.begin("k")
    b.lease.abandon()
    time.sleep(0.1)
    with pytest.raises(idemp.AmbiguousError):
        g.run("k", lambda: 1)
    assert g.resolve("k", value={"charged": True}) == "applied"
    assert g.run("k", lambda: 2) == {"charged": True}
    assert g.resolve("k", retake=True) == "completed"


def test_sqlite_survives_a_new_process(sqlite_url):
    g = idemp.Guard(sqlite_url, scope="persist")
    g.run("k", lambda: [1, 2, 3])
    out = subprocess.run(
        [sys.executable, "-c", f"import idemp; print(idemp.Guard({sqlite_url!r}, scope='persist').run('k', lambda: 'x'))"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2, 3]"


def test_redis_store(redis_url):
    store = idemp.open_store(redis_url)
    g = idemp.Guard(store, scope="r", on_duplicate="wait")
    calls = []
    assert g.run("k", lambda: calls.append(1) or {"n": 1}) == {"n": 1}
    assert g.run("k", lambda: calls.append(1) or {"n": 2}) == {"n": 1}
    assert calls == [1]
    assert store.purge("k", scope="r")


def test_postgres_store(postgres_url):
    store = idemp.open_store(postgres_url)
    g = idemp.Guard(store, scope="p")
    calls = []
    for _ in range(3):
        assert g.run("k", lambda: calls.append(1) or "once") == "once"
    assert calls == [1]
    assert [r.key for r in store.list(scope="p")] == ["k"]
