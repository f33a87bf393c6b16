"""Idempotency keys: the same key on every attempt.

A retry is recognised as the same request only if it carries the key of the first
attempt, so keys are derived from what a call *is*, never drawn fresh per attempt.

* The agentidemp-compatible functions give the same bytes as ``agentidemp-py`` 0.1.0
  and the Rust ``agentidemp`` crate: :func:`sha256_hex`, :func:`scoped_sha256_hex`,
  :func:`scoped_key`, :func:`uuid5_key`, :func:`random_key` and the namespaces.
* :class:`KeyBuilder` is the recommended form for new code: injective (length-prefixed
  typed parts) and domain-separated, still ``ik_`` + 32 hex.
* :func:`for_args` (and the blog's :meth:`IdempKey.for_args`) keys a tool call by its
  scope, name and arguments; argument order never matters.

``str`` is hashed as its UTF-8 bytes, without Unicode normalization; ``bytes`` as is.

>>> from idemp.keys import sha256_hex, KeyBuilder
>>> sha256_hex("abc")
'ik_ba7816bf8f01cfea414140de5dae2223'
>>> len(KeyBuilder("refund").part("cus_42").part_int(2500).build())
35
"""

from __future__ import annotations

import uuid
from typing import Any

from . import _core
from ._core import (
    MAX_KEY_LEN,
    KeyBuilder,
    for_args,
    random_key,
    scoped_key,
    scoped_sha256_hex,
    sha256_hex,
    uuid5_key,
    validate_key,
)

__all__ = [
    "MAX_KEY_LEN",
    "NAMESPACE_ANTHROPIC",
    "NAMESPACE_DNS",
    "NAMESPACE_OID",
    "NAMESPACE_URL",
    "NAMESPACE_X500",
    "IdempKey",
    "KeyBuilder",
    "builder",
    "for_args",
    "key_for_args",
    "random_key",
    "scoped_key",
    "scoped_sha256_hex",
    "sha256_hex",
    "uuid5_key",
    "validate_key",
]

#: The RFC 4122 DNS namespace. The name is historical (agentidemp exports the DNS
#: namespace under it); it equals :data:`NAMESPACE_DNS`.
NAMESPACE_ANTHROPIC: uuid.UUID = uuid.UUID(_core.NAMESPACE_ANTHROPIC)
NAMESPACE_DNS: uuid.UUID = uuid.UUID(_core.NAMESPACE_DNS)
NAMESPACE_URL: uuid.UUID = uuid.UUID(_core.NAMESPACE_URL)
NAMESPACE_OID: uuid.UUID = uuid.UUID(_core.NAMESPACE_OID)
NAMESPACE_X500: uuid.UUID = uuid.UUID(_core.NAMESPACE_X500)


def builder(scope: str) -> KeyBuilder:
    """Starts an injective key: ``builder("refund").part("cus_42").part_int(2500).build()``."""
    return KeyBuilder(scope)


def key_for_args(args: Any) -> str:
    """The key ``@idempotent`` derives from a call's bound arguments (a dict): the
    injective builder over their RFC 8785 canonical JSON. Same as Rust's
    ``idemp::Guard::key_for_args``."""
    return _core.key_for_args(args)


class IdempKey(str):
    """A key as a ``str``, with the constructor the blog posts use::

        key = IdempKey.for_args(scope=f"charge:{session_id}",
                                args={"customer_id": cid, "amount_cents": 1999})
        stripe.PaymentIntent.create(..., idempotency_key=str(key))
    """

    __slots__ = ()

    @classmethod
    def for_args(cls, scope: str, args: Any, tool: str = "") -> IdempKey:
        """``for_args(scope, tool, args)``: the same key for the same arguments in any
        order; ``tool`` separates two tools of one scope."""
        return cls(for_args(scope, tool, args))
