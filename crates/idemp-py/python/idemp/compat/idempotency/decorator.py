"""``idempotency.idempotent`` on idemp's guard."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from idemp import _core
from idemp.errors import DuplicateError, FailedError
from idemp.guard import Guard, resolve_store

from .exceptions import DuplicateExecutionError, LockTimeoutError
from .key import generate_key, store_key
from .stores import MemoryStore, Store
from .stores.base import FOREVER, SCOPE

F = TypeVar("F", bound=Callable)

#: How long a duplicate waits for the running call (the original's lock timeout).
WAIT_SECONDS = 10.0


def _native(store: Any) -> _core.Store:
    if store is None:
        return MemoryStore().idemp_store
    native = getattr(store, "idemp_store", None)
    if isinstance(native, _core.Store):
        return native
    if isinstance(store, (_core.Store, str)):
        return resolve_store(store)
    if isinstance(store, Store):
        raise TypeError(
            f"{type(store).__name__} has no atomic claim: use MemoryStore, FileStore, "
            "RedisStore or an idemp.open_store(url) store"
        )
    raise TypeError(f"store must be an idempotency store or an idemp store, got {type(store).__name__}")


def _rebuild(e: FailedError) -> BaseException:
    """The stored failure as its original exception type, when that type is loaded
    and takes its stored arguments; else the ``FailedError`` itself."""
    module, _, qualname = (e.kind or "").rpartition(".")
    mod = sys.modules.get(module)
    cls: Any = mod
    for part in qualname.split(".") if mod else ():
        cls = getattr(cls, part, None)
    args = e.data.get("args") if isinstance(e.data, dict) else None
    if isinstance(cls, type) and issubclass(cls, Exception) and isinstance(args, list):
        try:
            return cls(*args)
        except Exception:
            pass
    return e


def idempotent(
    ttl: float | None = None,
    store: Any = None,
    key: Callable[..., str] | None = None,
    on_duplicate: str = "return",
    on_failure: str = "unlock",
) -> Callable[[F], F]:
    """Decorator to make a function idempotent (see the package docs).

    Args:
        ttl: seconds records are kept (``None``: for ever)
        store: a ``MemoryStore`` (default, one per decorator), ``FileStore``,
            ``RedisStore``, or any ``idemp.open_store(url)`` store / store URL
        key: custom key function, called with the call's arguments
        on_duplicate: ``"return"`` (the stored result), ``"raise"``
            (``DuplicateExecutionError``) or ``"wait"``; a duplicate of a running call
            waits for it up to 10 s (``LockTimeoutError`` after)
        on_failure: ``"unlock"`` (retry allowed) or ``"lock"`` (the failure is stored
            and re-raised)
    """
    if on_duplicate not in ("return", "raise", "wait"):
        raise ValueError(f"on_duplicate must be 'return', 'raise', or 'wait', got '{on_duplicate}'")
    if on_failure not in ("unlock", "lock"):
        raise ValueError(f"on_failure must be 'unlock' or 'lock', got '{on_failure}'")
    guard = Guard(
        _native(store),
        scope=SCOPE,
        ttl=FOREVER if ttl is None else float(ttl),
        on_duplicate="reject" if on_duplicate == "raise" else "wait",
        wait_timeout=WAIT_SECONDS,
        on_failure="sticky" if on_failure == "lock" else "release",
    )

    def begin(idem_key: str) -> Any:
        try:
            begun = guard._core.begin(store_key(idem_key))
        except DuplicateError:
            raise DuplicateExecutionError(idem_key) from None
        if begun.state == "in_progress":
            raise LockTimeoutError(idem_key, WAIT_SECONDS)
        if begun.state == "failed":
            try:
                begun.result()
            except FailedError as e:
                raise _rebuild(e) from None
        return begun

    def decorator(func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: object, **kwargs: object) -> object:
                idem_key = generate_key(func, args, kwargs, custom_key_func=key)
                begun = begin(idem_key)
                if begun.lease is None:
                    return begun.result()
                return await guard._aown(begun.lease, idem_key, func, args, kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: object, **kwargs: object) -> object:
            idem_key = generate_key(func, args, kwargs, custom_key_func=key)
            begun = begin(idem_key)
            if begun.lease is None:
                return begun.result()
            return guard._own(begun.lease, idem_key, func, args, kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
