"""Export of primary Monte Carlo data in the pyerrors ``json.gz`` format.

Follows the format specification in the pyerrors documentation ("Export data"): a gzipped
JSON object with auxiliary fields ``program, version, who, date, host, description`` and
``obsdata``, one entry per observable of ``type`` "Obs" with ``layout`` "1", ``value``
[mean], ``tag`` [name] and ``data`` = [{"id": ensemble, "replica": [{"name":
"ensemble|r01", "deltas": [[config_number, value_i - mean], ...]}, ...]}].  pyerrors then
does its own Gamma-method analysis (``pe.input.json.load_json(path)``).

Array observables (a list of replicas of shape (N_r, ...)) use the layouts of
``pyerrors/input/json.py``: a 1-D per-configuration array C(t), t = 0..T-1, is a "Corr" entry
(``layout`` "T, 1", one ``value`` per t, ``tag`` {"tag": [name]} so that ``Corr.tag`` = name,
``deltas`` rows [config_number, C_0 - mean_0, ..., C_{T-1} - mean_{T-1}]); a higher-rank one,
e.g. G(x) of shape (L0, L1), is an "Array" entry (``layout`` "L0, L1", values and deltas
flattened in C order, every element tagged with the name).
"""
from __future__ import annotations

import datetime
import getpass
import gzip
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .gamma import _as_replicas

__all__ = ["pyerrors_obs_entry", "pyerrors_array_entry", "dump_pyerrors_json", "load_pyerrors_json",
           "replica_name"]

_FORMAT_VERSION = "1.1"


def replica_name(ensemble: str, replica: int) -> str:
    """pyerrors replica name ``ensemble|r01`` for 0-based replica index ``replica``."""
    return f"{ensemble}|r{replica + 1:02d}"


def _config_numbers(reps: Sequence[np.ndarray],
                    config_numbers: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    if config_numbers is None:
        return [np.arange(1, len(rep) + 1) for rep in reps]
    if len(config_numbers) != len(reps):
        raise ValueError(f"config_numbers has {len(config_numbers)} replicas, data has {len(reps)}")
    out = []
    for r, (rep, cfg) in enumerate(zip(reps, config_numbers)):
        cfg = np.asarray(cfg).reshape(-1)
        if cfg.size != len(rep):
            raise ValueError(f"replica {r}: {cfg.size} config numbers for {len(rep)} samples")
        if not np.issubdtype(cfg.dtype, np.integer) or np.any(np.diff(cfg) <= 0):
            raise ValueError(f"replica {r}: config numbers must be strictly increasing integers")
        out.append(cfg)
    return out


def pyerrors_obs_entry(data: np.ndarray | Sequence[np.ndarray], ensemble: str,
                       tag: object = None,
                       config_numbers: Sequence[np.ndarray] | None = None) -> dict:
    """One ``obsdata`` entry (type "Obs") for a primary observable on ``ensemble``.

    ``data`` is one series or a list of replicas (as for ``gamma_method``);
    ``config_numbers`` (default 1..N_r) are per-replica increasing integers such as mc_index.
    """
    if not ensemble or "|" in ensemble:
        raise ValueError(f"ensemble name must be non-empty and free of '|', got {ensemble!r}")
    reps = _as_replicas(data, "pyerrors_obs_entry")
    cfgs = _config_numbers(reps, config_numbers)
    mean = float(sum(rep.sum() for rep in reps) / sum(rep.size for rep in reps))
    replicas = [{"name": replica_name(ensemble, r),
                 "deltas": [[c, d] for c, d in zip(cfg.tolist(), (rep - mean).tolist())]}
                for r, (rep, cfg) in enumerate(zip(reps, cfgs))]
    return {"type": "Obs", "layout": "1", "value": [mean], "tag": [tag],
            "data": [{"id": ensemble, "replica": replicas}]}


def pyerrors_array_entry(replicas: Sequence[np.ndarray], ensemble: str, tag: object = None,
                         config_numbers: Sequence[np.ndarray] | None = None) -> dict:
    """One ``obsdata`` entry for an array observable: "Corr" for replicas (N_r, T), "Array"
    for (N_r, d_1, ..., d_n) with n >= 2 (module docstring)."""
    if not ensemble or "|" in ensemble:
        raise ValueError(f"ensemble name must be non-empty and free of '|', got {ensemble!r}")
    reps = [np.asarray(r, dtype=np.float64) for r in replicas]
    shape = reps[0].shape[1:]
    for r, rep in enumerate(reps):
        if rep.ndim < 2 or rep.shape[1:] != shape or rep.shape[0] < 1:
            raise ValueError(f"pyerrors_array_entry: replica {r} has shape {rep.shape}, "
                             f"expected (N_r, {', '.join(map(str, shape))})")
        if not np.all(np.isfinite(rep)):
            raise ValueError(f"pyerrors_array_entry: replica {r} of {tag!r} has non-finite values")
    cfgs = _config_numbers(reps, config_numbers)
    flat = [rep.reshape(rep.shape[0], -1) for rep in reps]
    mean = sum(f.sum(axis=0) for f in flat) / sum(f.shape[0] for f in flat)
    replicas_out = [{"name": replica_name(ensemble, r),
                     "deltas": [[c, *d] for c, d in zip(cfg.tolist(), (f - mean).tolist())]}
                    for r, (f, cfg) in enumerate(zip(flat, cfgs))]
    entry = {"value": mean.tolist(), "data": [{"id": ensemble, "replica": replicas_out}]}
    if len(shape) == 1:
        return {"type": "Corr", "layout": f"{shape[0]}, 1", **entry, "tag": {"tag": [str(tag)]}}
    return {"type": "Array", "layout": ", ".join(map(str, shape)), **entry,
            "tag": [tag] * int(np.prod(shape))}


def _is_array_observable(data: object) -> bool:
    """A list of replicas with at least 2 dimensions each (N_r, ...)."""
    return (isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) > 0
            and all(np.ndim(d) >= 2 for d in data))


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry, e.g. in containers
        return os.environ.get("USER", "unknown")


def dump_pyerrors_json(path: str | os.PathLike, observables: Mapping[str, object],
                       ensemble: str, description: object = "",
                       config_numbers: Sequence[np.ndarray] | None = None,
                       gz: bool = True) -> Path:
    """Write ``{name: series or replicas}`` as a pyerrors json(.gz) file; returns the path.

    Each scalar observable (one series, rows = replicas, or a list of 1-D replicas) becomes an
    "Obs" entry tagged with its name; an array observable, given as a list of replicas
    (N_r, ...), a "Corr" (1-D per configuration) or "Array" entry.  All share ``ensemble``
    and, if given, the per-replica ``config_numbers``.
    """
    try:
        from .. import __version__
    except ImportError:
        __version__ = "unknown"

    doc = {
        "program": f"latticeflow {__version__}",
        "version": _FORMAT_VERSION,
        "who": _who(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": f"{platform.node()}, {platform.platform()}",
        "description": description,
        "obsdata": [(pyerrors_array_entry if _is_array_observable(data) else pyerrors_obs_entry)(
                        data, ensemble, tag=name, config_numbers=config_numbers)
                    for name, data in observables.items()],
    }
    path = Path(path)
    text = json.dumps(doc, allow_nan=False)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load_pyerrors_json(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read a pyerrors json(.gz) file back into ``{tag: [replica, ...]}`` (value + deltas).

    "Obs" entries give 1-D replicas (N_r,); "Corr" entries (N_r, T) (matrix correlators
    (N_r, T, n, n)); "Array" and "List" entries (N_r, *layout).  A minimal reader for round
    trips of :func:`dump_pyerrors_json` files: covariance-only data ("cdata") is not read.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    out: dict[str, list[np.ndarray]] = {}
    for k, entry in enumerate(doc["obsdata"]):
        kind = entry.get("type")
        if kind not in ("Obs", "List", "Array", "Corr"):
            raise ValueError(f"load_pyerrors_json: entry {k} has unknown type {kind!r}")
        layout = [int(x) for x in str(entry.get("layout", "1")).split(",") if x.strip()]
        tags = entry.get("tag")
        if kind == "Corr":
            tags = tags["tag"] if isinstance(tags, dict) else tags
            tag = tags[-1] if tags else None
            if layout[1:] == [1]:
                layout = layout[:1]
        else:
            tag = tags[0] if tags else None
        value = np.asarray(entry["value"], dtype=np.float64)
        reps = []
        for ens in entry.get("data", []):
            for rep in ens["replica"]:
                deltas = np.asarray([d[1:] for d in rep["deltas"]], dtype=np.float64)
                rows = deltas.reshape(len(deltas), -1) + value
                reps.append(rows[:, 0] if kind == "Obs" else rows.reshape(len(rows), *layout))
        out[str(tag) if tag is not None else f"obs{k}"] = reps
    return out
