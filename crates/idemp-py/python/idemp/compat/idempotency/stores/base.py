"""``idempotency.stores.base``: the store interface, and its implementation over an
idemp store (every store of this package is one)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from idemp import _core
from idemp.errors import StoreError

from ..key import store_key
from ..record import Record

#: The idemp scope of this package's records, and of its locks.
SCOPE = "idempotency"
LOCK_SCOPE = "idempotency.lock"
#: ``ttl=None`` (keep for ever): a hundred years.
FOREVER = 100 * 365 * 86400.0


class Store(ABC):
    """The interface of ``idempotency`` stores (``get`` / ``set`` / ``delete`` /
    ``acquire_lock`` / ``release_lock``). The decorator needs an atomic claim, which
    only idemp stores have: subclass :class:`NativeStore` (or pass
    ``idemp.open_store(url)``) rather than this class."""

    @abstractmethod
    def get(self, key: str) -> Record | None: ...

    @abstractmethod
    def set(self, record: Record, ttl: float | None = None) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def acquire_lock(self, key: str, timeout: float = 10.0) -> bool: ...

    @abstractmethod
    def release_lock(self, key: str) -> None: ...


class NativeStore(Store):
    """This package's store API over an idemp store (``self.idemp_store``), which the
    decorator uses directly for its atomic claims."""

    def __init__(self, idemp_store: _core.Store) -> None:
        self.idemp_store = idemp_store
        self._locks: dict[str, int] = {}

    def get(self, key: str) -> Record | None:
        rec = self.idemp_store.get(store_key(key), SCOPE)
        if rec is None:
            return None
        failure = rec.failure
        return Record(
            key=key,
            status=rec.state,
            started_at=rec.created_at,
            completed_at=rec.updated_at if rec.state != "in_progress" else None,
            heartbeat=rec.updated_at,
            result=rec.value,
            error=failure.get("message") if isinstance(failure, dict) else None,
        )

    def set(self, record: Record, ttl: float | None = None) -> None:
        """Replaces the record (purge, claim, settle): for tools and tests; the
        decorator never writes this way."""
        k = store_key(record.key)
        keep = FOREVER if ttl is None else float(ttl)
        for _ in range(10):
            self.idemp_store.purge(k, SCOPE)
            state, token, _ = self.idemp_store.claim(k, SCOPE, lease=keep, ttl=keep)
            if state == "acquired":
                break
        else:
            raise StoreError(f"could not replace the record of {record.key!r}: it keeps being claimed")
        if record.status == "completed":
            self.idemp_store.complete(k, token, record.result, SCOPE, ttl=keep)
        elif record.status == "failed":
            self.idemp_store.fail(k, token, record.error or "", SCOPE, ttl=keep)

    def delete(self, key: str) -> None:
        k = store_key(key)
        self.idemp_store.purge(k, SCOPE)
        self.idemp_store.purge(k, LOCK_SCOPE)
        self._locks.pop(key, None)

    def acquire_lock(self, key: str, timeout: float = 10.0) -> bool:
        """An exclusive lock on ``key`` (a claim in a lock scope, expiring
        ``timeout + 60`` s after it was taken), waiting up to ``timeout`` seconds."""
        k = store_key(key)
        deadline = time.monotonic() + max(0.0, timeout)
        hold = max(0.0, timeout) + 60.0
        while True:
            state, token, _ = self.idemp_store.claim(k, LOCK_SCOPE, lease=hold, ttl=hold)
            if state == "acquired":
                self._locks[key] = token
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.idemp_store.wait(k, min(left, 0.5), LOCK_SCOPE)

    def release_lock(self, key: str) -> None:
        token = self._locks.pop(key, None)
        if token is None:
            return
        try:
            self.idemp_store.release(store_key(key), token, LOCK_SCOPE)
        except StoreError:
            pass  # already released, purged or taken over

    def clear(self) -> None:
        """Deletes every record and lock of this package in the store."""
        for scope in (SCOPE, LOCK_SCOPE):
            while True:
                recs = self.idemp_store.list(scope=scope, limit=1000)
                if not recs:
                    break
                for rec in recs:
                    self.idemp_store.purge(rec.key, scope)
        self._locks.clear()
