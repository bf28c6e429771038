"""One benchmark process per output folder: a lock file holding the owner's PID.

A second process on the same folder fails at once with a clear message; a lock left by a dead
process (killed, crashed machine) is taken over."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import KdbenchError


class FolderLockedError(KdbenchError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    def __init__(self, folder: Path, what: str = "output folder"):
        self.path = Path(folder) / ".kdbench.lock"
        self.what = what
        self.held = False

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid == os.getpid():
                    self.held = True
                    return self
                if pid and _alive(pid):
                    raise FolderLockedError(
                        f"{self.what} '{self.path.parent}' is in use by another kdbench process (PID {pid}); "
                        f"wait for it, or use another --out. (Lock file: {self.path})") from None
                self.path.unlink(missing_ok=True)  # stale lock from a dead process: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise FolderLockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            try:
                if self.path.read_text().strip() == str(os.getpid()):
                    self.path.unlink()
            except OSError:
                pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
