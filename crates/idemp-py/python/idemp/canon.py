"""Canonical JSON for request hashing: two requests that mean the same get the same
bytes, hence the same hash and the same idempotency key.

Two formats: ``"python"`` (default), byte-identical to llm-message-hash-py 0.1.0
``canonical_json`` / ``hash_request`` (CPython ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=True)``), and ``"jcs"``, RFC 8785.

Every function takes a Python value (``dict``, ``list``, ``str``, numbers, ``None``;
non-``str`` dict keys become ``str(key)`` as in llm-message-hash-py) **or** JSON text
as ``bytes`` (a request body as received: parsed once, in Rust, with integers kept
exact). Fields that change between attempts without changing the meaning are
dropped first: by name at any depth (``preset=`` ``anthropic`` / ``openai`` /
``bedrock`` / ``gemini``, ``drop_keys=``) or by position (``drop_paths=
["metadata.user_id", "messages[*].cache_control"]``).

>>> from idemp.canon import canonical_json, hash_request
>>> canonical_json({"b": 1e16, "a": "é"})
'{"a":"\\\\u00e9","b":1e+16}'
>>> hash_request({"id": "msg_1", "x": 1}, preset="anthropic") == hash_request(b'{"x": 1}')
True
"""

from __future__ import annotations

from ._core import Canonicalizer, canonical_json, hash_request, preset_keys

__all__ = ["PRESETS", "Canonicalizer", "canonical_json", "hash_request", "preset_keys"]

#: The provider presets: the keys each drops at any depth.
PRESETS: dict[str, frozenset[str]] = {
    name: frozenset(preset_keys(name)) for name in ("anthropic", "openai", "bedrock", "gemini")
}
