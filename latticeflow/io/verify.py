"""Integrity checks of ensemble files: structure, per-batch checksums, and what a resume may keep.

:func:`verify_ensemble` is ``latticeflow verify`` (full mode: every batch of every dataset re-read and compared
with its checksum; the master file of an MPI run is checked shard by shard).  :func:`structure_damage` is the cheap
part every reader runs when opening a file (no data read).  :func:`resume_plan` decides, before anything is
written, how many committed rows a resumed writer keeps: all of them, the rows before a damaged tail (a run of
damaged batches up to the end), or none at all (damage followed by good batches, or missing datasets: refused).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import h5py

from latticeflow.io._format import decode_attrs, list_datasets, row_count
from latticeflow.io.checksums import BatchTable, Damage, check_batches, read_table

__all__ = ["RESUME_FULL_BYTES", "VerifyReport", "verify_ensemble", "structure_damage", "resume_plan"]

#: A resume re-checks every committed batch of files up to this size, and the last batches holding this many
#: bytes of larger files.
RESUME_FULL_BYTES = 1 << 30


@dataclass
class VerifyReport:
    """Result of verifying one file: damaged batches and structure (``damage``), and what was checked."""

    path: str
    n_rows: int = 0
    n_batches: int = 0
    damage: list[Damage] = field(default_factory=list)
    has_checksums: bool = True
    shards: list[VerifyReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage and all(s.ok for s in self.shards)

    def lines(self) -> list[str]:
        """One line per damaged batch or damaged structure, shards included."""
        out = [d.line(self.path) for d in self.damage]
        for s in self.shards:
            out.extend(s.lines())
        return out

    def summary(self) -> str:
        if self.shards:
            bad = sum(not s.ok for s in self.shards)
            state = "OK" if self.ok else f"DAMAGED ({bad} of {len(self.shards)} shards)"
            return f"{self.path}: {state}: master file of {len(self.shards)} shards, {self.n_rows} rows"
        if not self.ok:
            batches = {d.batch for d in self.damage if d.batch is not None}
            what = f"{len(batches)} of {self.n_batches} batches damaged" if batches else "damaged structure"
            return f"{self.path}: DAMAGED: {what} ({self.n_rows} rows)"
        if not self.has_checksums:
            return f"{self.path}: OK (structure only: format_version 1 has no checksums), {self.n_rows} rows"
        return f"{self.path}: OK, {self.n_rows} rows in {self.n_batches} batches verified"


def structure_damage(f: h5py.File, n_rows: int, names: list[str], lengths: list[int]) -> list[Damage]:
    """Damage visible without reading data: ``n_rows`` past the end of a dataset, datasets missing from or
    absent in the checksum table, checksums that do not cover ``n_rows``, a malformed table."""
    out = [Damage(f"n_rows is {n_rows} but dataset {name!r} holds only {length} rows")
           for name, length in zip(names, lengths) if length < n_rows]
    try:
        table = read_table(f, n_rows)
    except ValueError:
        return [*out, Damage("the checksum table is malformed")]
    if table is None:
        if int(f.attrs.get("format_version", 1)) >= 2 and n_rows > 0:
            out.append(Damage("the checksum table is missing"))
        return out
    out += [Damage(f"dataset {n!r} is missing (the checksum table lists it)") for n in table.names if n not in names]
    out += [Damage(f"dataset {n!r} has no checksums") for n in names if n not in table.names]
    starts, stops = table.starts, table.stops
    if len(table) and (starts[0] != 0 or (starts[1:] != stops[:-1]).any() or (stops <= starts).any()):
        out.append(Damage("the checksum table's row ranges are not contiguous"))
    if table.covered < n_rows:
        out.append(Damage(f"n_rows is {n_rows} but checksums cover only {table.covered} rows"))
    return out


def _open(path: str, report: VerifyReport) -> h5py.File | None:
    if not os.path.isfile(path):
        report.damage.append(Damage("file not found"))
        return None
    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError) as exc:
        report.damage.append(Damage(f"cannot be opened ({str(exc).splitlines()[0][:100]})"))
        return None


def verify_ensemble(path: str | os.PathLike[str]) -> VerifyReport:
    """Full check of one ensemble file (or of every shard of a master file)."""
    path = os.fspath(path)
    report = VerifyReport(path)
    f = _open(path, report)
    if f is None:
        return report
    with f:
        try:
            attrs = decode_attrs(f.attrs)
        except (OSError, RuntimeError) as exc:
            report.damage.append(Damage(f"unreadable attributes ({str(exc).splitlines()[0][:80]})"))
            return report
        if "format_version" not in attrs:
            report.damage.append(Damage("not a latticeflow ensemble (no format_version attribute)"))
            return report
        try:
            report.n_rows = n_rows = row_count(attrs, path)
        except ValueError:
            report.damage.append(Damage(f"n_rows is {attrs.get('n_rows')!r}, not a row count"))
            return report
        if "shard_files" in attrs:
            return _verify_master(path, attrs, report)
        try:
            names = list_datasets(f)
            lengths = [f[n].shape[0] for n in names]
        except (OSError, RuntimeError, KeyError) as exc:
            report.damage.append(Damage(f"unreadable structure ({str(exc).splitlines()[0][:80]})"))
            return report
        report.damage += structure_damage(f, n_rows, names, lengths)
        table = read_table(f, n_rows) if not any("malformed" in d.reason for d in report.damage) else None
        if table is None:
            report.has_checksums = int(attrs["format_version"]) >= 2
            return report
        report.n_batches = len(table)
        report.damage += check_batches(f, table, names=[n for n in table.names if n in names])
    return report


def _verify_master(path: str, attrs: dict, report: VerifyReport) -> VerifyReport:
    directory = os.path.dirname(os.path.abspath(path))
    expected = [int(r) for r in attrs.get("shard_rows", [])]
    for i, name in enumerate(attrs.get("shard_files", [])):
        shard = verify_ensemble(os.path.join(directory, name))
        if i < len(expected) and shard.n_rows < expected[i] and not shard.damage:
            shard.damage.append(Damage(f"holds {shard.n_rows} rows, the master file {path} expects {expected[i]}"))
        report.shards.append(shard)
    return report


def resume_plan(f: h5py.File, n_rows: int, names: list[str], lengths: list[int]) -> tuple[int, str | None]:
    """``(rows to keep, message)`` for a writer resuming the file open (read-only) as ``f``.

    Raises ``ValueError`` (one line, naming the file) for damage a resume cannot cut off: a missing or unlisted
    dataset, a malformed table, or a damaged batch followed by good ones.  ``message`` says which rows a damaged
    tail loses (None if nothing is dropped)."""
    path = f.filename
    table = read_table(f, None) if int(f.attrs.get("format_version", 1)) >= 2 else None
    structure = structure_damage(f, n_rows, names, lengths)
    fatal = [d for d in structure if "n_rows is" not in d.reason]
    if fatal:
        raise ValueError(f"damaged ensemble {path}: {fatal[0].reason}; refusing to resume, nothing was changed "
                         f"(latticeflow verify {path})")
    if table is None:
        if structure:  # format 1: nothing tells which rows are good
            raise ValueError(f"damaged ensemble {path}: {structure[0].reason}")
        return n_rows, None
    table = table.committed(n_rows)
    batches = _resume_batches(f, table, names)
    damage = check_batches(f, table, batches, names)
    bad = sorted({d.batch for d in damage if d.batch is not None})
    if bad and bad != list(range(bad[0], len(table))):
        first = next(d for d in damage if d.batch == bad[0])
        raise ValueError(f"damaged ensemble {path}: {first.line(path).split(': ', 1)[1]}, and later batches are "
                         f"intact; refusing to resume, nothing was changed (latticeflow verify {path})")
    good = int(table.starts[bad[0]]) if bad else table.covered
    if good >= n_rows:
        return n_rows, None
    reason = (damage[0].line(path).split(": ", 1)[1] if damage else
              next(d.reason for d in structure if "n_rows is" in d.reason))
    return good, (f"{path}: dropping its last {n_rows - good} rows ({good}-{n_rows - 1}), a damaged tail "
                  f"({reason}); resuming after row {good}")


def _resume_batches(f: h5py.File, table: BatchTable, names: list[str]) -> list[int]:
    """Every batch if the committed data are at most `RESUME_FULL_BYTES`, else the last ones holding that much."""
    row_bytes = sum(f[n].dtype.itemsize * math.prod(f[n].shape[1:]) for n in names if n in f)
    out: list[int] = []
    total = 0
    for b in range(len(table) - 1, -1, -1):
        out.append(b)
        total += row_bytes * int(table.stops[b] - table.starts[b])
        if total > RESUME_FULL_BYTES:
            break
    return sorted(out)


def warn(message: str) -> None:
    """A warning line on stderr."""
    print(f"latticeflow: warning: {message}", file=sys.stderr, flush=True)
