"""``MemoryStore``: records in this process (idemp's sharded memory store)."""

from idemp import _core

from .base import NativeStore


class MemoryStore(NativeStore):
    """Thread-safe in-memory store; does not persist across processes or restarts."""

    def __init__(self) -> None:
        super().__init__(_core.open_store("memory:"))
