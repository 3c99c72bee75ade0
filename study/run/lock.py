"""One driver per study: a lock in the run directory, and a record in external storage.

``DriverLock`` is an ``flock`` on ``RUN/driver.lock``, held while a driver runs the study; the
kernel drops it when the process ends, however it ends, so a lock left by a killed driver is
simply free (the file still names that driver, and the next one says it takes over). The
file names the holder (host, pid, since when) for the message that refuses a second driver.

Storage outside the run directory (a bucket, an NFS folder) can be reached from copies of
the run directory too, so the experiment there holds ``study-owner.json`` (``OwnerRecord``):
which run directory it belongs to, and the driver working on it now with a heartbeat, so a
driver on another host is seen as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from study.config import StudyError

#: Seconds between two heartbeats of the driver in the owner record.
HEARTBEAT_S = 30.0
#: A driver on another host whose heartbeat is this old is taken to be gone.
STALE_S = 120.0


@dataclass(frozen=True)
class Holder:
    """A driver process: where it runs and since when (ISO time, UTC)."""

    host: str
    pid: int
    since: str

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Holder:
        return cls(str(data["host"]), int(data["pid"]), str(data["since"]))

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since}"

    def alive_here(self) -> bool:
        """Whether this process still runs (only answerable on its own host)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process of that pid
        return True


class DriverLock:
    """The run directory's lock: ``acquire()`` once, ``release()`` when the study ends."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, what: str) -> Holder | None:
        """Takes the lock; returns the holder of a lock left behind (a driver that is gone),
        else ``None``. A ``StudyError`` naming the holder when a live driver has it
        (``what``: the run directory, for the message)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by subprocesses
        except OSError as exc:
            raise StudyError(f"{what} cannot hold its lock {self.path.name} ({exc.strerror})") from None
        if not self._take(fd, fcntl.LOCK_EX):
            os.close(fd)
            self._refuse(what)
        left = self._holder()
        me = json.dumps(asdict(Holder.me())).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        os.fsync(fd)
        self._fd = fd
        return left

    def refuse_if_held(self, what: str) -> None:
        """The ``StudyError`` of ``acquire`` when a live driver holds the lock; nothing when it
        is free or there is no lock file. Leaves the file as it is (no lock taken, no record)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            if not self._take(fd, fcntl.LOCK_SH):
                self._refuse(what)
        finally:
            os.close(fd)  # drops the shared lock, if taken

    @staticmethod
    def _take(fd: int, kind: int) -> bool:
        """``flock`` without waiting on a driver, trying again twice in 40 ms: the probe of
        ``refuse_if_held`` in another process holds a shared lock for microseconds."""
        for attempt in range(3):
            try:
                fcntl.flock(fd, kind | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if attempt < 2:
                    time.sleep(0.02)
        return False

    def _refuse(self, what: str) -> None:
        holder = self._holder()
        for _ in range(40):  # it took the lock a moment ago: it names itself within milliseconds
            if holder is not None:
                break
            time.sleep(0.05)
            holder = self._holder()
        raise StudyError(
            f"{what} is in use by another driver ({holder or 'one that is starting'}); "
            "wait for it to end, or stop it first"
        ) from None

    def release(self) -> None:
        """Empties the file (no driver holds it) and drops the lock. The file stays: removing
        it would let two drivers lock two different files of one name."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # the run directory was removed (a study that failed to start)
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _holder(self) -> Holder | None:
        try:
            return Holder.from_dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # empty (free, or its holder is writing it), or unreadable


@dataclass(frozen=True)
class OwnerRecord:
    """``study-owner.json`` in an experiment outside the run directory: the run directory it
    belongs to (``host``, ``run_dir``, ``study_id``) and the driver on it now, if any."""

    study_id: str
    host: str
    run_dir: str
    driver: Holder | None = None
    heartbeat: float = 0.0  # time.time() of the driver's last heartbeat

    @classmethod
    def from_bytes(cls, data: bytes) -> OwnerRecord:
        raw = json.loads(data)
        driver = Holder.from_dict(raw["driver"]) if raw.get("driver") else None
        return cls(raw["study_id"], raw["host"], raw["run_dir"], driver, float(raw.get("heartbeat", 0)))

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    def driver_alive(self) -> bool:
        """Whether a driver works on the experiment now: on this host, its process runs; on
        another, its heartbeat is younger than ``STALE_S``."""
        if self.driver is None:
            return False
        if self.driver.host == socket.gethostname():
            return self.driver.alive_here()
        return time.time() - self.heartbeat < STALE_S


class Heartbeat:
    """Rewrites the owner record every ``HEARTBEAT_S`` seconds from a daemon thread."""

    def __init__(self, write: Any) -> None:
        self._write = write
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="study-owner-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # storage unreachable for a moment: the next beat tries again
                self._write()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
