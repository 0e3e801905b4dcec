"""Input/output: HDF5 ensemble files, provenance and atomic checkpoints.

Ensemble files (one per replica) are a public contract; see
:mod:`latticeflow.io._format` for the layout, :class:`EnsembleWriter` for
crash-safe streaming writes and :func:`open_ensemble` for lazy reading.
"""

from __future__ import annotations

from latticeflow.io._format import FORMAT_VERSION, EnsembleMismatchError
from latticeflow.io.checkpoint import load_checkpoint, save_checkpoint
from latticeflow.io._provenance import provenance
from latticeflow.io.reader import Ensemble, open_ensemble
from latticeflow.io.writer import EnsembleWriter

__all__ = [
    "FORMAT_VERSION",
    "Ensemble",
    "EnsembleMismatchError",
    "EnsembleWriter",
    "load_checkpoint",
    "open_ensemble",
    "provenance",
    "save_checkpoint",
]
