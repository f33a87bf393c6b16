"""What the drop-ins do beyond the originals' suites: the atomic claim, a wait that
really waits, idemp stores accepted, failures as data."""

from __future__ import annotations

import threading
import time

import pytest

import idemp
from idemp.compat import idempotency
from idemp.compat.idempotency.stores import FileStore


def test_wait_really_waits_for_the_running_call(tmp_path):
    runs = []
    gate = threading.Event()

    @idempotency.idempotent(store=FileStore(tmp_path), on_duplicate="wait")
    def report(day: str) -> dict:
        runs.append(day)
        gate.wait(10)
        return {"day": day}

    out = []
    ts = [threading.Thread(target=lambda: out.append(report("mon"))) for _ in range(6)]
    for t in ts:
        t.start()
    while not runs:
        time.sleep(0.01)
    time.sleep(0.2)
    gate.set()
    for t in ts:
        t.join(30)
    assert runs == ["mon"] and out == [{"day": "mon"}] * 6


def test_accepts_idemp_stores_and_urls(tmp_path, sqlite_url):
    calls = []
    for store in (idemp.open_store(sqlite_url), f"sqlite://{tmp_path / 'other.db'}"):

        @idempotency.idempotent(store=store, ttl=60)
        def charge(order):
            calls.append(order)
            return order

        assert charge("o1") == charge("o1") == "o1"
    assert calls == ["o1", "o1"]


def test_custom_store_subclasses_get_a_clear_error():
    class Mine(idempotency.Store):
        def get(self, key): ...
        def set(self, record, ttl=None): ...
        def delete(self, key): ...
        def acquire_lock(self, key, timeout=10.0): ...
        def release_lock(self, key): ...

    with pytest.raises(TypeError, match="atomic claim"):
        idempotency.idempotent(store=Mine())


def test_keys_that_are_not_idemp_keys_are_stored_hashed():
    store = idempotency.MemoryStore()

    @idempotency.idempotent(store=store)
    def tag(labels: list) -> int:
        return len(labels)

    assert tag(["a b", "é"]) == 2  # the textual key has spaces and non-ASCII
    key = idempotency.key.generate_key(tag.__wrapped__, (["a b", "é"],), {})
    assert " " in key
    rec = store.idemp_store.get(idemp.keys.sha256_hex(key), scope="idempotency")
    assert rec is not None and rec.value == 2


def test_sticky_failures_keep_their_type_without_pickle():

    @idempotency.idempotent(on_failure="lock")
    def pay():
        raise KeyError("card")

    with pytest.raises(KeyError):
        pay()
    with pytest.raises(KeyError) as e:
        pay()
    assert e.value.args == ("card",)
