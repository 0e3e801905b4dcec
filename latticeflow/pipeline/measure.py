"""`latticeflow measure ENSEMBLE --observable module:function [--name N]`: generate once, measure later.

A user function on a batch of fields computes one value (scalar or array) per configuration::

    def plaquette_23(phi):            # phi: (B, *field_shape) torch tensor (or numpy with --numpy)
        return phi[:, 2, 3] * phi[:, 0, 0]      # (B,) or (B, ...) per configuration

(if it has a parameter named ``theory`` it also gets the ensemble's theory object: couplings, ``volume``,
the built-in observables). The values go into the ensemble as ``observables/<name>`` (default: the function's
name) with their provenance, checksummed, resumable after a kill (:mod:`latticeflow.io.measured`); an MPI
master file is measured shard by shard (shard r on rank r mod N), then its master file is rewritten.
``latticeflow analyze`` includes every measured observable. A function that raises or returns the wrong shape
or non-finite values gets one line naming it, and the ensemble is left unchanged.

Example (Python):
    >>> from latticeflow.pipeline.measure import load_observable
    >>> fn, prov = load_observable("math:fabs")
    >>> prov["module"], prov["function"]
    ('math', 'fabs')
"""
from __future__ import annotations

import datetime
import hashlib
import importlib
import importlib.util
import inspect
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_observable", "measure", "check_name"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_BATCH_BYTES = 32 * 1024 * 1024


def load_observable(spec: str) -> tuple[Callable[..., Any], dict[str, str]]:
    """The function of ``module:function`` (an importable module, the current directory first, or a path to a
    ``.py`` file) and its provenance: module, function, source file and the SHA-256 of the module's source."""
    module_name, sep, func_name = str(spec).rpartition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"--observable must be module:function (or path/to/file.py:function), got {spec!r}")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise FileNotFoundError(f"observable module not found: {module_name!r}")
            unit = importlib.util.spec_from_file_location(f"latticeflow_measure_{file.stem}", file)
            module = importlib.util.module_from_spec(unit)
            unit.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 — any failure to import the user's module is one line
        raise ValueError(f"--observable {spec!r}: cannot import {module_name!r} ({type(err).__name__}: {err})") from None
    func: Any = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
    if not callable(func):
        raise ValueError(f"--observable {spec!r}: {module_name!r} has no function {func_name!r}")
    source_file = getattr(module, "__file__", None)
    try:
        source = Path(source_file).read_bytes() if source_file else inspect.getsource(func).encode()
    except (OSError, TypeError):
        source = repr(func).encode()  # a built-in: its name is all there is
    prov = {"module": module_name if not module_name.endswith(".py") else str(Path(module_name).resolve()),
            "function": func_name, "source_file": str(source_file or ""),
            "source_sha256": hashlib.sha256(source).hexdigest()}
    return func, prov


def check_name(name: str, existing: list[str]) -> str:
    """A valid new observable name (letters, digits, ``_.-``; not already in the ensemble)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"--name must start with a letter and hold only letters, digits and _.-, got {name!r}")
    if f"observables/{name}" in existing:
        raise ValueError(f"the ensemble already holds observables/{name}; choose another --name")
    return name


def _as_values(out: Any, n: int, spec: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """The function's result as a numpy array of n rows, checked (one-line ``ValueError`` naming ``spec``)."""
    if hasattr(out, "detach"):
        out = out.detach().cpu()
        out = out.resolve_conj().numpy() if out.is_complex() else out.double().numpy() if out.is_floating_point() \
            else out.numpy()
    try:
        values = np.asarray(out)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"observable {spec} returned {type(out).__name__}, not an array ({err})") from None
    if values.dtype.kind not in "biufc":
        raise ValueError(f"observable {spec} returned values of dtype {values.dtype}, not numbers")
    if values.ndim == 0 or values.shape[0] != n:
        raise ValueError(f"observable {spec} returned shape {tuple(values.shape)} for a batch of {n} configurations; "
                         f"it must return ({n},) or ({n}, ...), one value per configuration")
    if shape is not None and values.shape[1:] != shape:
        raise ValueError(f"observable {spec} returned per-configuration shape {tuple(values.shape[1:])} after "
                         f"{shape} for earlier batches")
    values = values.astype(np.complex128 if values.dtype.kind == "c" else np.float64 if values.dtype.kind == "f"
                           else values.dtype)
    if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values.reshape(n, -1)).all(axis=1))[0])
        raise ValueError(f"observable {spec} returned a non-finite value for configuration {bad} of a batch")
    return values


def _measure_file(path: Path, func, spec: str, name: str, prov: dict, *, numpy_input: bool, device: str,
                  batch_size: int | None, progress: bool) -> dict[str, Any]:
    """Measure one ensemble file (not a master) into its sidecar, then commit."""
    import torch
    from tqdm.auto import tqdm

    from actions import build_theory
    from ..io import open_ensemble
    from ..io.measured import PartialMeasurement, commit_observable

    with open_ensemble(path) as ens:
        key = {k: prov[k] for k in ("module", "function", "source_sha256")} | {"input": prov["input"]}
        if f"observables/{name}" in ens.keys():  # a shard measured before the master file was rewritten
            done = _provenance(ens, name)
            if done is not None and all(done.get(k) == v for k, v in key.items()):
                return {"path": str(path), "n_rows": ens.n_rows, "shape": done.get("shape", []), "resumed_from": ens.n_rows}
        check_name(name, ens.keys())
        n_rows = ens.n_rows
        if n_rows < 1:
            raise ValueError(f"{path} holds no configurations to measure")
        theory = build_theory(ens.theory, ens.shape, ens.couplings)
        wants_theory = "theory" in inspect.signature(func).parameters if _has_signature(func) else False
        partial = PartialMeasurement(path, name, key, n_rows)
        row_bytes = max(1, ens.dataset("samples").dtype.itemsize * int(np.prod(ens.field_shape)))
        step = int(batch_size) if batch_size else max(1, min(4096, _BATCH_BYTES // row_bytes))
        start = partial.n_done
        try:
            with tqdm(total=n_rows, initial=start, desc=f"measure {name}", unit="cfg", disable=not progress,
                      leave=False) as bar:
                pos, shape = 0, partial.shape if start else None
                for rows in ens.iter_batches("samples", step):
                    a, pos = pos, pos + len(rows)
                    if pos <= partial.n_done:
                        continue
                    rows = rows[max(partial.n_done - a, 0):]
                    fields = rows if numpy_input else torch.from_numpy(np.ascontiguousarray(rows)).to(device)
                    try:
                        out = func(fields, theory=theory) if wants_theory else func(fields)
                    except Exception as err:  # noqa: BLE001 — the user's code: one line, nothing committed
                        msg = str(err).splitlines()[0] if str(err) else ""
                        raise ValueError(f"observable {spec} raised {type(err).__name__}: {msg} "
                                         f"(the ensemble is unchanged)") from None
                    values = _as_values(out, len(rows), spec, shape)
                    shape = values.shape[1:]
                    partial.append(values)
                    bar.update(len(rows))
        except BaseException:
            partial.close()
            raise
    resumed = partial.resumed
    prov = prov | {"n_rows": n_rows, "shape": list(partial.shape)}
    commit_observable(path, name, partial, prov)
    partial.remove()
    return {"path": str(path), "n_rows": n_rows, "shape": list(prov["shape"]), "resumed_from": start if resumed else 0}


def _provenance(ens, name: str) -> dict[str, Any] | None:
    """The provenance of a measured observable of an open ensemble (None for a built-in one)."""
    import json

    from ..io.measured import MEASURED_ATTR

    raw = ens.dataset(f"observables/{name}").attrs.get(MEASURED_ATTR)
    return None if raw is None else json.loads(raw)


def _has_signature(func) -> bool:
    try:
        inspect.signature(func)
        return True
    except (TypeError, ValueError):
        return False


def measure(path: str | os.PathLike[str], observable: str, name: str | None = None, *, numpy_input: bool = False,
            device: str = "cpu", batch_size: int | None = None, progress: bool = True,
            command: str | None = None) -> dict[str, Any]:
    """Measure ``observable`` (``module:function``) on every configuration of the ensemble at ``path`` and store
    it as ``observables/<name>`` (see the module docstring); returns a summary ``{"name", "files": [...]}``."""
    from ..distributed import get_world
    from ..io import open_ensemble, write_master
    from ..io.lock import directory_lock
    from .. import __version__

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ensemble file not found: {str(path)!r}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    func, prov = load_observable(observable)
    name = name or prov["function"].rsplit(".", 1)[-1]
    with open_ensemble(path) as ens:  # the structure and the name, before anything is written
        check_name(name, ens.keys())
        shards = [path.parent / str(s) for s in ens.attrs.get("shard_files", [])]
        seed = int(ens.attrs.get("seed", 0))
    prov = prov | {"input": "numpy" if numpy_input else "torch", "command": command or "",
                   "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "host": platform.node(), "latticeflow_version": __version__}
    world = get_world()
    files = shards or [path]
    mine = [f for i, f in enumerate(files) if i % world.size == world.rank]
    done = []
    with directory_lock(path.parent, command, world):
        for f in mine:
            done.append(_measure_file(f, func, observable, name, prov, numpy_input=numpy_input, device=device,
                                      batch_size=batch_size, progress=progress and world.is_main))
        if world.distributed:
            world.barrier()
        if shards and world.is_main:
            write_master(path, shards, seed=seed)
    if world.distributed:
        done = [d for part in world.allgather(done) for d in part]
    return {"name": name, "observable": observable, "files": done,
            "n_rows": sum(d["n_rows"] for d in done), "shape": done[0]["shape"] if done else []}
