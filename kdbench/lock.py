"""One benchmark process per output folder: a lock file holding the owner's PID.

A second process on the same folder fails at once with a clear message; a lock left by a dead
process (killed, crashed machine) is taken over.

Where the OS offers it (POSIX), ownership is an exclusive `flock` on the lock file: the kernel
drops it when the owner dies however it dies, so a stale lock can never block a run and a recycled
PID can never keep one alive. The PID, host and start time written into the file are for the
message only. Elsewhere, the file is created exclusively and judged stale when its PID is not a
live process.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from .errors import KdbenchError

try:
    import fcntl
except ImportError:  # Windows: exclusive create + PID liveness instead
    fcntl = None


class FolderLockedError(KdbenchError):
    pass


# Locks this process holds, by lock path: taking one twice (a cache folder inside the output
# folder, a retry in the same process) is not a conflict.
_HELD: dict[str, "FolderLock"] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: Path) -> dict:
    info: dict = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            k, _, v = line.partition("=")
            info[k.strip()] = v.strip()
    except (OSError, UnicodeDecodeError):
        pass
    if "pid" not in info and info:  # an old-style lock file: the PID alone
        info = {"pid": next(iter(info))}
    return info


class FolderLock:
    def __init__(self, folder: Path, what: str = "output folder"):
        self.path = Path(folder) / ".kdbench.lock"
        self.what = what
        self.held = False
        self._fd: int | None = None
        self._reentrant = False

    def _busy(self, info: dict) -> FolderLockedError:
        pid = info.get("pid", "?")
        host = info.get("host")
        since = info.get("started")
        who = f"PID {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        when = f", running since {since}" if since else ""
        return FolderLockedError(
            f"{self.what} '{self.path.parent}' is in use by another kdbench process ({who}{when}); wait for it "
            f"to finish, stop it, or use another --out / --cache-dir. (Lock file: {self.path})")

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise FolderLockedError(f"{self.what} '{self.path.parent}': cannot create the lock file {self.path} "
                                    f"({e.strerror or e}); choose a folder you can write to") from None

    def _write_owner(self, fd: int) -> None:
        text = (f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                f"started={time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, text.encode())

    def acquire(self) -> "FolderLock":
        key = str(self.path.resolve())
        if key in _HELD:
            self.held, self._reentrant = True, True
            return self
        if fcntl is None:
            self._acquire_pid_file()
        else:
            self._acquire_flock()
        self.held = True
        _HELD[key] = self
        return self

    def _acquire_flock(self) -> None:
        for _ in range(10):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy(_owner(self.path)) from None
            # The previous owner may have unlinked the file between our open and flock: then we
            # hold a lock on a file nobody else sees. Retry on the file that is there now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._write_owner(fd)  # a dead owner's PID is simply overwritten: taken over
                self._fd = fd
                return
            os.close(fd)
        raise FolderLockedError(f"could not take the lock {self.path}: it keeps being replaced by other processes")

    def _acquire_pid_file(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = _owner(self.path)
                try:
                    pid = int(info.get("pid", 0))
                except ValueError:
                    pid = 0
                if pid and _alive(pid):
                    raise self._busy(info) from None
                self.path.unlink(missing_ok=True)  # stale lock from a dead process: take it over
                continue
            except OSError:
                self._open()  # raises the not-writable message
                raise
            self._write_owner(fd)
            os.close(fd)
            return
        raise FolderLockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._reentrant:
            return
        _HELD.pop(str(self.path.resolve()), None)
        try:
            # Unlink while still holding the lock, so no one can take it over in between.
            if _owner(self.path).get("pid") == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
