"""Drop-in ``idempotency`` (idempotency 0.1.0) on idemp's Rust core.

Same API (``idempotent``, the exceptions, ``Record``, ``MemoryStore`` /
``FileStore`` / ``RedisStore``), with the claim done right:

* every execution takes one atomic claim in the store (a lease with a heartbeat and a
  fencing token) instead of check-then-lock-then-set;
* ``on_duplicate="wait"`` (and ``"return"``, which waited on the lock too) really
  waits for the running call, woken by the store, and replays its result; after 10 s
  it raises ``LockTimeoutError`` as before;
* failures under ``on_failure="lock"`` are stored as data (type name, message,
  arguments) and re-raised as the same exception type, never unpickled;
* ``FileStore(directory)`` keeps its records in one SQLite file in that directory
  (``idemp.sqlite3``), shared safely by every process; ``RedisStore(client,
  prefix)`` talks to the same Redis server and database as ``client``;
* ``store=`` also takes any ``idemp.open_store(url)`` store (Postgres, Redis Cluster…)
  or a store URL.

Differences: a result JSON cannot hold raises ``TypeError`` (the original stored
``None`` and replayed it); the first call returns the result as stored (tuples come
back as lists, as replays always did).
"""

from .decorator import idempotent
from .exceptions import (
    DuplicateExecutionError,
    IdempotencyError,
    LockTimeoutError,
    SerializationError,
)
from .stores import MemoryStore, Store

__all__ = [
    "idempotent",
    "IdempotencyError",
    "DuplicateExecutionError",
    "LockTimeoutError",
    "SerializationError",
    "Store",
    "MemoryStore",
]
