"""Input/output: every file format of the package.

Ensemble files (one per replica) are a public contract; see
:mod:`latticeflow.io._format` for the layout, :class:`EnsembleWriter` for
crash-safe streaming writes, :func:`open_ensemble` for lazy reading,
:mod:`latticeflow.io.shards` for the shard and master files of MPI runs,
:mod:`latticeflow.io.resume` for the last sweep a resumed chain continues from,
:mod:`latticeflow.io.files` for the one atomic-write helper and strict JSON,
:mod:`latticeflow.io.checkpoint` for atomic checkpoints,
:mod:`latticeflow.io.checksums` for the per-batch checksums and run history,
:func:`verify_ensemble` for ``latticeflow verify``.
"""

from __future__ import annotations

from latticeflow.io._format import FORMAT_VERSION, EnsembleMismatchError
from latticeflow.io.checkpoint import load_checkpoint, save_checkpoint
from latticeflow.io.files import atomic_write, dumps_json, strict, write_json, write_text
from latticeflow.io.resume import read_last_sweep
from latticeflow.io.shards import MASTER_ATTRS, check_not_master, master_replicas, shard_path, write_master
from latticeflow.io._provenance import provenance, result_header
from latticeflow.io.reader import Ensemble, open_ensemble
from latticeflow.io.writer import EnsembleWriter
from latticeflow.io.verify import VerifyReport, verify_ensemble

__all__ = [
    "FORMAT_VERSION",
    "MASTER_ATTRS",
    "atomic_write",
    "check_not_master",
    "dumps_json",
    "master_replicas",
    "read_last_sweep",
    "shard_path",
    "strict",
    "write_json",
    "write_master",
    "write_text",
    "Ensemble",
    "EnsembleMismatchError",
    "EnsembleWriter",
    "load_checkpoint",
    "open_ensemble",
    "provenance",
    "result_header",
    "save_checkpoint",
    "VerifyReport",
    "verify_ensemble",
]
