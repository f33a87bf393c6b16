"""``llm_message_hash.hash`` on ``idemp.canon``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from idemp import _core

__all__ = ["HashOpts", "canonical_json", "hash_request"]


@dataclass
class HashOpts:
    """Keys to drop at any depth before hashing (exact, case-sensitive). The presets
    are the same sets as llm-message-hash-py's (and ``idemp.canon.PRESETS``)."""

    drop_keys: set[str] = field(default_factory=set)

    @classmethod
    def for_anthropic(cls) -> HashOpts:
        """Drops ``cache_control``, ``id``, ``usage``, ``stop_reason``, ``stop_sequence``."""
        return cls(drop_keys=set(_core.preset_keys("anthropic")))

    @classmethod
    def for_openai(cls) -> HashOpts:
        """Drops ``created``, ``id``, ``object``, ``system_fingerprint``, ``usage``, ``finish_reason``."""
        return cls(drop_keys=set(_core.preset_keys("openai")))

    @classmethod
    def for_bedrock(cls) -> HashOpts:
        """Drops ``cache_control``, ``usage``, ``stopReason``, ``metrics``."""
        return cls(drop_keys=set(_core.preset_keys("bedrock")))

    @classmethod
    def for_gemini(cls) -> HashOpts:
        """Drops ``usageMetadata``, ``safetyRatings``, ``finishReason``."""
        return cls(drop_keys=set(_core.preset_keys("gemini")))


_PRESETS = {frozenset(_core.preset_keys(p)): p for p in ("anthropic", "openai", "bedrock", "gemini")}


def _options(obj: Any, opts: HashOpts | None) -> dict[str, Any]:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        # idemp.canon reads bytes as JSON text; json.dumps refuses them.
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
    if opts is None or not opts.drop_keys:
        return {}
    preset = _PRESETS.get(frozenset(opts.drop_keys))
    if preset is not None:
        return {"preset": preset}
    return {"drop_keys": list(opts.drop_keys)}


def canonical_json(obj: Any, opts: HashOpts | None = None) -> str:
    """``json.dumps(obj, ensure_ascii=True, separators=(",", ":"), sort_keys=True)``
    after dropping ``opts.drop_keys`` at any depth; non-``str`` keys become ``str(k)``."""
    return _core.canonical_json(obj, **_options(obj, opts))


def hash_request(obj: Any, opts: HashOpts | None = None) -> str:
    """The lowercase hex SHA-256 of ``canonical_json(obj, opts)``."""
    return _core.hash_request(obj, **_options(obj, opts))
