"""One writer per run directory: an exclusive lock on ``<run dir>/.lock``.

The lock is the kernel's ``flock`` on that file, held while the process keeps it open, so it ends with
the process however the process ends (exception, Ctrl-C, kill -9); the file's content (pid, host, start
time, command) only names the holder in messages. A file left by a process that died without releasing
is taken over with a message. On a file system without ``flock`` the holder's pid is checked instead
(on the same host: alive and with the same start time; on another host it cannot be checked, and the
message says to delete the file when that process is gone).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from core.errors import RunDirError

__all__ = ["RunLock"]


def _proc_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot be checked from here
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = _proc_start(pid)
    return start is None or holder.get("start") in (None, start)


def describe(holder: dict) -> str:
    since = holder.get("time")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if since else ""
    cmd = f" ({holder['cmd']})" if holder.get("cmd") else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}{cmd}"


class RunLock:
    """``acquire()`` takes the lock or raises :class:`RunDirError` naming the holder; it returns a message
    when it took over a lock file left by a dead process. ``release()`` deletes the file and unlocks."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> str | None:
        if self._fd is not None:
            return None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise self._busy(holder) from None
            except OSError as exc:  # no flock on this file system: fall back to the recorded pid
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                holder = _read(fd)
                if holder and _alive(holder):
                    os.close(fd)
                    raise self._busy(holder, checkable=holder.get("host") == socket.gethostname()) from None
            try:  # a releasing holder unlinks the file before unlocking: make sure we locked the live one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read(fd)
            me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _proc_start(os.getpid()),
                  "time": time.time(), "cmd": " ".join(sys.argv)[:200]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self._fd = fd
            if previous:
                return (f"took over the lock of the run directory {self.path.parent} left by "
                        f"{describe(previous)}, which is no longer running")
            return None

    def _busy(self, holder: dict, checkable: bool = True) -> RunDirError:
        who = describe(holder) if holder else "another process"
        extra = "" if checkable else f"; if that process is gone, delete {self.path}"
        return RunDirError(f"the run directory {self.path.parent} is in use by {who}: one run writes a run "
                           "directory at a time. Wait for it to finish, or choose another run.out_dir"
                           + extra)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _read(fd: int) -> dict:
    """The holder recorded in the lock file ({} when empty; ``pid: ?`` when unreadable)."""
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return {}
    if not data.strip():
        return {}
    try:
        holder = json.loads(data.decode())
    except ValueError:
        holder = None
    return holder if isinstance(holder, dict) else {"pid": "?"}
