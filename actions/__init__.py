"""Physics of latticeflow: lattices, actions, forces, observables and exact results.

This package imports torch, numpy and scipy only (never ``latticeflow``); one file per theory, each
registered in `THEORIES` below (a new theory is its file plus one line here): `phi4` (φ⁴ theory in any
dimension; its Gaussian variational start in `phi4_variational`), `u1` (2D U(1) gauge theory), `schwinger`
(2D U(1) with two Wilson fermions; the Dirac operator in `dirac`); `gmm` (Gaussian-mixture toy targets), `exact` (free field and 2D U(1)
on the torus), `lattice` (geometry), `theory` (what every theory offers the machinery).

Example:
    >>> theory = build_theory("phi4", [4, 4, 4], {"kappa": 0.1, "lam": 0.0})
    >>> theory.shape, theory.field_shape
    ((4, 4, 4), (4, 4, 4))
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .gmm import GaussianMixture, ProductMixture
from .phi4 import Phi4
from .schwinger import Schwinger
from .theory import TableRow, Theory
from .u1 import U1Gauge

__all__ = ["Phi4", "U1Gauge", "Schwinger", "GaussianMixture", "ProductMixture", "Theory", "TableRow", "THEORIES",
           "build_theory"]

#: the registry: ``action.theory`` of a config → its class
THEORIES: dict[str, type[Theory]] = {
    "phi4": Phi4,
    "u1": U1Gauge,
    "schwinger": Schwinger,
}


def build_theory(theory: str, shape: Sequence[int], couplings: Mapping[str, Any]) -> Theory:
    """The theory object named ``theory`` on a lattice of ``shape`` with ``couplings``.

    Raises ``ValueError`` naming the bad value (the theory name, a coupling or the shape).
    """
    if theory not in THEORIES:
        raise ValueError(f"theory must be one of {', '.join(THEORIES)}, got {theory!r}")
    return THEORIES[theory].from_couplings(shape, dict(couplings))
