"""Shared fixtures of idemp's own Python tests."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "crates" / "idemp" / "tests" / "vectors"


def _reachable(url: str, default_port: int) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'idemp.db'}"


@pytest.fixture
def redis_url() -> str:
    """A Redis database with a prefix of its own (never database 15: the idempotency
    package's suite flushes it)."""
    base = os.environ.get("IDEMP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if not _reachable(base, 6379):
        pytest.fail(f"Redis is not reachable at {base}: start it with scripts/services.sh")
    assert not base.rstrip("/").endswith("/15"), "database 15 belongs to the idempotency suite"
    return f"{base}?prefix=idemp-py-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def postgres_url() -> str:
    """Postgres with a schema of its own."""
    base = os.environ.get("IDEMP_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    if not _reachable(base, 5432):
        pytest.fail(f"Postgres is not reachable at {base}: start it with scripts/services.sh")
    return f"{base}?schema=idemp_py_{uuid.uuid4().hex[:12]}"
