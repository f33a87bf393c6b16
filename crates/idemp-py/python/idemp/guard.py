"""The guard: at most one execution per key, and the ``@idempotent`` decorator.

A :class:`Guard` claims a key atomically in a store every worker shares, runs the work
while a heartbeat renews its lease, stores the result as JSON and replays it to every
later attempt. The claim, the duplicate / wait / ambiguity policies, the heartbeat and
the fencing tokens are the Rust core's (``idemp::guard``); this module runs your
function between the claim and the settle.

>>> import idemp
>>> @idempotent(store="memory:")
... def charge(order_id: str, cents: int) -> dict:
...     return {"receipt": f"r-{order_id}", "cents": cents}
>>> charge("o-1", 1999) == charge(order_id="o-1", cents=1999)   # the second one replays
True
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from . import _core
from .errors import IdempError, NotJSONError

__all__ = ["Guard", "idempotent", "default_store", "resolve_store"]

log = logging.getLogger("idemp")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_stores: dict[str, _core.Store] = {}
_stores_lock = threading.Lock()


def resolve_store(store: _core.Store | str | None) -> _core.Store:
    """A store: an opened ``Store`` as is, a URL opened once per process (and shared
    by everything that names it), ``None`` for the process's default store
    (``memory:``, see :func:`default_store`)."""
    if store is None:
        return default_store()
    if isinstance(store, _core.Store):
        return store
    if isinstance(store, str):
        with _stores_lock:
            found = _stores.get(store)
            if found is None:
                found = _stores[store] = _core.open_store(store)
            return found
    native = getattr(store, "idemp_store", None)
    if isinstance(native, _core.Store):
        return native
    raise TypeError(
        f"store must be an idemp.Store (idemp.open_store(url)), a store URL or None, "
        f"got {type(store).__name__}"
    )


def default_store() -> _core.Store:
    """The process-wide default store: ``memory:``. Good for one process and for
    tests; give workers that share work a shared store (``sqlite://PATH``,
    ``redis://…``, ``postgres://…``)."""
    return resolve_store("memory:")


def _failure_of(exc: BaseException) -> tuple[str, str, Any]:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}", str(exc), {"args": list(exc.args)}


class Guard:
    """Runs operations at most once per key.

    Args:
        store: an ``idemp.Store``, a store URL, or ``None`` for the default store.
        scope: the operation's scope (function name, route…): keys of different
            scopes are different records.
        ttl: seconds a settled record is kept (and replayed).
        lease: seconds an execution owns the key without renewing; a heartbeat
            renews it every ``lease / 3`` while the work runs. After it passes
            unrenewed (a crash), the record is *ambiguous*.
        on_duplicate: ``"replay"`` (return the stored result; a live duplicate gets
            ``InProgressError``), ``"reject"`` (``DuplicateError`` for any duplicate)
            or ``"wait"`` (wait up to ``wait_timeout`` seconds for the running
            execution, woken by the store, then replay it).
        on_failure: ``"release"`` (the key may run again) or ``"sticky"`` (the
            failure is stored as data and replayed as ``FailedError``).
        on_ambiguous: ``"retake"`` (run again: at-least-once), ``"verify"`` (ask
            ``verify(key)`` whether the effect happened: a value completes the key
            with it, ``None`` runs again) or ``"surface"`` (``AmbiguousError``; settle
            with :meth:`resolve`).
        on_cancel: ``"release"`` or ``"keep"``: what an interrupted execution
            (``KeyboardInterrupt``, task cancellation) does to the key.
    """

    def __init__(
        self,
        store: _core.Store | str | None = None,
        *,
        scope: str = "",
        ttl: float = 86400.0,
        lease: float = 60.0,
        on_duplicate: str = "replay",
        wait_timeout: float = 30.0,
        on_failure: str = "release",
        on_ambiguous: str = "retake",
        verify: Callable[[str], Any] | None = None,
        on_cancel: str = "release",
    ) -> None:
        self._core = _core.Guard(
            resolve_store(store),
            scope=scope,
            ttl=float(ttl),
            lease=float(lease),
            on_duplicate=on_duplicate,
            wait_timeout=float(wait_timeout),
            on_failure=on_failure,
            on_ambiguous=on_ambiguous,
            verify=verify,
            on_cancel=on_cancel,
        )

    @property
    def store(self) -> _core.Store:
        return self._core.store

    @property
    def scope(self) -> str:
        return self._core.scope

    def __repr__(self) -> str:
        return f"Guard(scope={self.scope!r}, store={self.store.url!r})"

    # -- the manual API ------------------------------------------------------------

    def begin(self, key: str, fingerprint: str | bytes | None = None) -> _core.Begin:
        """Claims ``key`` and says what was found (``Begin.state``): the blog's
        ``IdempotencyStore`` done atomically. ``"acquired"``: do the work, then
        ``begin.lease.complete(result)`` / ``.fail(message)`` / ``.release()``;
        ``"completed"``: ``begin.result()`` is the stored result."""
        return self._core.begin(key, fingerprint)

    async def abegin(self, key: str, fingerprint: str | bytes | None = None) -> _core.Begin:
        """:meth:`begin` for asyncio."""
        return await self._core.abegin(key, fingerprint)

    def resolve(self, key: str, *, value: Any = None, retake: bool = False, failure: str | None = None) -> str:
        """Settles an ambiguous key (after ``AmbiguousError``): ``value=`` completes it
        with that result, ``retake=True`` lets the next call run, ``failure=`` stores
        a sticky failure. Returns ``"applied"``, or the state found when the key was
        not ambiguous."""
        return self._core.resolve(key, value=value, retake=retake, failure=failure)

    # -- the closure API -----------------------------------------------------------

    def run(self, key: str, fn: Callable[..., T], *args: Any, fingerprint: str | bytes | None = None, **kwargs: Any) -> T:
        """Runs ``fn(*args, **kwargs)`` at most once for ``key`` and returns its result
        (decoded from the stored JSON, on this call too), or the stored one."""
        return self._run(key, fingerprint, fn, args, kwargs)

    async def arun(self, key: str, fn: Callable[..., Awaitable[T]], *args: Any, fingerprint: str | bytes | None = None, **kwargs: Any) -> T:
        """:meth:`run` for ``async`` work: ``await fn(*args, **kwargs)``."""
        return await self._arun(key, fingerprint, fn, args, kwargs)

    def _run(self, key: str, fingerprint: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        begun = self._core.begin(key, fingerprint)
        lease = begun.lease
        if lease is None:
            return begun.result()
        return self._own(lease, key, fn, args, kwargs)

    def _own(self, lease: _core.Lease, key: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Runs the work of an acquired lease and settles it."""
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._settle_failure(lease, exc)
            raise
        except BaseException:
            self._interrupted(lease)
            raise
        try:
            return lease.complete(result)
        except NotJSONError as e:
            # Nothing is stored: the key may run again once the result is fixed.
            self._quietly(lease.release)
            raise self._not_json(key, fn, e) from None

    async def _arun(self, key: str, fingerprint: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        begun = await self._core.abegin(key, fingerprint)
        lease = begun.lease
        if lease is None:
            return begun.result()
        return await self._aown(lease, key, fn, args, kwargs)

    async def _aown(self, lease: _core.Lease, key: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            await self._asettle_failure(lease, exc)
            raise
        except BaseException:
            self._interrupted(lease)
            raise
        try:
            return await lease.acomplete(result)
        except NotJSONError as e:
            await self._aquietly(lease.arelease)
            raise self._not_json(key, fn, e) from None

    def _not_json(self, key: str, fn: Any, e: NotJSONError) -> NotJSONError:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        return NotJSONError(
            f"{name}() returned a result JSON cannot hold, so nothing was stored and the "
            f"key may run again: {e}",
            key=key,
            scope=self.scope,
        )

    def _settle_failure(self, lease: _core.Lease, exc: BaseException) -> None:
        if self._core.on_failure == "sticky":
            kind, message, data = _failure_of(exc)
            try:
                lease.fail(message, kind=kind, data=data)
                return
            except NotJSONError:
                self._quietly(lambda: lease.fail(message, kind=kind))
                return
            except IdempError as e:
                log.warning("idemp: could not store the failure of %s: %s", lease, e)
                return
        self._quietly(lease.release)

    async def _asettle_failure(self, lease: _core.Lease, exc: BaseException) -> None:
        if self._core.on_failure == "sticky":
            kind, message, data = _failure_of(exc)
            try:
                await lease.afail(message, kind=kind, data=data)
                return
            except NotJSONError:
                await self._aquietly(lambda: lease.afail(message, kind=kind))
                return
            except IdempError as e:
                log.warning("idemp: could not store the failure of %s: %s", lease, e)
                return
        await self._aquietly(lease.arelease)

    def _interrupted(self, lease: _core.Lease) -> None:
        # Never recorded as success: released, or kept until its lease passes.
        if self._core.on_cancel == "keep":
            lease.abandon()
        else:
            self._quietly(lease.release)

    @staticmethod
    def _quietly(settle: Callable[[], Any]) -> None:
        try:
            settle()
        except IdempError as e:
            log.warning("idemp: could not settle a failed execution: %s", e)

    @staticmethod
    async def _aquietly(settle: Callable[[], Awaitable[Any]]) -> None:
        try:
            await settle()
        except IdempError as e:
            log.warning("idemp: could not settle a failed execution: %s", e)


class _ArgKeys:
    """Derives a call's key from its bound arguments, by name (so ``f(1, b=2)`` and
    ``f(a=1, b=2)`` share one key), without ``self`` / ``cls`` of methods."""

    def __init__(self, fn: Callable[..., Any], scope: str) -> None:
        self.scope = scope
        self.sig = inspect.signature(fn)
        params = list(self.sig.parameters.values())
        self.skip = None
        if params and params[0].name in ("self", "cls") and "." in getattr(fn, "__qualname__", ""):
            self.skip = params[0].name
        # Fast path: only plain positional-or-keyword parameters.
        self.simple = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self.names = [p.name for p in params]
        self.defaults = {p.name: p.default for p in params if p.default is not p.empty}

    def arguments(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        if self.simple and len(args) <= len(self.names):
            out = dict(zip(self.names, args))
            rest = self.names[len(args):]
            used = 0
            for name in rest:
                if name in kwargs:
                    out[name] = kwargs[name]
                    used += 1
                elif name in self.defaults:
                    out[name] = self.defaults[name]
                else:
                    break
            else:
                if used == len(kwargs):
                    if self.skip:
                        out.pop(self.skip, None)
                    return out
        bound = self.sig.bind(*args, **kwargs)  # raises TypeError as the call would
        bound.apply_defaults()
        out = dict(bound.arguments)
        if self.skip:
            out.pop(self.skip, None)
        return out

    def key(self, args: tuple, kwargs: dict) -> tuple[str, dict[str, Any]]:
        arguments = self.arguments(args, kwargs)
        try:
            return _core.key_for_args(arguments), arguments
        except NotJSONError as e:
            raise NotJSONError(
                f"@idempotent {self.scope}: cannot derive a key from the arguments: {e}; "
                "pass JSON-like arguments, or key=lambda *args, **kwargs: ... to choose the key",
                key=None,
                scope=self.scope,
            ) from None


@overload
def idempotent(fn: F) -> F: ...
@overload
def idempotent(
    fn: None = None,
    *,
    store: _core.Store | str | None = None,
    scope: str | None = None,
    key: Callable[..., str] | None = None,
    ttl: float = 86400.0,
    lease: float = 60.0,
    on_duplicate: str = "replay",
    wait_timeout: float = 30.0,
    on_failure: str = "release",
    on_ambiguous: str = "retake",
    verify: Callable[[str], Any] | None = None,
    on_cancel: str = "release",
    fingerprint: bool = False,
) -> Callable[[F], F]: ...


def idempotent(
    fn: Callable[..., Any] | None = None,
    *,
    store: _core.Store | str | None = None,
    scope: str | None = None,
    key: Callable[..., str] | None = None,
    ttl: float = 86400.0,
    lease: float = 60.0,
    on_duplicate: str = "replay",
    wait_timeout: float = 30.0,
    on_failure: str = "release",
    on_ambiguous: str = "retake",
    verify: Callable[[str], Any] | None = None,
    on_cancel: str = "release",
    fingerprint: bool = False,
) -> Any:
    """Makes a function run at most once per key; later calls get its stored result.

    Works on ``def`` and ``async def``. The key is derived from the function's
    arguments by name (their canonical JSON: dict order never matters), scoped by the
    function's qualified name (``module.qualname``), so two functions never share a
    key by accident; or ``key=fn(*args, **kwargs) -> str`` chooses it. Results are
    stored as JSON (never pickled); the first call returns the stored form too, so
    the first call and every replay return the same thing. A result JSON cannot hold
    raises ``NotJSONError`` (a ``TypeError``) and nothing is stored.

    ``fingerprint=True`` also stores a hash of the arguments: a later call with the
    same key and other arguments raises ``MismatchError`` instead of replaying.
    Other options: see :class:`Guard`.

    >>> @idempotent(store="sqlite:///tmp/idemp-doc.db", ttl=300)   # doctest: +SKIP
    ... def create_invoice(user_id: int, amount: float) -> dict:
    ...     return {"invoice_id": 123, "amount": amount}
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        the_scope = scope if scope is not None else f"{func.__module__}.{func.__qualname__}"
        guard = Guard(
            store,
            scope=the_scope,
            ttl=ttl,
            lease=lease,
            on_duplicate=on_duplicate,
            wait_timeout=wait_timeout,
            on_failure=on_failure,
            on_ambiguous=on_ambiguous,
            verify=verify,
            on_cancel=on_cancel,
        )
        keys = _ArgKeys(func, the_scope)

        def derive(args: tuple, kwargs: dict) -> tuple[str, str | None]:
            if key is not None:
                k = key(*args, **kwargs)
                if not isinstance(k, str):
                    raise TypeError(f"@idempotent {the_scope}: key= must return a str, got {type(k).__name__}")
                fp = _core.hash_request(keys.arguments(args, kwargs), format="jcs") if fingerprint else None
                return k, fp
            k, arguments = keys.key(args, kwargs)
            return k, (_core.hash_request(arguments, format="jcs") if fingerprint else None)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                k, fp = derive(args, kwargs)
                return await guard._arun(k, fp, func, args, kwargs)

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(func)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                k, fp = derive(args, kwargs)
                return guard._run(k, fp, func, args, kwargs)

            wrapper = sync_wrapper
        wrapper.guard = guard
        wrapper.key_for = lambda *a, **kw: derive(a, kw)[0]
        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate
