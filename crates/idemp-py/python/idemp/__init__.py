"""idemp: make retries safe, with a Rust core.

* :mod:`idemp.keys`: the same key on every attempt (agentidemp-compatible functions,
  an injective builder, ``for_args``).
* :mod:`idemp.canon`: canonical JSON and request hashes (llm-message-hash-compatible,
  RFC 8785).
* :func:`open_store` and :class:`Guard` / :func:`idempotent`: at most one execution
  per key over memory, SQLite, Redis (Cluster) or Postgres, with leases, heartbeats,
  fencing tokens, replay, coalesced waiting and an explicit *ambiguous* outcome.
* :mod:`idemp.retry`, :mod:`idemp.cache`, :mod:`idemp.tools`, :mod:`idemp.batch`:
  agent helpers.
* :mod:`idemp.compat`: drop-in ``agentidemp``, ``llm_message_hash`` and
  ``idempotency`` modules backed by the same core.

The three lines::

    import idemp

    @idemp.idempotent(store="sqlite://idemp.db")
    def charge(order_id: str, cents: int) -> dict: ...
"""

from __future__ import annotations

import atexit as _atexit

from . import batch, cache, canon, errors, keys, retry, tools
from . import _core
from ._core import Begin, Lease, Record, Store, __version__, open_store
from .errors import (
    AmbiguousError,
    CanonError,
    CodecError,
    DuplicateError,
    FailedError,
    IdempError,
    InProgressError,
    InvalidKeyError,
    KeyRequiredError,
    LeaseLostError,
    MismatchError,
    NotJSONError,
    ReconcileError,
    StoreError,
    StoreUnavailableError,
    StoreUrlError,
)
from .guard import Guard, default_store, idempotent

# Runtime threads stop calling into Python before the interpreter finalizes.
_atexit.register(_core._at_exit)

__all__ = [
    "AmbiguousError",
    "Begin",
    "CanonError",
    "CodecError",
    "DuplicateError",
    "FailedError",
    "Guard",
    "IdempError",
    "InProgressError",
    "InvalidKeyError",
    "KeyRequiredError",
    "Lease",
    "LeaseLostError",
    "MismatchError",
    "NotJSONError",
    "Record",
    "ReconcileError",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "StoreUrlError",
    "__version__",
    "batch",
    "cache",
    "canon",
    "default_store",
    "errors",
    "idempotent",
    "keys",
    "open_store",
    "retry",
    "tools",
]
