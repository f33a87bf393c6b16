"""``idempotency.record``: the state of one execution, as the original package has it."""

import time
from dataclasses import dataclass, field
from typing import Literal

from .utils import ensure_float


@dataclass
class Record:
    """The state of an idempotent execution.

    Attributes:
        key: Unique identifier for this operation
        status: ``in_progress``, ``completed`` or ``failed``
        result: the (JSON) return value, if completed
        error: the stored error, if failed
        started_at / completed_at / heartbeat: timestamps (seconds since the epoch)
    """

    key: str
    status: Literal["in_progress", "completed", "failed"]
    started_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    heartbeat: float = field(default_factory=time.time)
    result: object = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "status": self.status,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "heartbeat": self.heartbeat,
            "result": self.result,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "Record":
        status = data["status"]
        if status not in ("in_progress", "completed", "failed"):
            raise ValueError(f"Invalid status: {status}")
        return cls(
            key=str(data["key"]),
            status=status,  # type: ignore[arg-type]
            started_at=ensure_float(value=data["started_at"]),
            completed_at=ensure_float(value=data.get("completed_at"), default=None),  # type: ignore[arg-type]
            heartbeat=ensure_float(value=data["heartbeat"]),
            result=data.get("result"),
            error=str(data["error"]) if data.get("error") else None,
        )

    def is_stale(self, timeout: float) -> bool:
        """In progress with a heartbeat older than ``timeout`` seconds."""
        if self.status != "in_progress":
            return False
        return (time.time() - self.heartbeat) > timeout
