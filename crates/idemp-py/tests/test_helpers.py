"""retry, cache, tools and batch from Python."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import idemp
from idemp import tools
from idemp.cache import cache_tool
from idemp.retry import RetryConfig, RetryExhausted, current_attempt, with_retry


class ApiError(Exception):
    def __init__(self, status, retry_after=None):
        super().__init__(f"status {status}")
        self.status_code = status
        self.retry_after = retry_after


def test_retry_keeps_the_key_and_honours_retry_after():
    seen = []

    @with_retry(config=RetryConfig.for_anthropic(max_attempts=4, base_delay=0.001, seed=1), key="ik_same")
    def call():
        a = current_attempt()
        seen.append(a)
        if a.number == 1:
            raise ApiError(529)
        if a.number == 2:
            raise ApiError(429, retry_after=0.05)
        return "ok"

    t0 = time.monotonic()
    assert call() == "ok"
    assert time.monotonic() - t0 >= 0.05  # the Retry-After floor was obeyed
    assert [a.key for a in seen] == ["ik_same"] * 3
    assert [a.number for a in seen] == [1, 2, 3]


def test_retry_stops_on_permanent_errors_and_gives_up():
    calls = []

    @with_retry(config=RetryConfig.for_openai(max_attempts=3, base_delay=0.001))
    def bad_request():
        calls.append(1)
        raise ApiError(400)

    with pytest.raises(ApiError):
        bad_request()
    assert len(calls) == 1

    @with_retry(config=RetryConfig(max_attempts=3, base_delay=0.001))
    def always():
        calls.append(1)
        raise ConnectionError("reset")

    with pytest.raises(RetryExhausted) as e:
        always()
    assert e.value.attempts == 3 and isinstance(e.value.last_error, ConnectionError)

    @with_retry(config=RetryConfig.for_anthropic(retry_after_cap=1))
    def too_long():
        raise ApiError(429, retry_after=3600)

    with pytest.raises(RetryExhausted) as e:
        too_long()
    assert e.value.reason == "retry_after_too_long"


async def test_async_retry_never_retries_cancellation():
    calls = []

    @with_retry(config=RetryConfig(max_attempts=5, base_delay=0.001))
    async def op():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError()
        await asyncio.sleep(60)

    task = asyncio.create_task(op())
    while len(calls) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(calls) == 3


def test_parse_retry_after():
    assert idemp.retry.parse_retry_after("7") == 7.0
    assert idemp.retry.parse_retry_after("soon") is None
    assert idemp.retry.is_retryable_status("anthropic", 529)
    assert not idemp.retry.is_retryable_status("openai", 529)


def test_cache_tool_singleflight_across_threads():
    calls = []

    @cache_tool(ttl_seconds=60, max_size=100)
    def lookup(customer_id: str) -> dict:
        calls.append(customer_id)
        time.sleep(0.3)
        return {"id": customer_id}

    out = []
    ts = [threading.Thread(target=lambda: out.append(lookup("c1"))) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert calls == ["c1"] and out == [{"id": "c1"}] * 8
    assert lookup(customer_id="c1") == {"id": "c1"}
    info = lookup.cache_info()
    assert info["misses"] == 1 and info["hits"] == 8


async def test_cache_tool_async_and_errors_are_not_cached():
    calls = []

    @cache_tool(ttl_seconds=1.0)
    async def fetch(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise RuntimeError("flaky")
        await asyncio.sleep(0.05)
        return x * 2

    with pytest.raises(RuntimeError):
        await fetch(2)
    assert await asyncio.gather(*[fetch(2) for _ in range(5)]) == [4] * 5
    assert len(calls) == 2
    await asyncio.sleep(1.2)  # ttl passed
    assert await fetch(2) == 4 and len(calls) == 3


def test_tools_apply_policy_by_effect():
    store = idemp.open_store("memory:")
    charges, reads, deletes = [], [], []

    @tools.tool(tools.WRITE, store=store)
    def charge(customer: str, amount: int) -> dict:
        charges.append(amount)
        return {"receipt": f"r-{amount}"}

    @tools.tool("READ")
    def status(order: str) -> str:
        reads.append(order)
        return "shipped"

    @tools.tool(tools.DESTRUCTIVE, store=store)
    def delete_account(account: str) -> bool:
        deletes.append(account)
        return True

    with tools.session("run-1"):
        assert charge("c1", 10) == charge(amount=10, customer="c1")
        assert status("o1") == status("o1") == "shipped"
        with pytest.raises(idemp.KeyRequiredError):
            delete_account("a1")
        assert delete_account("a1", idempotency_key="del-a1") is True
        assert delete_account("a1", idempotency_key="del-a1") is True
        with pytest.raises(idemp.MismatchError):
            delete_account("a2", idempotency_key="del-a1")
    with tools.session("run-2"):
        charge("c1", 10)  # another run: its own key
    assert charges == [10, 10] and reads == ["o1"] and deletes == ["a1"]
    assert tools.effect_of(charge) is tools.WRITE


def test_custom_ids():
    ids = idemp.batch.custom_ids([{"a": 1}, {"a": 1}, {"b": 2}], prefix="nightly_")
    assert ids[0].startswith("nightly_") and ids[0].endswith("-0") and ids[1].endswith("-1")
    assert all(idemp.batch.validate_custom_id(i) for i in ids)
    with pytest.raises(ValueError):
        idemp.batch.custom_ids([{}], prefix="bad prefix")
