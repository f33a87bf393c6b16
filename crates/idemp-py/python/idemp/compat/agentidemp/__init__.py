"""Drop-in ``agentidemp`` (agentidemp-py 0.1.0) on idemp's Rust core: the same keys,
byte for byte, and the same errors (``TypeError`` for a wrong type, and
``UnicodeDecodeError`` for ``uuid5_key`` of invalid UTF-8 ``bytes``)."""

from idemp.compat.agentidemp.keys import (
    NAMESPACE_ANTHROPIC,
    NAMESPACE_DNS,
    random,
    random_key,
    scoped_key,
    scoped_sha256_hex,
    sha256_hex,
    uuid5_key,
    uuid_v5,
)

__version__ = "0.1.0"

__all__ = [
    "NAMESPACE_ANTHROPIC",
    "NAMESPACE_DNS",
    "__version__",
    "random",
    "random_key",
    "scoped_key",
    "scoped_sha256_hex",
    "sha256_hex",
    "uuid5_key",
    "uuid_v5",
]
