"""``idempotency.key``: the package's textual keys (``module.func:arg0=1:c=3``).

The text is the same as the original's, so keys stay readable and stable; records
are stored under it when it is a valid idemp key, and under its ``sha256_hex``
otherwise (spaces, non-ASCII, over 255 bytes).
"""

import json
from collections.abc import Callable

from idemp import _core


def generate_key(
    func: Callable,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    custom_key_func: Callable[..., str] | None = None,
) -> str:
    """``function_name:arg0=val0:...:kw=val`` (sorted), or the custom function's key;
    longer than 200 characters, ``function_name:`` + 16 hex of its SHA-256."""
    if custom_key_func:
        return custom_key_func(*args, **kwargs)
    func_name = f"{func.__module__}.{func.__qualname__}"
    normalized = _normalize_args(args, kwargs)
    parts = [func_name]
    parts.extend(f"{k}={v}" for k, v in sorted(normalized.items()))
    key = ":".join(parts)
    if len(key) > 200:
        # The first 8 bytes of SHA-256 in hex, as the original (from the Rust core).
        return f"{func_name}:{_core.sha256_hex(key)[3:19]}"
    return key


def _normalize_args(args: tuple[object, ...], kwargs: dict[str, object]) -> dict[str, str]:
    normalized: dict[str, str] = {}
    for i, arg in enumerate(args):
        normalized[f"arg{i}"] = _serialize_value(arg)
    for key, value in kwargs.items():
        normalized[key] = _serialize_value(value)
    return normalized


def _serialize_value(value: object) -> str:
    if isinstance(value, (str, int, float, bool, type(None))):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return json.dumps([_serialize_value(v) for v in value])
    if isinstance(value, dict):
        return json.dumps({k: _serialize_value(v) for k, v in sorted(value.items())}, sort_keys=True)
    if isinstance(value, set):
        return json.dumps(sorted(_serialize_value(v) for v in value))
    return repr(value)


def store_key(text: str) -> str:
    """The idemp key a textual key is stored under."""
    try:
        return _core.validate_key(text)
    except ValueError:
        return _core.sha256_hex(text)
