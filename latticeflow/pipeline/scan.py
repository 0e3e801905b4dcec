"""`latticeflow scan CONFIG --over KEY=VALUES …`: a resumable grid of `latticeflow run`s, one run directory per point.

``--over action.kappa=0.30:0.345:10`` scans a key over ``start:stop:count`` (inclusive, as ``numpy.linspace``), or
over a comma list (``--over 'action.shape=[16,16],[32,32]'``: commas inside brackets belong to a value; every
value is parsed as YAML). Several ``--over`` make the Cartesian product. Each point is the config with
``--set`` overrides, the point's values and ``output.dir = <scan dir>/<point>``, where the scan dir is the
config's ``output.dir`` and the point's name reads ``kappa=0.305_shape=16x16``. Every point's config is
validated (and an existing run directory's ``config.yaml`` compared) before the first one runs: bad input is one
line and nothing written.

A point is finished when its ``summary.json`` exists and its ``scan_point.json`` (written after the run, with
the analysis the report uses) records the SHA-256 of this very config; a finished point is skipped on rerun, an
unfinished one is run again and resumes through the run's own machinery. ``scan.json`` in the scan dir holds the
grid and every point's status. Under ``mpiexec -n N`` the unfinished points are shared among the ranks (largest
first, each to the rank with the least work so far), each run as a one-process job (`distributed.single_process`:
no collectives, the config's own seed); then rank 0 writes ``scan.json`` and the report (`scan_report`).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, apply_overrides, config_from_dict, config_to_yaml
from ..io import write_json
from .scan_report import POINT_FILE, SCAN_FILE, read_json, read_scan, scan_report

__all__ = ["ScanAxis", "ScanPoint", "Scan", "parse_over", "plan_scan", "run_scan", "point_finished", "read_scan",
           "SCAN_FILE", "POINT_FILE"]

_RANGE = re.compile(r"^\s*([^:]+):([^:]+):([^:]+)\s*$")
_FORBIDDEN = ("output", "name")  # the scan sets each point's output.dir itself


@dataclass(frozen=True)
class ScanAxis:
    """One ``--over`` key and its values, in order."""

    key: str
    values: tuple[Any, ...]


@dataclass
class ScanPoint:
    """One grid point: its ``name`` (directory), the scanned ``values`` by key, its validated config and text."""

    name: str
    values: dict[str, Any]
    cfg: Config
    text: str
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def dir(self) -> Path:
        return self.cfg.output_dir

    @property
    def cost(self) -> float:
        """Relative work: lattice sites × (stored configurations × save_every + thermalisation trajectories)."""
        s = self.cfg.sampler
        return math.prod(self.cfg.action.shape) * (s.n_samples * s.save_every + s.n_thermalize * s.n_chains)


@dataclass
class Scan:
    """A planned scan: the config file, ``--set`` overrides, the axes and the points (first axis slowest)."""

    config: str
    overrides: list[str]
    axes: list[ScanAxis]
    points: list[ScanPoint]
    dir: Path
    theory: str


def _split_top_level(raw: str) -> list[str]:
    """Split at commas outside brackets and braces: ``[16,16],[32,32]`` → ``['[16,16]', '[32,32]']``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(raw):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced brackets")
        elif ch == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError("unbalanced brackets")
    return parts + [raw[start:]]


def _number(text: str) -> int | float:
    from ..config_yaml import parse_yaml

    value = parse_yaml(text.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{text.strip()!r} is not a finite number")
    return value


def parse_over(item: str) -> ScanAxis:
    """``KEY=start:stop:count`` (count values from start to stop inclusive) or ``KEY=v1,v2,…`` → `ScanAxis`.

    Example:
        >>> parse_over("action.kappa=0.30:0.345:4").values
        (0.3, 0.315, 0.33, 0.345)
        >>> parse_over("action.shape=[16,16],[32,32]").values
        ([16, 16], [32, 32])
    """
    from ..config_yaml import ConfigFileError, parse_yaml

    key, sep, raw = item.partition("=")
    key = key.strip()
    where = f"--over {item!r}"
    if not sep or not key or not all(key.split(".")) or not raw.strip():
        raise ConfigError(f"{where}: expected KEY=start:stop:count or KEY=v1,v2,… (e.g. action.kappa=0.3:0.34:5)")
    if key.split(".")[0] in _FORBIDDEN:
        raise ConfigError(f"{where}: the scan sets every point's {key.split('.')[0]} itself; scan another key")
    m = _RANGE.match(raw)
    if not m and raw.count(":") in (1, 3) and "[" not in raw and "{" not in raw:
        try:
            [_number(part) for part in raw.split(":")]
        except (ValueError, ConfigFileError):
            pass  # a string value with a colon (device=cuda:0)
        else:
            raise ConfigError(f"{where}: a range is start:stop:count (count values, both ends included)")
    if m:
        try:
            start, stop, count = (_number(g) for g in m.groups())
        except (ValueError, ConfigFileError) as err:
            raise ConfigError(f"{where}: {err}") from None
        if not isinstance(count, int) or count < 1 or (count == 1 and start != stop):
            raise ConfigError(f"{where}: count must be an integer >= 2 (>= 1 if start == stop), got {m.group(3).strip()!r}")
        if count == 1:
            return ScanAxis(key, (start,))
        integral = all(isinstance(v, int) for v in (start, stop)) and (stop - start) % (count - 1) == 0
        step = (stop - start) / (count - 1)
        values = tuple(start + i * (stop - start) // (count - 1) if integral else float(f"{start + i * step:.12g}")
                       for i in range(count))
    else:
        try:
            values = tuple(parse_yaml(p.strip(), f"--over {key}") for p in _split_top_level(raw))
        except (ValueError, ConfigFileError) as err:
            raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
        if any(v is None or v == "" for v in values):
            raise ConfigError(f"{where}: empty value in the list")
    if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
        raise ConfigError(f"{where}: a value is repeated")
    return ScanAxis(key, values)


def _format_value(value: Any) -> str:
    """A value as it appears in a point's directory name: 0.305, 16x16, true, hmc."""
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, ".10g")
    return re.sub(r"[^A-Za-z0-9.+\-]", "-", str(value))


def _labels(axes: list[ScanAxis]) -> list[str]:
    """The last part of each key (``kappa``), the whole key where two axes share it."""
    last = [a.key.split(".")[-1] for a in axes]
    return [a.key if last.count(s) > 1 else s for a, s in zip(axes, last)]


def plan_scan(config: str, over: list[str], overrides: list[str] | None = None) -> Scan:
    """Parse ``--over``, build and validate every point's config (read-only; nothing is written). A bad value or
    key is a `ConfigError` naming the point; so is an existing run directory whose config differs."""
    from ..config_yaml import ConfigFileError, read_config_file
    from .rundir import config_problem

    overrides = list(overrides or [])
    if not over:
        raise ConfigError("scan needs at least one --over KEY=VALUES (e.g. --over action.kappa=0.3:0.34:5)")
    axes = [parse_over(item) for item in over]
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise ConfigError(f"--over {key} is given twice")
        if any(o.partition("=")[0].strip() == key for o in overrides):
            raise ConfigError(f"--over {key} is also given by --set; keep one")
    try:
        tree = read_config_file(config)
    except ConfigFileError as err:
        raise ConfigError(str(err)) from None
    tree = apply_overrides(tree, overrides)
    base = config_from_dict(copy.deepcopy(tree))
    scan_dir = base.output_dir
    labels = _labels(axes)
    points: list[ScanPoint] = []
    for combo in itertools.product(*(a.values for a in axes)):
        name = "_".join(f"{label}={_format_value(v)}" for label, v in zip(labels, combo))
        values = dict(zip(keys, combo))
        items = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in values.items()]
        try:
            data = apply_overrides(copy.deepcopy(tree), [*items, f"output.dir={json.dumps(str(scan_dir / name))}"])
            cfg = config_from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"scan point {name}: {err}") from None
        text = config_to_yaml(cfg)
        problem = config_problem(cfg.output_dir, text)
        if problem:
            raise ConfigError(f"scan point {name}: {problem}")
        points.append(ScanPoint(name, values, cfg, text))
    if len({p.name for p in points}) != len(points):
        raise ConfigError("two scan points would share a directory name; make the --over values distinct")
    return Scan(str(config), overrides, axes, points, scan_dir, base.action.theory)


def point_finished(point: ScanPoint) -> bool:
    """``summary.json`` present and ``scan_point.json`` written for this very config (same SHA-256)."""
    marker = read_json(point.dir / POINT_FILE)
    return (point.dir / "summary.json").is_file() and marker is not None and marker.get("config_sha256") == point.sha256


def _point_record(point: ScanPoint, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``scan_point.json``: the point, its config's hash, the run's time and verdict, and the analysis of its
    ensemble (every table row's mean, error, exact value and τ_int) for the report."""
    from .analyze import analyze

    result = analyze(summary["ensemble"]["path"]).as_dict()
    keep = ("mean", "error", "exact", "tau_int")
    analysis = {k: result[k] for k in ("path", "theory", "couplings", "shape", "n_rows", "main_observables")}
    analysis["observables"] = {n: {k: o.get(k) for k in keep} for n, o in result["observables"].items()}
    analysis["reliable"] = bool(result.get("verdict", {}).get("reliable", True))
    return {"name": point.name, "values": point.values, "config_sha256": point.sha256,
            "action": {"shape": list(point.cfg.action.shape), **point.cfg.action.couplings},
            "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "analysis": analysis}


def _status(scan: Scan, running: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for p in scan.points:
        row: dict[str, Any] = {"name": p.name, "values": p.values, "dir": str(p.dir), "config_sha256": p.sha256}
        row.update(running.get(p.name, {}))
        if point_finished(p):
            row["status"] = "finished"
        else:
            row.setdefault("status", "pending")
        rows.append(row)
    return rows


def _write_scan_file(scan: Scan, running: dict[str, dict[str, Any]], command: str | None) -> Path:
    return write_json(scan.dir / SCAN_FILE, {
        "config": scan.config, "overrides": scan.overrides, "theory": scan.theory, "command": command,
        "over": {a.key: list(a.values) for a in scan.axes}, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "points": _status(scan, running)})


def _assign(points: list[ScanPoint], n_ranks: int) -> list[list[int]]:
    """Indices of ``points`` per rank: largest cost first, each to the rank with the least work so far."""
    load, out = [0.0] * n_ranks, [[] for _ in range(n_ranks)]
    for i in sorted(range(len(points)), key=lambda i: -points[i].cost):
        r = min(range(n_ranks), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += points[i].cost
    return out


def run_scan(scan: Scan, *, command: str | None = None, progress: bool = True,
             thresholds: dict[str, float] | None = None, plot: str | Path | None = None) -> dict[str, Any]:
    """Run every unfinished point of ``scan`` (under MPI: shared among the ranks), then, on rank 0, write
    ``scan.json`` and the report (its plot at ``plot``, default ``<scan dir>/scan.png``). Returns {"points": [status per point], "ran", "skipped", "failed", "seconds",
    "report"} (the report only on rank 0). A point that fails is recorded as failed and the others still run."""
    from tqdm.auto import tqdm

    from ..distributed import get_world, single_process
    from ..io.lock import directory_lock
    from .run import run

    world = get_world()
    t0 = time.perf_counter()
    with directory_lock(scan.dir, command, world):
        todo = None
        if world.is_main:
            todo = [i for i, p in enumerate(scan.points) if not point_finished(p)]
            _write_scan_file(scan, {}, command)
        todo = world.bcast(todo)
        mine = [todo[j] for j in _assign([scan.points[i] for i in todo], world.size)[world.rank]]
        done: dict[str, dict[str, Any]] = {}
        bar = tqdm(total=len(mine), desc="scan" if not world.distributed else f"scan (rank 0 of {world.size})",
                   unit="point", disable=not (progress and world.is_main), file=sys.stderr)
        for i in mine:
            point = scan.points[i]
            bar.set_postfix_str(point.name, refresh=True)
            start = time.perf_counter()
            try:
                with single_process():
                    summary = run(point.cfg, point.text, command=command, thresholds=thresholds,
                                  progress=progress and not world.distributed)
                    record = _point_record(point, summary, time.perf_counter() - start)
                write_json(point.dir / POINT_FILE, record)
                done[point.name] = {"status": "finished", "seconds": record["seconds"], "rank": world.rank}
            except Exception as err:  # noqa: BLE001 — one failed point must not stop the others
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                done[point.name] = {"status": "failed", "error": f"{type(err).__name__}: {msg}", "rank": world.rank}
            line = f"{point.name}: {done[point.name]['status']} in {time.perf_counter() - start:.1f} s"
            if world.is_main:
                bar.write(line, file=sys.stderr)
                _write_scan_file(scan, done, command)
            elif progress:
                print(f"rank {world.rank}: {line}", file=sys.stderr, flush=True)
            bar.update(1)
        bar.close()
        everyone: dict[str, dict[str, Any]] = {}
        for part in world.allgather(done):
            everyone.update(part)
        out: dict[str, Any] = {"ran": sum(v["status"] == "finished" for v in everyone.values()),
                               "failed": {k: v["error"] for k, v in everyone.items() if v["status"] == "failed"},
                               "skipped": len(scan.points) - len(todo), "n_points": len(scan.points)}
        if world.is_main:
            out["points"] = _status(scan, everyone)
            _write_scan_file(scan, everyone, command)
            out["report"] = scan_report(scan.dir, plot)
        out["seconds"] = time.perf_counter() - t0
    world.barrier()
    return out
