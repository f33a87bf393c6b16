"""A cache for read-only tool results: LRU + TTL, singleflight, optional Redis level.

Reads are safe to repeat, but repeating them costs time and tokens. ``cache_tool``
keys a call by the tool's name and its arguments (``idemp.keys.for_args``: argument
order never matters) and keeps its result for ``ttl_seconds``; concurrent identical
calls run the tool once and share the result (from threads with the GIL released,
or from asyncio tasks). Errors are never cached. Results are kept as JSON, so each
caller gets its own copy.

>>> from idemp.cache import cache_tool
>>> @cache_tool(ttl_seconds=300, max_size=512)
... def lookup_customer(customer_id: str) -> dict:
...     return {"id": customer_id, "name": "Ada"}
>>> lookup_customer("c_42") == lookup_customer(customer_id="c_42")
True
>>> lookup_customer.cache_info()["hits"]
1
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import Any

from ._core import ToolCache

__all__ = ["ToolCache", "cache_tool", "cache_scope"]

_scope: contextvars.ContextVar[str] = contextvars.ContextVar("idemp_cache_scope", default="")


class cache_scope:
    """Within ``with cache_scope("session-7"):`` cached tools key their calls by that
    scope too, so two agent sessions never share a cached read."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __enter__(self) -> str:
        self._token = _scope.set(self.scope)
        return self.scope

    def __exit__(self, *exc: object) -> None:
        _scope.reset(self._token)


def _redis_url(store: Any) -> str | None:
    if store is None:
        return None
    if isinstance(store, str):
        return store
    kw = getattr(getattr(store, "connection_pool", None), "connection_kwargs", None)
    if kw is None:
        raise TypeError("store must be a redis URL, a redis.Redis client or None")
    auth = f":{kw['password']}@" if kw.get("password") else ""
    return f"redis://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def cache_tool(
    fn: Callable[..., Any] | None = None,
    *,
    ttl_seconds: float = 300.0,
    max_size: int = 10_000,
    store: Any = None,
    name: str | None = None,
) -> Any:
    """Caches a tool's results (``def`` or ``async def``).

    Args:
        ttl_seconds: how long a result is kept.
        max_size: how many results are kept (least recently used go first).
        store: ``None`` (this process), or a Redis URL / ``redis.Redis`` client for a
            level shared by processes.
        name: the tool's name in keys (default: its qualified name).

    The wrapper has ``cache`` (the ``ToolCache``), ``cache_info()`` and
    ``cache_clear()``.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        cache = ToolCache(max_entries=max_size, ttl=float(ttl_seconds), redis_url=_redis_url(store))
        tool = name or f"{func.__module__}.{func.__qualname__}"
        sig = inspect.signature(func)

        def key_of(args: tuple, kwargs: dict) -> str:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            return ToolCache.key_for(_scope.get(), tool, dict(bound.arguments))

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await cache.aget_or_call(key_of(args, kwargs), lambda: func(*args, **kwargs))

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(func)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                return cache.get_or_call(key_of(args, kwargs), lambda: func(*args, **kwargs))

            wrapper = sync_wrapper
        wrapper.cache = cache
        wrapper.cache_info = cache.stats
        wrapper.cache_clear = cache.invalidate_all
        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate
