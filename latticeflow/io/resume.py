"""Resume state of a Markov-chain ensemble: the rows of its last complete sweep.

A chain ensemble is written sweep-major: rows ``n − K … n − 1`` of a file with ``n`` committed rows and
``K = n_chains`` chains are the last configuration of every chain. A resumed run continues every chain from
there (with its sampler state from the file's attributes).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._format import decode_attrs, open_h5_readonly
from .checksums import check_batches, read_table

__all__ = ["read_last_sweep"]


def read_last_sweep(path: str | os.PathLike[str], n_rows: int, n_chains: int, first_chain: int = 0,
                    datasets: tuple[str, ...] = ("samples", "action"),
                    default_n_chains: int = -1) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``({name: rows of the last sweep}, root attributes)`` of the ensemble at ``path`` with ``n_rows``
    committed rows; ``mc_index`` and ``chain`` are always included (``default_n_chains``: what a file without an
    ``n_chains`` attribute was written with).

    Raises ``ValueError`` naming the file if it was written with another ``n_chains`` (``attribute n_chains``),
    holds no whole number of sweeps, its last sweep is not chains ``first_chain … first_chain + K − 1``, or the
    batches holding it fail their checksums (a resumed chain never continues from damaged rows).
    """
    with open_h5_readonly(path) as f:
        attrs = decode_attrs(f.attrs)
        stored = int(attrs.get("n_chains", default_n_chains))
        if stored != n_chains:
            raise ValueError(f"sampler.n_chains is {n_chains} but {os.fspath(path)} was written with "
                             f"n_chains={stored}")
        if n_rows % n_chains:
            raise ValueError(f"{os.fspath(path)} holds {n_rows} rows, not a whole number of sweeps of {n_chains} chains")
        last = slice(n_rows - n_chains, n_rows)
        names = (*datasets, "chain", "mc_index")
        table = read_table(f, n_rows)
        if table is not None:
            batches = [b for b in range(len(table)) if table.stops[b] > last.start]
            damage = check_batches(f, table, batches, [n for n in names if n in table.names])
            if damage:
                raise ValueError(f"damaged ensemble {damage[0].line(os.fspath(path))}: the last sweep cannot be "
                                 f"resumed from (latticeflow verify {os.fspath(path)})")
        out = {name: np.asarray(f[name][last]) for name in names}
    if not np.array_equal(out["chain"], np.arange(first_chain, first_chain + n_chains)):
        raise ValueError(f"{os.fspath(path)}: the last sweep is incomplete (chains {out['chain'].tolist()})")
    return out, attrs
