"""A lock of the package's own on an output directory: one ``sample``, ``train`` or ``run`` at a time.

HDF5's file locking is switched off on many parallel file systems (``HDF5_USE_FILE_LOCKING=FALSE``), and it
does not cover checkpoints, ``metrics.csv`` or ``config.yaml`` anyway. `directory_lock` creates
``<dir>/.latticeflow.lock`` exclusively (``O_CREAT | O_EXCL``) holding JSON ``{pid, host, command, since,
token}``; a second command finds it and is refused in one line naming the holder and how to clear the lock.
A lock left by a dead process on the same host (its pid gone, or reused by another process) is taken over
with a message on stderr; a lock of another host cannot be checked and is never taken over. The lock is
re-entrant within a process (``run`` holds it over its nested ``train`` and ``sample``) and is removed at the
end, on errors and on Ctrl-C, only if it is still ours. Under MPI rank 0 takes the lock and every rank learns
the outcome before anything is written.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "DirectoryLockedError", "directory_lock", "read_lock", "release_held_locks"]

LOCK_NAME = ".latticeflow.lock"
_GUARD_SUFFIX = ".takeover"
_YOUNG_SECONDS = 10.0  # a lock file still without its content is being written by its creator
_GUARD_STALE_SECONDS = 60.0

#: locks held by this process: real directory path -> [lock path, token, depth]
_HELD: dict[str, list[Any]] = {}
#: locks rank 0 of this MPI job holds, as seen by the other ranks: lock path -> token (an aborting rank removes them)
_JOB: dict[str, str] = {}


class DirectoryLockedError(OSError):
    """The output directory is locked by another command (a user error: one line, exit 2)."""


def _host() -> str:
    return socket.gethostname()


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of ``/proc/<pid>/stat``), to tell a reused pid; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` of this host exists (and is the one that started at ``start``, if known)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    if start is not None:
        now = _proc_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused
    return True


def read_lock(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder recorded in ``<directory>/.latticeflow.lock`` ({} if unreadable), None if there is no lock."""
    try:
        return _parse((Path(directory) / LOCK_NAME).read_bytes())
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw.decode("utf-8"))
        return info if isinstance(info, dict) else {}
    except (UnicodeDecodeError, ValueError):
        return {}


def _describe(info: dict[str, Any]) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, command {info.get('command', '?')!r}, "
            f"since {info.get('since', '?')}")


def _is_stale(info: dict[str, Any], lock: Path) -> bool:
    """A lock whose holder is certainly gone: a dead (or reused) pid of this host, or a file never completed."""
    if not info:  # created but its content never written (killed in between), or garbage
        try:
            return time.time() - lock.stat().st_mtime > _YOUNG_SECONDS
        except FileNotFoundError:
            return True
    if info.get("host") != _host():
        return False
    try:
        pid = int(info.get("pid", -1))
    except (TypeError, ValueError):
        return True
    if pid == os.getpid():  # our pid, but not a lock this process holds: a former process with our pid
        return True
    return not _alive(pid, info.get("pid_start"))


def _create(lock: Path, command: str) -> str | None:
    """Create the lock file exclusively with our record; its token, or None if it exists."""
    token = secrets.token_hex(8)
    info = {"pid": os.getpid(), "host": _host(), "command": command, "token": token,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid_start": _proc_start(os.getpid())}
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        data = (json.dumps(info) + "\n").encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(lock)
        raise
    os.close(fd)
    return token


def _take_over(lock: Path, seen: bytes) -> None:
    """Remove the stale lock whose content was ``seen``, unless another process replaced it meanwhile.

    A guard file (exclusive create) serialises the check-and-remove of competing processes."""
    guard = lock.with_name(lock.name + _GUARD_SUFFIX)
    try:
        fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - guard.stat().st_mtime > _GUARD_STALE_SECONDS:
                os.unlink(guard)  # left by a process killed during its own take-over
        time.sleep(0.05)
        return
    os.close(fd)
    try:
        try:
            current = lock.read_bytes()
        except FileNotFoundError:
            return
        if current == seen:
            os.unlink(lock)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(guard)


def _acquire(directory: Path, command: str) -> tuple[Path, str]:
    lock = directory / LOCK_NAME
    for _ in range(50):
        token = _create(lock, command)
        if token is not None:
            return lock, token
        try:
            seen = lock.read_bytes()
        except FileNotFoundError:
            continue  # released meanwhile
        info = _parse(seen)
        if not _is_stale(info, lock):
            holder = _describe(info) if info else "a process that is starting"
            where = "" if not info or info.get("host") == _host() else " (on another host: check there)"
            raise DirectoryLockedError(
                f"output directory {directory} is locked by another latticeflow command ({holder}){where}: "
                f"wait for it to finish, or if it is no longer running, remove {lock}")
        print(f"latticeflow: taking over the stale lock of {directory} ({_describe(info) if info else 'unreadable'}; "
              f"that process is gone)", file=sys.stderr, flush=True)
        _take_over(lock, seen)
    raise DirectoryLockedError(f"could not lock output directory {directory}: its lock {lock} keeps changing; "
                               f"is another latticeflow command starting there?")


def _release(lock: Path, token: str) -> None:
    """Remove ``lock`` if it still holds ``token`` (never someone else's lock)."""
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(lock.read_text())
        if isinstance(info, dict) and info.get("token") == token:
            os.unlink(lock)


def release_held_locks() -> None:
    """Release every lock this process holds, and on other ranks of an MPI job the locks rank 0 holds for the
    job (before ``MPI_Abort``, which skips ``finally`` blocks and would leave rank 0's lock behind)."""
    for key, (lock, token, _) in list(_HELD.items()):
        _release(lock, token)
        _HELD.pop(key, None)
    for lock, token in list(_JOB.items()):
        _release(Path(lock), token)
        _JOB.pop(lock, None)


def _missing_parents(directory: Path) -> list[Path]:
    """``directory`` and those of its ancestors that do not exist yet, deepest first."""
    out, d = [], directory.absolute()
    while not d.exists() and d != d.parent:
        out.append(d)
        d = d.parent
    return out


def _remove_created(created: list[Path]) -> None:
    for d in created:  # deepest first; stops at the first one that is not empty
        try:
            d.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike[str], command: str | None = None, world: Any = None) -> Iterator[Path]:
    """Hold the lock of ``directory`` (created if missing) for the block; re-entrant within a process.

    Raises :class:`DirectoryLockedError` (one line naming the holder) if another live command holds it. ``world``
    (a :class:`latticeflow.distributed.World`): rank 0 locks, every rank raises the same error if that failed.
    Directories this call created are removed again if nothing but the lock was written into them."""
    directory = Path(directory)
    main = world is None or world.is_main
    command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else ["python"])
    created: list[Path] = []
    key = ""
    error: tuple[bool, str] | None = None
    failure: OSError | None = None
    if main:
        try:
            created = _missing_parents(directory)
            directory.mkdir(parents=True, exist_ok=True)
            key = os.path.realpath(directory)
            if key in _HELD:
                _HELD[key][2] += 1
            else:
                lock, token = _acquire(directory, command)
                _HELD[key] = [lock, token, 1]
                from .files import remove_stale_in

                remove_stale_in(directory)  # temporaries of killed runs (we hold the lock: nobody writes here)
        except OSError as err:
            _remove_created(created)
            failure, error = err, (isinstance(err, DirectoryLockedError), str(err))
    shared = (str(_HELD[key][0]), _HELD[key][1]) if main and error is None else None
    if world is not None and world.distributed:
        error, shared = world.bcast((error, shared))
    if error is not None:  # every rank raises rank 0's refusal (rank 0 its own exception)
        err = failure or (DirectoryLockedError(error[1]) if error[0] else OSError(error[1]))
        if world is not None and world.distributed:
            err.collective_rank = 0  # type: ignore[attr-defined]
        raise err
    joined = not main and shared is not None and shared[0] not in _JOB
    if joined:
        _JOB[shared[0]] = shared[1]
    ok = False
    try:
        yield directory
        ok = True
    finally:
        if ok and world is not None and world.distributed:
            world.barrier()  # no rank is still writing when the lock goes
        if joined:
            _JOB.pop(shared[0], None)
        if main:
            held = _HELD.get(key)
            if held is not None:
                held[2] -= 1
                if held[2] == 0:
                    _release(held[0], held[1])
                    del _HELD[key]
                    _remove_created(created)
