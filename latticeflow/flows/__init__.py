"""Normalizing flows: bijections with log-determinants and score hooks, composed with a base density.

`build_flow(config, theory)` looks ``flow.family`` up in the table `FAMILIES` (`latticeflow.flows.families`,
where every key is documented):

- real scalar fields (φ⁴ in any dimension d; the Gaussian-mixture toy targets), checkerboard couplings with
  periodic Conv1d/2d/3d (``cnn``, d ≤ 3) or fully connected (``fc``, any d) conditioners:
  ``spline`` (default: Gaussian variational start — `FourierScaling` and a `VacuumMixture` base in the broken
  phase — then Z2-mirrored rational-quadratic `SplineCoupling` layers), ``z2affine`` (the same start,
  `Z2AffineCoupling`), ``realnvp`` (`AffineCoupling`), ``z2nice`` (odd `AdditiveCoupling` + `GlobalScaling`,
  Nicoli et al. 2020), ``snf`` (self-normalizing `SelfNormDense` / `SelfNormConv` layers with learned inverses,
  Keller et al. 2021); ``spline`` with ``decimate: true`` models the even sublattice only
  (`SublatticeFourierScaling`, `SublatticeSplineCoupling`) and draws every odd site from its exact conditional
  given its neighbours (`SiteConditional`); ``decimate: 2`` (2D) also draws the sites (2i, 2j), i + j odd, from
  their exact conditional with the odd sites integrated out (`MarginalSiteConditional`, `CosetFourierScaling`,
  `CosetGaussianShift`, `CosetSplineCoupling`; `latticeflow.flows.two_level`);
- 2D U(1) gauge fields, gauge-equivariant couplings on plaquettes: ``u1`` (default: `PlaquetteMarginal`, then
  circular-spline `CircularSplineCoupling` layers) and ``u1_ncp`` (`NCPCoupling`: mixtures of non-compact
  projections with an implicit, bisection-based inverse; Kanwar et al. 2020).

Every layer offers ``forward``, ``inverse`` and the two score hooks of the fast path gradient (`Bijection`).

Example:
    >>> from actions import Phi4
    >>> flow = build_flow({"family": "z2affine", "conditioner": "fc", "n_layers": 2}, Phi4((4, 4, 4), 0.1, 0.0))
    >>> x, log_q = flow.sample(3)
    >>> x.shape, log_q.shape
    (torch.Size([3, 4, 4, 4]), torch.Size([3]))
"""
from .base import Bijection, DomainError, FlowError, NotInvertibleError
from .build import FLOW_FAMILIES, build_flow, flow_defaults
from .coupling import Coupling
from .families import FAMILIES, FlowFamily, default_family
from .flow import (FINITE_CHECK_MODES, Flow, StandardNormal, UniformAngles, VacuumMixture, finite_checks,
                   set_finite_checks)
from .fourier import FourierScaling
from .phi4 import AdditiveCoupling, AffineCoupling, GlobalScaling, Z2AffineCoupling
from .snf import (OddPower, SelfNormConv, SelfNormDense, SelfNormalizing, collect_reconstruction,
                  self_normalized_training)
from .spline import SplineCoupling
from .decimation import SublatticeFourierScaling, SublatticeSplineCoupling
from .site_conditional import SiteConditional
from .two_level import ColourSplineCoupling, CosetFourierScaling, CosetGaussianShift, CosetSplineCoupling, MarginalSiteConditional
from .u1 import GaugeCoupling, NCPCoupling, ncp_inverse, ncp_mixture
from .u1_plaquette import PlaquetteMarginal
from .u1_spline import CircularSplineCoupling
from .zero_mode import ZeroModeSpline

__all__ = [
    # composition, bases, errors
    "Bijection", "Coupling", "Flow", "StandardNormal", "UniformAngles", "VacuumMixture",
    "FlowError", "NotInvertibleError", "DomainError", "FINITE_CHECK_MODES", "finite_checks", "set_finite_checks",
    # the family table
    "build_flow", "flow_defaults", "FLOW_FAMILIES", "FAMILIES", "FlowFamily", "default_family",
    # real scalar fields
    "AffineCoupling", "Z2AffineCoupling", "AdditiveCoupling", "GlobalScaling", "SplineCoupling", "FourierScaling",
    "ZeroModeSpline", "SiteConditional", "SublatticeFourierScaling", "SublatticeSplineCoupling",
    "MarginalSiteConditional", "ColourSplineCoupling", "CosetFourierScaling", "CosetGaussianShift", "CosetSplineCoupling",
    # self-normalizing flows
    "SelfNormalizing", "SelfNormDense", "SelfNormConv", "OddPower", "collect_reconstruction",
    "self_normalized_training",
    # U(1)
    "GaugeCoupling", "NCPCoupling", "CircularSplineCoupling", "PlaquetteMarginal", "ncp_inverse", "ncp_mixture",
]
