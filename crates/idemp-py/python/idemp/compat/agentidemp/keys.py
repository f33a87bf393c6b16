"""``agentidemp.keys`` on idemp's Rust core (``idemp.keys``)."""

from __future__ import annotations

import uuid

from idemp import _core
from idemp._core import random_key, scoped_key, scoped_sha256_hex, sha256_hex

__all__ = [
    "NAMESPACE_ANTHROPIC",
    "NAMESPACE_DNS",
    "random",
    "random_key",
    "scoped_key",
    "scoped_sha256_hex",
    "sha256_hex",
    "uuid5_key",
    "uuid_v5",
]

NAMESPACE_ANTHROPIC: uuid.UUID = uuid.UUID(_core.NAMESPACE_ANTHROPIC)
NAMESPACE_DNS: uuid.UUID = NAMESPACE_ANTHROPIC


def uuid5_key(namespace: uuid.UUID, name: str | bytes) -> str:
    """The UUIDv5 of ``name`` in ``namespace``, as agentidemp: ``namespace`` must be a
    ``uuid.UUID``; ``bytes`` names are decoded as UTF-8 first."""
    if not isinstance(namespace, uuid.UUID):
        raise TypeError(f"namespace must be uuid.UUID, got {type(namespace).__name__}")
    if isinstance(name, bytes):
        name.decode("utf-8")  # agentidemp refuses invalid UTF-8 the same way
    elif not isinstance(name, str):
        raise TypeError(f"name must be str or bytes, got {type(name).__name__}")
    return _core.uuid5_key(namespace, name)


uuid_v5 = uuid5_key
random = random_key
