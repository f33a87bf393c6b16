"""Retries that keep the idempotency key: backoff with jitter, ``Retry-After``,
provider presets, a shared retry budget.

A retry is only safe when the server can recognise it as the same request, so every
attempt of one call carries **the same key**: pass ``key=`` (or derive one with
:mod:`idemp.keys`) and read it in the attempt with :func:`current_attempt`.

The policy, the presets (Anthropic 429/529 ``overloaded_error``…, OpenAI, Bedrock,
Gemini), ``Retry-After`` parsing and the budget are the Rust core's
(``idemp::retry``); the loop sleeps with ``time.sleep`` or ``asyncio.sleep``.
Cancellation (``asyncio.CancelledError``, ``KeyboardInterrupt``) is never retried.

>>> from idemp.retry import RetryConfig, with_retry
>>> config = RetryConfig(max_attempts=3, base_delay=1.0, jitter=True)
>>> # refund_with_retry = with_retry(refund_order, config=config)
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from . import _core
from ._core import RetryBudget, is_retryable_error_type, is_retryable_status, parse_retry_after
from .errors import IdempError

__all__ = [
    "Attempt",
    "RetryBudget",
    "RetryConfig",
    "RetryExhausted",
    "current_attempt",
    "is_retryable_error_type",
    "is_retryable_status",
    "parse_retry_after",
    "retry_after_of",
    "with_retry",
]

T = TypeVar("T")


class Attempt(NamedTuple):
    """The attempt in progress: ``number`` (1 for the first) and the call's ``key``,
    the same on every attempt."""

    number: int
    key: str | None


_attempt: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("idemp_attempt", default=None)


def current_attempt() -> Attempt | None:
    """The attempt the calling code runs in (inside ``with_retry``), else ``None``."""
    return _attempt.get()


class RetryExhausted(IdempError):
    """Every attempt failed and each failure was retryable. ``last_error`` is the
    last one (also the ``__cause__``), ``attempts`` how many were made, ``reason``
    why it stopped (``exhausted``, ``budget``, ``retry_after_too_long``)."""

    def __init__(self, last_error: BaseException, attempts: int, reason: str = "exhausted") -> None:
        super().__init__(
            f"gave up after {attempts} attempts ({reason}): {last_error!r}",
            last_error=last_error,
            attempts=attempts,
            reason=reason,
        )


@dataclasses.dataclass
class RetryConfig:
    """How many attempts, how long between them, and what is worth retrying.

    Args:
        max_attempts: attempts in all, the first included.
        base_delay: the first backoff (seconds), doubled (``multiplier``) per retry
            up to ``max_delay``.
        jitter: ``True`` / ``"full"`` (uniform in [0, backoff], the default),
            ``"equal"`` (half fixed, half random) or ``False`` / ``"none"``.
        retry_after_cap: the longest ``Retry-After`` obeyed; a longer one stops.
        provider: ``"anthropic"``, ``"openai"``, ``"bedrock"``, ``"gemini"`` or
            ``"http"``: retry only what that API calls transient (by HTTP status,
            error type, or a connection error / timeout).
        retry_on: exception types worth retrying when no provider is set.
        should_retry: ``fn(exc) -> bool``, overrides the above.
        budget: a shared ``RetryBudget``.
        seed: seeds the jitter (tests).
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: bool | str = True
    retry_after_cap: float = 60.0
    provider: str | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    should_retry: Callable[[BaseException], bool] | None = None
    budget: RetryBudget | None = None
    seed: int | None = None

    @classmethod
    def for_anthropic(cls, **kw: Any) -> RetryConfig:
        """Anthropic's transient failures: 408, 409, 429, 5xx, 529 overloaded."""
        return cls(provider="anthropic", **kw)

    @classmethod
    def for_openai(cls, **kw: Any) -> RetryConfig:
        return cls(provider="openai", **kw)

    @classmethod
    def for_bedrock(cls, **kw: Any) -> RetryConfig:
        return cls(provider="bedrock", **kw)

    @classmethod
    def for_gemini(cls, **kw: Any) -> RetryConfig:
        return cls(provider="gemini", **kw)

    def policy(self) -> _core.RetryPolicy:
        jitter = {True: "full", False: "none"}.get(self.jitter, self.jitter)  # type: ignore[arg-type]
        return _core.RetryPolicy(
            max_attempts=self.max_attempts,
            base=self.base_delay,
            cap=self.max_delay,
            multiplier=self.multiplier,
            jitter=jitter,
            retry_after_cap=self.retry_after_cap,
            budget=self.budget,
            seed=self.seed,
        )


def _attr(obj: Any, *names: str) -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (``status_code``, ``status``, or its
    ``response``'s), as the ``anthropic``, ``openai`` and ``httpx`` errors do."""
    for holder in (exc, getattr(exc, "response", None)):
        v = _attr(holder, "status_code", "status") if holder is not None else None
        if isinstance(v, int):
            return v
    return None


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds the server asked to wait: an exception's ``retry_after`` attribute,
    or its response's ``retry-after-ms`` / ``Retry-After`` header."""
    v = getattr(exc, "retry_after", None)
    if isinstance(v, (int, float)):
        return float(v)
    headers = getattr(getattr(exc, "response", None), "headers", None) or getattr(exc, "headers", None)
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return float(ms) / 1000.0
        ra = headers.get("retry-after") or headers.get("Retry-After")
    except Exception:
        return None
    return parse_retry_after(str(ra)) if ra is not None else None


def _error_type(exc: BaseException) -> str | None:
    v = _attr(exc, "type", "code", "error_type")
    if isinstance(v, str):
        return v
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("type"), str):
            return err["type"]
    return type(exc).__name__


def _retryable(exc: BaseException, config: RetryConfig) -> bool:
    if config.should_retry is not None:
        return bool(config.should_retry(exc))
    if config.provider is not None:
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        status = status_of(exc)
        if status is not None and is_retryable_status(config.provider, status):
            return True
        kind = _error_type(exc)
        return kind is not None and is_retryable_error_type(config.provider, kind)
    return isinstance(exc, config.retry_on)


def _next_delay(exc: BaseException, number: int, config: RetryConfig, policy: _core.RetryPolicy) -> float | str:
    """Seconds before the next attempt, or why to stop."""
    if not _retryable(exc, config):
        return "not_retryable"
    if number >= policy.max_attempts:
        return "exhausted"
    after = retry_after_of(exc)
    if after is not None:
        if after > policy.retry_after_cap:
            return "retry_after_too_long"
        # The server's floor, plus a little jitter so a herd does not return at once.
        delay = after + min(policy.delay(number), after / 4 + 0.001)
    else:
        delay = policy.delay(number)
    if not policy.withdraw():
        return "budget"
    return delay


def with_retry(
    fn: Callable[..., Any] | None = None,
    *,
    config: RetryConfig | None = None,
    key: str | Callable[..., str] | None = None,
) -> Any:
    """Retries ``fn`` (``def`` or ``async def``) under ``config``; usable as
    ``with_retry(fn, config=...)`` or as a decorator ``@with_retry(config=...)``.

    ``key`` (a string, or ``fn(*args, **kwargs) -> str``) is the call's idempotency
    key, the same on every attempt: read it with ``current_attempt().key``. A
    failure that is not retryable is raised as it is; when retries run out,
    ``RetryExhausted`` (with ``last_error``) is raised from the last failure.
    """
    cfg = config or RetryConfig()

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        def key_of(args: tuple, kwargs: dict) -> str | None:
            return key(*args, **kwargs) if callable(key) else key

        def stop(exc: BaseException, number: int, reason: str) -> BaseException:
            return exc if reason == "not_retryable" else RetryExhausted(exc, number, reason)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                policy, k, number = cfg.policy(), key_of(args, kwargs), 1
                policy.deposit()
                while True:
                    token = _attempt.set(Attempt(number, k))
                    try:
                        return await func(*args, **kwargs)
                    except Exception as exc:
                        nxt = _next_delay(exc, number, cfg, policy)
                        if isinstance(nxt, str):
                            err = stop(exc, number, nxt)
                            if err is exc:
                                raise
                            raise err from exc
                    finally:
                        _attempt.reset(token)
                    await asyncio.sleep(nxt)
                    number += 1

            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            policy, k, number = cfg.policy(), key_of(args, kwargs), 1
            policy.deposit()
            while True:
                token = _attempt.set(Attempt(number, k))
                try:
                    return func(*args, **kwargs)
                except Exception as exc:
                    nxt = _next_delay(exc, number, cfg, policy)
                    if isinstance(nxt, str):
                        err = stop(exc, number, nxt)
                        if err is exc:
                            raise
                        raise err from exc
                finally:
                    _attempt.reset(token)
                time.sleep(nxt)
                number += 1

        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate
