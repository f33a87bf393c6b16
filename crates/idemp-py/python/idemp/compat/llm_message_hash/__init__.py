"""Drop-in ``llm_message_hash`` (llm-message-hash-py 0.1.0) on idemp's Rust core:
byte-identical ``canonical_json`` and ``hash_request``, parsed and hashed in Rust."""

from idemp.compat.llm_message_hash.hash import HashOpts, canonical_json, hash_request

__version__ = "0.1.0"

__all__ = ["HashOpts", "__version__", "canonical_json", "hash_request"]
