"""Normalizing flows: bijections with log-determinants and score hooks, composed with a base density.

Families: ``realnvp`` and ``z2nice`` for φ⁴ (checkerboard couplings), ``u1_ncp`` for 2D U(1)
(gauge-equivariant NCP couplings with an implicit, bisection-based inverse), ``snf`` for φ⁴
(self-normalizing linear layers with learned inverses, Keller et al. 2021). See `build_flow`.
"""
from .base import Bijection, DomainError, FlowError, NotInvertibleError
from .build import FLOW_FAMILIES, build_flow, flow_defaults
from .coupling import Coupling
from .flow import Flow, StandardNormal, UniformAngles, VacuumMixture
from .phi4 import AdditiveCoupling, AffineCoupling, GlobalScaling
from .snf import (OddPower, SelfNormConv, SelfNormDense, SelfNormalizing, collect_reconstruction,
                  self_normalized_training)
from .u1 import NCPCoupling, ncp_inverse, ncp_mixture
from .u1_plaquette import PlaquetteMarginal
from .zero_mode import ZeroModeSpline

__all__ = [
    "Bijection", "Coupling", "Flow", "StandardNormal", "UniformAngles", "VacuumMixture", "build_flow", "flow_defaults", "FLOW_FAMILIES",
    "AffineCoupling", "AdditiveCoupling", "GlobalScaling", "NCPCoupling", "ncp_inverse", "ncp_mixture", "PlaquetteMarginal",
    "ZeroModeSpline",
    "FlowError", "NotInvertibleError", "DomainError",
    "SelfNormDense", "SelfNormConv", "SelfNormalizing", "OddPower", "collect_reconstruction",
    "self_normalized_training",
]
