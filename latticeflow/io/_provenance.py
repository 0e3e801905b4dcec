"""Provenance of a run: which code, on which machine, when and how it was invoked.

:func:`provenance` never raises: anything it cannot determine is ``"unknown"``.
It does not import torch (the version comes from the installed metadata unless
torch is already imported), so it is cheap to call from light-weight tools.
:func:`result_header` opens every benchmark result (it imports torch when called).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["provenance", "git_commit", "result_header"]

_UNKNOWN = "unknown"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except Exception:  # PackageNotFoundError, broken metadata, ...
        return _UNKNOWN


def _torch_version() -> str:
    torch = sys.modules.get("torch")
    version = getattr(torch, "__version__", None)
    if version is not None:
        return str(version)
    return _dist_version("torch")


def _git(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def git_commit(directory: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``directory``.

    ``directory`` defaults to the latticeflow package's source tree.  Returns
    ``"unknown"`` when git is missing, the directory is not in a checkout, or
    the directory is ignored by that checkout (e.g. an install inside a
    ``.venv`` that happens to live in some repository).
    """
    where = Path(directory) if directory is not None else _PACKAGE_DIR
    try:
        head = _git(where, "rev-parse", "HEAD")
        if head.returncode != 0:
            return _UNKNOWN
        commit = head.stdout.strip()
        if len(commit) < 7 or any(c not in "0123456789abcdef" for c in commit):
            return _UNKNOWN
        if _git(where, "check-ignore", "-q", str(where)).returncode == 0:
            return _UNKNOWN
        return commit
    except Exception:  # git not installed, timeout, permissions, ...
        return _UNKNOWN


def provenance(command: str | None = None) -> dict[str, str]:
    """Provenance strings to store with every ensemble and checkpoint.

    Keys: ``latticeflow_version``, ``torch_version``, ``git_commit``, ``host``,
    ``created`` (ISO 8601, UTC) and ``command`` (default: ``" ".join(sys.argv)``).
    """
    try:
        host = socket.gethostname() or _UNKNOWN
    except Exception:
        host = _UNKNOWN
    return {
        "latticeflow_version": _dist_version("latticeflow"),
        "torch_version": _torch_version(),
        "git_commit": git_commit(),
        "host": host,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if command is None else str(command),
    }


def result_header(name: str, **fields: Any) -> dict[str, Any]:
    """The head of a benchmark result: ``benchmark`` (``name``), ``date`` (ISO 8601, local time), ``torch``
    (version), ``threads`` (torch's intra-op threads) and ``load_avg`` ({"start": the 1, 5, 15 minute load
    averages now}), then ``fields``."""
    import torch

    return {"benchmark": name, "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_avg": {"start": list(os.getloadavg())}, **fields}
