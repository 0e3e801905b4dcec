"""Export of primary Monte Carlo data in the pyerrors ``json.gz`` format.

Follows the format specification in the pyerrors documentation ("Export data"): a gzipped
JSON object with auxiliary fields ``program, version, who, date, host, description`` and
``obsdata``, one entry per observable of ``type`` "Obs" with ``layout`` "1", ``value``
[mean], ``tag`` [name] and ``data`` = [{"id": ensemble, "replica": [{"name":
"ensemble|r01", "deltas": [[config_number, value_i - mean], ...]}, ...]}].  pyerrors then
does its own Gamma-method analysis (``pe.input.json.load_json(path)``).
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

__all__ = ["pyerrors_obs_entry", "dump_pyerrors_json", "load_pyerrors_json", "replica_name"]

_FORMAT_VERSION = "1.1"


def replica_name(ensemble: str, replica: int) -> str:
    """pyerrors replica name ``ensemble|r01`` for 0-based replica index ``replica``."""
    return f"{ensemble}|r{replica + 1:02d}"


def _config_numbers(reps: Sequence[np.ndarray],
                    config_numbers: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    if config_numbers is None:
        return [np.arange(1, rep.size + 1) for rep in reps]
    if len(config_numbers) != len(reps):
        raise ValueError(f"config_numbers has {len(config_numbers)} replicas, data has {len(reps)}")
    out = []
    for r, (rep, cfg) in enumerate(zip(reps, config_numbers)):
        cfg = np.asarray(cfg).reshape(-1)
        if cfg.size != rep.size:
            raise ValueError(f"replica {r}: {cfg.size} config numbers for {rep.size} samples")
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

    Each observable becomes one "Obs" entry tagged with its name; all share ``ensemble``
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
        "obsdata": [pyerrors_obs_entry(data, ensemble, tag=name, config_numbers=config_numbers)
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
    """Read "Obs" entries of a pyerrors json(.gz) file back into ``{tag: [replica, ...]}``.

    A minimal reader for round trips of :func:`dump_pyerrors_json` files (value + deltas).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    out: dict[str, list[np.ndarray]] = {}
    for k, entry in enumerate(doc["obsdata"]):
        if entry.get("type") != "Obs":
            raise ValueError(f"load_pyerrors_json reads type 'Obs' only, entry {k} is "
                             f"{entry.get('type')!r}")
        value = float(entry["value"][0])
        tag = entry.get("tag", [None])[0]
        reps = [np.asarray([d[1] for d in rep["deltas"]], dtype=np.float64) + value
                for ens in entry.get("data", []) for rep in ens["replica"]]
        out[str(tag) if tag is not None else f"obs{k}"] = reps
    return out
