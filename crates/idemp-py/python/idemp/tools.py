"""Tool effects: tag each agent tool with what it does, and one wrapper applies the
right policy.

==================  =======================================================
tag                 policy
==================  =======================================================
``READ``            cached (:func:`idemp.cache.cache_tool`: LRU + TTL, singleflight)
``WRITE``           guarded (``@idempotent``): the same call twice runs once and replays
``IDEMPOTENT``      retried freely on transient failures (:func:`idemp.retry.with_retry`)
``DESTRUCTIVE``     guarded, under a key **the caller must give**
                    (``idempotency_key=...``); that key with other arguments is a
                    ``MismatchError``
==================  =======================================================

Keys are scoped by the agent session (``with tools.session("run-42"):``), so two
runs never share a result by accident.

>>> from idemp import tools
>>> @tools.tool(tools.WRITE, store="memory:")
... def send_email(to: str, subject: str) -> dict:
...     return {"sent": True, "to": to}
>>> with tools.session("run-42"):
...     send_email("a@example.com", "hi") == send_email(subject="hi", to="a@example.com")
True
"""

from __future__ import annotations

import contextvars
import enum
import functools
import inspect
from collections.abc import Callable
from typing import Any

from . import _core
from .cache import cache_scope, cache_tool
from .errors import KeyRequiredError
from .guard import Guard
from .retry import RetryConfig, with_retry

__all__ = [
    "DESTRUCTIVE",
    "IDEMPOTENT",
    "READ",
    "WRITE",
    "Effect",
    "effect_of",
    "session",
    "tag",
    "tool",
]


class Effect(str, enum.Enum):
    """What a tool does to the world (the tags of ``tool-side-effects-tag``)."""

    READ = "read"
    WRITE = "write"
    IDEMPOTENT = "idempotent"
    DESTRUCTIVE = "destructive"

    @property
    def needs_guard(self) -> bool:
        """Whether a repeat could repeat a side effect."""
        return self in (Effect.WRITE, Effect.DESTRUCTIVE)

    @classmethod
    def parse(cls, value: str | Effect) -> Effect:
        """Case-insensitive: ``"READ"`` and ``"read"`` are both ``Effect.READ``."""
        if isinstance(value, Effect):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"unknown tool effect {value!r} (expected read, write, idempotent or destructive)") from None


READ, WRITE, IDEMPOTENT, DESTRUCTIVE = Effect.READ, Effect.WRITE, Effect.IDEMPOTENT, Effect.DESTRUCTIVE

_session: contextvars.ContextVar[str] = contextvars.ContextVar("idemp_tool_session", default="")


class session:
    """``with session("run-42"):`` scopes tool keys (writes and cached reads) by the
    agent run, so two runs never share a result."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cache = cache_scope(name)

    def __enter__(self) -> str:
        self._token = _session.set(self.name)
        self._cache.__enter__()
        return self.name

    def __exit__(self, *exc: object) -> None:
        self._cache.__exit__(*exc)
        _session.reset(self._token)


def tag(effect: str | Effect) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Only records the effect on the function (``effect_of(fn)``), for frameworks
    that apply policies themselves."""
    eff = Effect.parse(effect)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__tool_effect__ = eff  # type: ignore[attr-defined]
        return fn

    return decorate


def effect_of(fn: Callable[..., Any]) -> Effect | None:
    """The effect a function was tagged with, or ``None``."""
    return getattr(fn, "__tool_effect__", None)


def tool(
    effect: str | Effect,
    *,
    store: Any = None,
    name: str | None = None,
    ttl: float = 86400.0,
    lease: float = 60.0,
    wait_timeout: float = 30.0,
    cache_ttl: float = 300.0,
    cache_size: int = 10_000,
    retry: RetryConfig | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Applies the policy of ``effect`` to a tool (``def`` or ``async def``).

    ``store`` is the guard's store for ``WRITE`` / ``DESTRUCTIVE`` tools (default: the
    process's default store; give a shared one to share work between processes).
    Duplicates of a running write wait for it (``wait_timeout``) and replay its result.
    ``DESTRUCTIVE`` tools take the caller's key as the ``idempotency_key=`` keyword.
    """
    eff = Effect.parse(effect)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        tool_name = name or f"{fn.__module__}.{fn.__qualname__}"
        if eff is Effect.READ:
            wrapped = cache_tool(fn, ttl_seconds=cache_ttl, max_size=cache_size, name=tool_name)
        elif eff is Effect.IDEMPOTENT:
            wrapped = with_retry(fn, config=retry or RetryConfig(), key=lambda *a, **kw: _core.for_args(_session.get(), tool_name, _arguments(fn, a, kw)))
        else:
            wrapped = _guarded(fn, eff, tool_name, Guard(store, scope=tool_name, ttl=ttl, lease=lease, on_duplicate="wait", wait_timeout=wait_timeout))
        wrapped.__tool_effect__ = eff
        return wrapped

    return decorate


def _arguments(fn: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _guarded(fn: Callable[..., Any], eff: Effect, tool_name: str, guard: Guard) -> Callable[..., Any]:
    def prepare(args: tuple, kwargs: dict) -> tuple[str, str]:
        kwargs = dict(kwargs)
        given = kwargs.pop("idempotency_key", None)
        arguments = _arguments(fn, args, kwargs)
        fp = _core.hash_request(arguments, format="jcs")
        if given is not None:
            return str(given), fp
        if eff is Effect.DESTRUCTIVE:
            raise KeyRequiredError(
                f"tool {tool_name} is destructive: call it with idempotency_key=...", scope=tool_name
            )
        return _core.for_args(_session.get(), tool_name, arguments), fp

    def strip(kwargs: dict) -> dict:
        return {k: v for k, v in kwargs.items() if k != "idempotency_key"}

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            k, fp = prepare(args, kwargs)
            return await guard._arun(k, fp, fn, args, strip(kwargs))

        async_wrapper.guard = guard  # type: ignore[attr-defined]
        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        k, fp = prepare(args, kwargs)
        return guard._run(k, fp, fn, args, strip(kwargs))

    wrapper.guard = guard  # type: ignore[attr-defined]
    return wrapper
