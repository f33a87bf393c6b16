"""Exceptions of ``idempotency`` 0.1.0 (same classes and signatures)."""


class IdempotencyError(Exception):
    """Base exception for idempotency-related errors."""


class DuplicateExecutionError(IdempotencyError):
    """A duplicate execution under ``on_duplicate="raise"``."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"Duplicate execution detected for key: {key}")


class LockTimeoutError(IdempotencyError):
    """The running execution did not finish within the wait."""

    def __init__(self, key: str, timeout: float) -> None:
        self.key = key
        self.timeout = timeout
        super().__init__(f"Failed to acquire lock for key '{key}' within {timeout}s")


class SerializationError(IdempotencyError):
    """A result that cannot be serialized."""

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"Cannot serialize result: {reason}")
