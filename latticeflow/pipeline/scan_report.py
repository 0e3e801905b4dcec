"""The report of a coupling scan (`latticeflow scan --report DIR`): a table with one row per finished point, plots of
the theory's scan observables against the scanned coupling (one line per lattice size, exact curves where the
theory has exact values), and the critical coupling from the crossings of the theory's crossing observable.

What is plotted comes from the theory class: ``scan_rows()`` (the rows) and ``crossing_observable`` (φ⁴: the
Binder cumulant U). For every pair of successive lattice sizes L < L′ of the scan the crossing U_L(κ) = U_L′(κ) is
found by `latticeflow.analysis.crossing.binder_crossing` (local polynomial fits, parametric bootstrap errors);
the critical coupling reported (``kappa_c`` for a κ scan) is the crossing of the largest pair, the one with the
smallest corrections to scaling. Written: ``report.json`` and ``scan.png`` in the scan directory.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from actions import build_theory
from ..analysis.crossing import binder_crossing
from ..analysis.table import format_value_error, text_table
from ..io import write_json

__all__ = ["scan_report", "format_scan_report", "read_scan", "read_json", "N_BOOT", "BOOT_SEED", "SCAN_FILE",
           "POINT_FILE"]

SCAN_FILE = "scan.json"  # the grid and every point's status, in the scan directory
POINT_FILE = "scan_point.json"  # a finished point's config hash and analysis, in its run directory

N_BOOT = 1000  # parametric bootstrap resamples of every crossing
BOOT_SEED = 0
_SHAPE_KEY = "action.shape"
_EXACT_GRID = 200


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None where it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_scan(directory: str | Path) -> dict[str, Any]:
    """``<directory>/scan.json`` (a one-line `FileNotFoundError`/`ValueError` where it is missing or broken)."""
    path = Path(directory) / SCAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {SCAN_FILE} in {str(directory)!r}: not a scan directory (latticeflow scan CONFIG --over …)")
    data = read_json(path)
    if data is None or not isinstance(data.get("points"), list) or not isinstance(data.get("over"), dict):
        raise ValueError(f"{path} is not a scan file of latticeflow")
    return data


def _records(directory: Path, scan: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
    """The ``scan_point.json`` of every finished point (in grid order), the names of pending points, failures."""
    finished, pending, failed = [], [], {}
    for p in scan["points"]:
        d = Path(p.get("dir") or directory / p["name"])
        try:
            marker = json.loads((d / POINT_FILE).read_text())
        except (OSError, ValueError):
            marker = None
        if marker is not None and marker.get("config_sha256") == p.get("config_sha256") and (d / "summary.json").is_file():
            finished.append(marker)
        else:
            pending.append(p["name"])
            if p.get("status") == "failed":
                failed[p["name"]] = p.get("error", "")
    return finished, pending, failed


def _x_key(over: dict[str, list]) -> str | None:
    """The scanned coupling: the first ``action.*`` key with numeric values, else the first numeric key."""
    numeric = [k for k, vs in over.items() if vs and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in vs)]
    return next((k for k in numeric if k.startswith("action.")), numeric[0] if numeric else None)


def _label(key: str, value: Any) -> str:
    if isinstance(value, list):
        return f"L={value[0]}" if key == _SHAPE_KEY and len(set(value)) == 1 else "x".join(map(str, value))
    return f"{key.split('.')[-1]}={value:g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}"


def _exact_curves(theory: str, rows: tuple[str, ...], action: dict[str, Any], coupling: str,
                  lo: float, hi: float) -> dict[str, tuple[list[float], list[float]]]:
    """Each scan row's exact value on a fine grid of the scanned coupling (rows without one are left out)."""
    shape = action["shape"]
    fixed = {k: v for k, v in action.items() if k != "shape"}
    xs = np.linspace(lo, hi, _EXACT_GRID)
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for x in xs:
        try:
            table = {r.name: r.exact for r in build_theory(theory, shape, {**fixed, coupling: float(x)}).table_rows()}
        except ValueError:
            continue
        for name in rows:
            if table.get(name) is not None:
                curves.setdefault(name, ([], []))
                curves[name][0].append(float(x))
                curves[name][1].append(float(table[name]))
    return curves


def _crossings(groups: dict[tuple, list[dict]], x_key: str, row: str, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """`binder_crossing` of ``row`` for successive lattice volumes within each family (same values of the other
    scanned keys)."""
    families: dict[tuple, list[tuple]] = defaultdict(list)
    for g, recs in groups.items():
        families[tuple((k, v) for k, v in g if k != _SHAPE_KEY)].append(g)
    out = []
    for fam, members in families.items():
        members.sort(key=lambda g: math.prod(groups[g][0]["action"]["shape"]))
        pairs = []
        for a, b in zip(members, members[1:]):
            pa = {r["values"][x_key]: r["analysis"]["observables"].get(row) for r in groups[a]}
            pb = {r["values"][x_key]: r["analysis"]["observables"].get(row) for r in groups[b]}
            common = sorted(k for k in pa if k in pb and pa[k] and pb[k] and all(
                isinstance(o.get(f), (int, float)) and math.isfinite(o[f]) for o in (pa[k], pb[k]) for f in ("mean", "error")))
            sizes = [groups[a][0]["action"]["shape"], groups[b][0]["action"]["shape"]]
            entry: dict[str, Any] = {"sizes": sizes, "n_points": len(common)}
            if len(common) < 2:
                entry.update(value=None, error=None, note="fewer than 2 common finished points")
            else:
                try:
                    c = binder_crossing(common, [pa[k]["mean"] for k in common], [pa[k]["error"] for k in common],
                                        [pb[k]["mean"] for k in common], [pb[k]["error"] for k in common],
                                        n_boot=n_boot, seed=seed)
                    entry.update(c.as_dict())
                except ValueError as err:
                    entry.update(value=None, error=None, note=str(err))
            pairs.append(entry)
        if pairs:
            final = pairs[-1]
            out.append({"fixed": {k: json.loads(v) for k, v in fam}, "value": final.get("value"), "error": final.get("error"),
                        "from": "the crossing of the largest pair of sizes", "n_boot": n_boot, "seed": seed,
                        "pairs": pairs})
    return out


def scan_report(directory: str | Path, plot: str | Path | None = None, *, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                write: bool = True) -> dict[str, Any]:
    """Collect the finished points of the scan in ``directory``; with ``write`` also ``report.json`` and the plot
    (``plot``, default ``<directory>/scan.png``). Returns the report (see `format_scan_report`)."""
    directory = Path(directory)
    scan = read_scan(directory)
    finished, pending, failed = _records(directory, scan)
    over = scan["over"]
    x_key = _x_key(over)
    report: dict[str, Any] = {"dir": str(directory), "theory": scan.get("theory"), "over": over, "x": x_key,
                              "n_points": len(scan["points"]), "pending": pending, "failed": failed, "points": []}
    if not finished:
        report.update(observables=[], crossings=[])
        return _write(report, directory, write)
    first = finished[0]["analysis"]
    theory = build_theory(first["theory"], first["shape"], first["couplings"])
    rows = tuple(r for r in theory.scan_rows() if any(r in f["analysis"]["observables"] for f in finished))
    report["observables"] = list(rows)
    report["crossing_observable"] = theory.crossing_observable
    for f in finished:
        obs = f["analysis"]["observables"]
        report["points"].append({"name": f["name"], "values": f["values"], "shape": f["analysis"]["shape"],
                                 "n_rows": f["analysis"]["n_rows"], "reliable": f["analysis"]["reliable"],
                                 "seconds": f.get("seconds"),
                                 "observables": {r: {k: obs[r][k] for k in ("mean", "error", "exact")}
                                                 for r in rows if r in obs}})
    groups: dict[tuple, list[dict]] = defaultdict(list)  # by the other scanned values (as JSON text)
    for f in finished:
        groups[tuple((k, json.dumps(v)) for k, v in f["values"].items() if k != x_key)].append(f)
    groups = {g: sorted(recs, key=lambda r: r["values"].get(x_key, 0)) for g, recs in groups.items()}
    report["crossings"] = []
    if x_key is not None and theory.crossing_observable in rows:
        report["crossings"] = _crossings(groups, x_key, theory.crossing_observable, n_boot, seed)
        if report["crossings"]:
            name = f"{x_key.split('.')[-1]}_c"
            report[name] = report["crossings"][0] if len(report["crossings"]) == 1 else report["crossings"]
            report["critical_key"] = name
    if write and x_key is not None:
        report["plot"] = str(_plot(report, groups, x_key, rows, Path(plot) if plot else directory / "scan.png"))
    return _write(report, directory, write)


def _write(report: dict[str, Any], directory: Path, write: bool) -> dict[str, Any]:
    if write:
        report["json"] = str(directory / "report.json")
        write_json(directory / "report.json", report)
    return report


def _plot(report: dict[str, Any], groups: dict[tuple, list[dict]], x_key: str, rows: tuple[str, ...],
          path: Path) -> Path:
    """One panel per scan observable against the scanned coupling, one line per group (lattice size), the exact
    curve on a fine grid where the theory has exact values (recorded in ``report["exact_curves"]``: row → group
    labels), the critical coupling (crossing of the largest pair) as a band on the crossing panel."""
    from ..analysis import figure

    coupling = x_key.split(".", 1)[1] if x_key.startswith("action.") else None
    first = next(iter(groups.values()))[0]
    fixed = {k: v for k, v in first["action"].items() if k != "shape" and k != coupling and v is not None
             and f"action.{k}" not in report["over"]}
    sizes = sorted({"x".join(map(str, r["action"]["shape"])) for recs in groups.values() for r in recs},
                   key=lambda s: math.prod(int(n) for n in s.split("x")))
    title = (f"{report['theory']} {', '.join(sizes)}: scan over {x_key.split('.')[-1]}"
             + "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}" for k, v in fixed.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    with figure(str(path), 1, len(rows), figsize=(4.4 * len(rows), 3.8)) as (fig, axes):
        axes = np.atleast_1d(axes).ravel()
        for ax, row in zip(axes, rows):
            for colour, (g, recs) in enumerate(groups.items()):
                pts = [(r["values"][x_key], r["analysis"]["observables"][row]) for r in recs
                       if row in r["analysis"]["observables"]]
                pts = [(x, o) for x, o in pts if o["mean"] is not None]
                if not pts:
                    continue
                label = ", ".join(_label(k, json.loads(v)) for k, v in g) or "x".join(map(str, recs[0]["action"]["shape"]))
                has_exact = coupling is not None and any(p[1]["exact"] is not None for p in pts)
                ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], [p[1]["error"] or 0.0 for p in pts],
                            fmt="o" if has_exact else "o-", ms=4, capsize=2, color=f"C{colour}", label=label)
                if has_exact:
                    xs = [p[0] for p in pts]
                    curve = _exact_curves(report["theory"], (row,), recs[0]["action"], coupling,
                                          min(xs), max(xs)).get(row)
                    if curve:
                        report.setdefault("exact_curves", {}).setdefault(row, []).append(label)
                        ax.plot(*curve, "-", color=f"C{colour}", lw=1, alpha=0.7, label=f"{label} exact")
            if row == report.get("crossing_observable"):
                for c in report.get("crossings", []):
                    if c.get("value") is not None:
                        err = c.get("error") or 0.0
                        ax.axvspan(c["value"] - err, c["value"] + err, color="0.8", alpha=0.6)
                        ax.axvline(c["value"], color="k", lw=0.8,
                                   label=f"{x_key.split('.')[-1]}_c = {format_value_error(c['value'], err)}")
            ax.set_xlabel(x_key.split(".")[-1])
            ax.set_ylabel(row)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
    return path


def format_scan_report(report: dict[str, Any]) -> str:
    """A text table (one row per finished point: scanned values, configurations, every scan observable as
    mean(error) with the exact value where known, the verdict), then the crossings and the pending points."""
    keys = list(report["over"])
    rows = report.get("observables", [])
    exact = {r for r in rows if any(p["observables"].get(r, {}).get("exact") is not None for p in report["points"])}
    columns = [(k.split(".")[-1], "<12") for k in keys] + [("configs", ">8")]
    for r in rows:
        columns.append((r, ">16"))
        if r in exact:
            columns.append(("exact", ">10"))
    columns.append(("verdict", "<10"))
    lines = []
    def order(p: dict[str, Any]) -> list:  # the other keys (sizes by volume), then the scanned coupling
        other = [p["values"][k] for k in keys if k != report["x"]]
        return [math.prod(v) if isinstance(v, list) else str(v) for v in other] + [p["values"].get(report["x"], 0)]

    for p in sorted(report["points"], key=order):
        cells: list[Any] = ["x".join(map(str, v)) if isinstance(v, list) else f"{v:g}" if isinstance(v, float)
                            else str(v) for v in (p["values"][k] for k in keys)]
        cells.append(p["n_rows"])
        for r in rows:
            o = p["observables"].get(r)
            cells.append("—" if not o or o["mean"] is None else format_value_error(o["mean"], o["error"] or 0.0))
            if r in exact:
                cells.append("—" if not o or o["exact"] is None else f"{o['exact']:.6g}")
        cells.append("reliable" if p["reliable"] else "UNRELIABLE")
        lines.append(cells)
    notes = []
    for c in report.get("crossings", []):
        for pair in c["pairs"]:
            sizes = "/".join("x".join(map(str, s)) for s in pair["sizes"])
            if pair.get("value") is None or not math.isfinite(pair["value"]):
                notes.append(f"{report.get('crossing_observable')} crossing {sizes}: none ({pair.get('note', '')})")
            else:
                notes.append(f"{report.get('crossing_observable')} crossing {sizes}: "
                             f"{report['x'].split('.')[-1]} = {format_value_error(pair['value'], pair['error'] or 0.0)} "
                             f"(fit window {pair['window'][0]:g}..{pair['window'][1]:g}, {pair['n_points']} points, "
                             f"degree {pair['degree']})" + (f"; {pair['note']}" if pair.get("note") else ""))
        name = report.get("critical_key", "critical coupling")
        fixed = ", ".join(f"{k}={v}" for k, v in c["fixed"].items())
        value = ("none" if c["value"] is None or not math.isfinite(c["value"])
                 else format_value_error(c["value"], c["error"] or 0.0))
        notes.append(f"{name}{' (' + fixed + ')' if fixed else ''} = {value}: {c['from']}; errors from a parametric "
                     f"bootstrap of {c['n_boot']} resamples (seed {c['seed']})")
    if report["pending"]:
        notes.append(f"{len(report['pending'])} of {report['n_points']} points not finished: "
                     + ", ".join(report["pending"][:6]) + (", …" if len(report["pending"]) > 6 else ""))
    for name, err in report.get("failed", {}).items():
        notes.append(f"failed: {name}: {err}")
    title = f"{report['theory']} scan {report['dir']}: {len(report['points'])} of {report['n_points']} points finished"
    return text_table(columns, lines, title=title, notes=notes)
