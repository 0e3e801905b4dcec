"""Tests of provenance(): keys, formats, and never raising."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import latticeflow.io
from latticeflow.io import provenance
from latticeflow.io._provenance import git_commit

KEYS = {"latticeflow_version", "torch_version", "git_commit", "host", "created", "command"}


def test_keys_and_formats() -> None:
    p = provenance()
    assert set(p) == KEYS and all(isinstance(v, str) and v for v in p.values())
    created = dt.datetime.fromisoformat(p["created"])
    assert created.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 60
    assert p["command"] == " ".join(sys.argv)
    assert provenance("run --seed 3")["command"] == "run --seed 3"


def test_git_commit_matches_checkout() -> None:
    source = Path(latticeflow.io.__file__).resolve().parent
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        assert git_commit() == "unknown"
    else:
        assert git_commit() in (head.stdout.strip(), "unknown")  # unknown if git-ignored


def test_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_git(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    def no_metadata(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    assert git_commit(tmp_path) == "unknown"  # not a checkout
    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setattr(importlib.metadata, "version", no_metadata)
    p = provenance()
    assert p["git_commit"] == "unknown" and p["latticeflow_version"] == "unknown"
