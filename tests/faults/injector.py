"""Fault injection for the fault suite: make the n-th call of a write operation fail with an ``OSError``.

A *target* is ``(owner, attribute)``, e.g. ``(h5py.Dataset, "__setitem__")`` or ``(os, "replace")``. `count_calls`
runs a function once with counting wrappers and returns how many calls the targets received; `fail_nth` makes the
n-th of those calls (1-based, counted over all targets together) raise ``OSError(errno, …)`` instead, so a test can
loop ``for n in range(1, count + 1)`` over every failure point of a short run. `record` adds to the totals that
the fault suite prints at the end of the session (``tests/faults/conftest.py``).
"""
from __future__ import annotations

import errno as _errno
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["TOTALS", "count_calls", "fail_nth", "record", "ENOSPC", "EIO"]

ENOSPC = _errno.ENOSPC
EIO = _errno.EIO

#: Totals over the session: failure points injected, cases run, rows lost or miscounted (must stay 0).
TOTALS: dict[str, int] = {"points": 0, "cases": 0, "lost": 0}

Target = tuple[Any, str]


def record(points: int, lost: int = 0, cases: int = 1) -> None:
    """Add ``points`` injected failure points (and ``lost`` rows lost/miscounted) to the session totals."""
    TOTALS["points"] += int(points)
    TOTALS["lost"] += int(lost)
    TOTALS["cases"] += int(cases)


@contextmanager
def _patched(targets: Sequence[Target], hook: Callable[[str], None]) -> Iterator[None]:
    saved = []
    try:
        for owner, name in targets:
            original = getattr(owner, name)
            saved.append((owner, name, original))

            def wrapper(*args: Any, _original: Callable = original, _label: str = name, **kwargs: Any) -> Any:
                hook(_label)
                return _original(*args, **kwargs)

            setattr(owner, name, wrapper)
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def count_calls(targets: Sequence[Target], run: Callable[[], Any]) -> int:
    """Run ``run()`` once and return how many calls the targets received."""
    calls = [0]

    def hook(_: str) -> None:
        calls[0] += 1

    with _patched(targets, hook):
        run()
    return calls[0]


@contextmanager
def fail_nth(targets: Sequence[Target], n: int, err: int = ENOSPC) -> Iterator[dict[str, Any]]:
    """Within the block, the ``n``-th call to any of ``targets`` raises ``OSError(err)`` (later calls pass).

    Yields a dict whose ``"fired"`` says whether the fault was injected and ``"at"`` which target got it.
    """
    state: dict[str, Any] = {"calls": 0, "fired": False, "at": None}

    def hook(label: str) -> None:
        state["calls"] += 1
        if state["calls"] == n:
            state["fired"], state["at"] = True, label
            raise OSError(err, os.strerror(err))

    with _patched(targets, hook):
        yield state
