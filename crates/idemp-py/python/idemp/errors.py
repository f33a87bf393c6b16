"""The exceptions of idemp.

Every error idemp raises derives from :class:`IdempError`. Each mirrors an error of
the Rust core and carries its details as attributes (``key``, ``scope``, and the
stored ``record`` where there is one), so a caller can decide what to tell its own
caller without parsing messages::

    try:
        charge(order)
    except idemp.InProgressError as e:      # another worker runs it right now
        return 409, {"retry_after": e.retry_after}
    except idemp.AmbiguousError as e:       # a crashed run may or may not have charged
        alert(e.key, e.record)

Where a built-in exception fits, the class derives from it too: an invalid key is a
``ValueError``, an unreachable store a ``ConnectionError``, a result that JSON cannot
hold a ``TypeError``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "IdempError",
    "InvalidKeyError",
    "InProgressError",
    "DuplicateError",
    "MismatchError",
    "FailedError",
    "AmbiguousError",
    "LeaseLostError",
    "ReconcileError",
    "StoreError",
    "StoreUnavailableError",
    "StoreUrlError",
    "CodecError",
    "CanonError",
    "NotJSONError",
    "KeyRequiredError",
]


class IdempError(Exception):
    """Base class of every idemp error. Details are keyword attributes."""

    #: The idempotency key concerned, when there is one.
    key: str | None = None
    #: The guard scope of the key ("" when none).
    scope: str | None = None

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in details.items():
            setattr(self, name, value)

    def __reduce__(self):  # picklable across processes (multiprocessing, pools)
        details = {k: v for k, v in self.__dict__.items() if k != "message"}
        return (_rebuild, (type(self), self.message, details))


def _rebuild(cls, message, details):
    return cls(message, **details)


class InvalidKeyError(IdempError, ValueError):
    """The key is empty, longer than 255 bytes, or holds a byte that is not visible
    ASCII (spaces and control characters included)."""


class InProgressError(IdempError):
    """Another execution holds the key and is alive. ``retry_after`` (seconds) says
    when its lease passes; the owner may renew it."""

    retry_after: float = 0.0


class DuplicateError(IdempError):
    """A duplicate call under ``on_duplicate="reject"``. ``state`` is the existing
    record's state: ``in_progress``, ``completed`` or ``failed``."""

    state: str = ""


class MismatchError(IdempError, ValueError):
    """The key was used before with a different payload (fingerprint). Never replayed."""


class FailedError(IdempError):
    """An earlier execution failed and failures are sticky: its stored error, replayed
    as data (``kind``, ``error_message``, ``data``), never as a pickled object."""

    kind: str = ""
    error_message: str = ""
    data: Any = None


class AmbiguousError(IdempError):
    """An earlier owner stopped renewing its lease before it settled the key (it
    crashed or stalled): its side effect may or may not have happened. Raised under
    ``on_ambiguous="surface"``; settle it with ``Guard.resolve``."""

    token: int = 0
    attempts: int = 0
    lease_until: float = 0.0
    record: Any = None


class LeaseLostError(IdempError):
    """This execution ran, but lost its lease (the key was taken over or purged): its
    result was **not** stored."""

    token: int = 0


class ReconcileError(IdempError):
    """The ``verify=`` function failed; the key stays ambiguous."""


class StoreError(IdempError):
    """The store failed (corrupt or incompatible data, a backend error)."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The store cannot be reached. Safe to retry later (``is_transient``)."""


class StoreUrlError(IdempError, ValueError):
    """A store URL that is malformed or names an unknown scheme."""


class CodecError(IdempError, ValueError):
    """A stored outcome cannot be decoded (raw bytes, another codec, too large)."""


class CanonError(IdempError, ValueError):
    """JSON text that cannot be canonicalized; ``position`` is ``(line, column,
    offset)`` when known."""

    position: tuple[int, int, int] | None = None


class NotJSONError(IdempError, TypeError):
    """A value JSON cannot hold, where idemp must store or hash it: a result of a
    guarded call, an argument a key is derived from. The message names it."""


class KeyRequiredError(IdempError, ValueError):
    """A destructive tool was called without an idempotency key."""
