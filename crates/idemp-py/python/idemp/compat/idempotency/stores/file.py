"""``FileStore``: records in one SQLite file in a directory, shared by processes."""

import os
from pathlib import Path

from idemp import _core

from .base import NativeStore


class FileStore(NativeStore):
    """Records in ``directory/idemp.sqlite3`` (WAL, crash-safe, one atomic claim per
    execution), safe for every process on the machine (gunicorn workers, celery).

    ``synchronous="full"`` (default) makes a completed record survive power loss;
    ``"normal"`` survives a crash of the process (the original package never fsyncs).
    """

    FILENAME = "idemp.sqlite3"

    def __init__(self, directory: "str | Path", synchronous: str = "full") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = os.path.abspath(self.directory / self.FILENAME)
        super().__init__(_core.open_store(f"sqlite://{path}", synchronous=synchronous))
