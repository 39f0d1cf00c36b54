"""The data directory lock: one process owns a directory (docs/architecture.md invariant 10).

An exclusive, non-blocking ``flock`` on ``<data_dir>/agentcast.lock``, held
until release. ``flock`` locks an open file description, not a process, so a
second owner inside the same process is refused as well.

The lock file also carries a small JSON marker about the session holding it
(pid, ``open``/``closed``, ``synchronous`` mode, and the ``db_id`` and
``stamp`` of the database it left). The next owner reads it to learn whether
the previous session ended cleanly — which matters for
``synchronous=NORMAL``, where a power loss may lose the last commits — and
whether the database is still the one that session left, not a replaced or
restored file (see :mod:`agentcast.db.session`). A marker that is missing or
cannot be read comes back as ``{}``.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Final

from ..errors import DataDirLocked

__all__ = ["LOCK_FILENAME", "DataDirLock"]

LOCK_FILENAME: Final = "agentcast.lock"


class DataDirLock:
    """The exclusive lock on one data directory, and its session marker.

    Blocking file-system calls: run them off the event loop.
    """

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._path = data_dir / LOCK_FILENAME
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        """The lock file."""
        return self._path

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> dict[str, Any]:
        """Create the directory, take the lock, return the previous session's marker.

        Raises:
            DataDirLocked: another owner holds it; the message names the
                directory and, when known, the holder's pid.
        """
        if self._fd is not None:
            return self._read()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_marker(fd).get("pid", "unknown")
            os.close(fd)
            raise DataDirLocked(
                f"data directory {self._data_dir} is already in use (lock {self._path} is "
                f"held by pid {holder}); stop the other agentcast process or use another "
                "--data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self._read()

    def mark(
        self,
        state: str,
        synchronous: str,
        *,
        db_id: str | None = None,
        stamp: str | None = None,
    ) -> None:
        """Record this session's state in the lock file, durably (fsync).

        ``db_id`` and ``stamp`` are the database's identity and its latest
        stamp: the next owner compares them with the database it opens.
        """
        if self._fd is None:
            return
        marker: dict[str, Any] = {"pid": os.getpid(), "state": state, "synchronous": synchronous}
        if db_id is not None:
            marker["db_id"] = db_id
        if stamp is not None:
            marker["stamp"] = stamp
        data = json.dumps(marker)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data.encode(), 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Release the lock (closing the descriptor drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read(self) -> dict[str, Any]:
        return {} if self._fd is None else _read_marker(self._fd)


def _read_marker(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
