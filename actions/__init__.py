"""Physics of latticeflow: lattices, actions, forces, observables and exact results.

This package imports torch, numpy and scipy only (never ``latticeflow``); one file per theory:
`phi4` (φ⁴ theory), `u1` (2D U(1) gauge theory), `gmm` (Gaussian-mixture toy target),
`exact` (free field and 2D U(1) on the torus), `lattice` (geometry).
"""
from .gmm import GaussianMixture, ProductMixture
from .phi4 import Phi4
from .u1 import U1Gauge

__all__ = ["Phi4", "U1Gauge", "GaussianMixture", "ProductMixture"]
