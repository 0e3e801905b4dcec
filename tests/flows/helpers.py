"""Shared builders for the flow tests: small float64 flows with randomised parameters.

Every conditioner's last layer starts at zero (identity flow at init), so each flow used here first
gets 0.3·N(0, 1) (see SCALES) added to every parameter; otherwise the tests would only check the identity.
"""
from __future__ import annotations

import math

import torch

from actions import Phi4, U1Gauge
from actions.u1 import wrap
from latticeflow.flows import build_flow

F64 = torch.float64

PHI4_SHAPE = (4, 4)
U1_SHAPE = (4, 4)

# Small configs of every family (and both φ⁴ conditioners); 2–4 coupling layers. The φ⁴ action below is in
# the broken phase, so spline and z2affine start from the `VacuumMixture` base (flow.vacua: auto).
CONFIGS = {
    "realnvp-cnn": {"family": "realnvp", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8]},
    "realnvp-fc": {"family": "realnvp", "conditioner": "fc", "n_layers": 4, "hidden": [32, 32]},
    "z2nice-cnn": {"family": "z2nice", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8]},
    "z2nice-fc": {"family": "z2nice", "conditioner": "fc", "n_layers": 4, "hidden": [32, 32]},
    "spline-cnn": {"family": "spline", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8], "n_bins": 4, "bound": 2.5},
    "spline-fc": {"family": "spline", "conditioner": "fc", "n_layers": 4, "hidden": [32, 32], "n_bins": 4, "bound": 2.5},
    "spline_plain-cnn": {"family": "spline", "z2": False, "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8],
                         "n_bins": 4, "bound": 2.5, "fourier": False, "activation": "silu", "dilation": [1, 2, 1]},
    "spline-zm-cnn": {"family": "spline", "conditioner": "cnn", "n_layers": 2, "hidden": [8, 8], "n_bins": 4,
                      "bound": 2.5, "zero_mode": True},  # Fourier + ZeroModeSpline (broken-phase init) first
    "spline-symmetric-cnn": {"family": "spline", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8], "n_bins": 4,
                             "bound": 2.5, "vacua": False},  # StandardNormal + Hartree Fourier start
    # even sublattice only (SublatticeFourierScaling, SublatticeSplineCoupling), odd sites from SiteConditional
    "spline-decimated-cnn": {"family": "spline", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8], "n_bins": 4,
                             "bound": 2.5, "vacua": False, "decimate": True},  # 2D: compact conditioners
    # two-level: CosetFourierScaling, CosetGaussianShift, CosetSplineCouplings, MarginalSiteConditional, SiteConditional
    "spline-decimated2-cnn": {"family": "spline", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8], "n_bins": 4,
                              "bound": 2.5, "vacua": False, "decimate": 2},
    # the same with the magnetization input of the couplings and a ZeroModeSpline of the mean of A2 ∪ A1e
    "spline-decimated2-zm-cnn": {"family": "spline", "conditioner": "cnn", "n_layers": 2, "hidden": [8, 8],
                                 "n_bins": 4, "bound": 2.5, "vacua": False, "decimate": 2, "zero_mode": True,
                                 "magnetization": True},
    # the same with colour couplings: one colour of A2 or A1e given every other learned site
    "spline-decimated2-colours-cnn": {"family": "spline", "conditioner": "cnn", "n_layers": 8, "hidden": [8],
                                      "n_bins": 4, "bound": 2.5, "vacua": False, "decimate": 2, "colours": True},
    # with dilated conditioners (taps 1 and 2 half-lattice sites apart) on 16 x 16, where the dilation reaches
    # sites the plain 3 x 3 stencil does not (on the 4 x 4 half lattice of 8 x 8, +2 and -2 are one site)
    "spline-decimated2-colours-dil-cnn": {"family": "spline", "conditioner": "cnn", "n_layers": 8, "hidden": [8],
                                          "n_bins": 4, "bound": 2.5, "vacua": False, "decimate": 2, "colours": True,
                                          "dilation": [1, 2]},
    "spline-decimated-cnn-3d": {"family": "spline", "conditioner": "cnn", "n_layers": 2, "hidden": [4], "n_bins": 4,
                                "bound": 2.5, "vacua": False, "decimate": True},  # masked full-lattice conditioners
    "z2affine-cnn": {"family": "z2affine", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8]},
    "z2affine-fc": {"family": "z2affine", "conditioner": "fc", "n_layers": 4, "hidden": [32, 32]},
    # other dimensions (lattice in SHAPES): periodic Conv3d / Conv1d conditioners, fc in d = 4 (no Conv4d)
    "spline-cnn-3d": {"family": "spline", "conditioner": "cnn", "n_layers": 2, "hidden": [4], "n_bins": 4,
                      "bound": 2.5},
    "z2affine-cnn-3d": {"family": "z2affine", "conditioner": "cnn", "n_layers": 2, "hidden": [4]},
    "spline-cnn-1d": {"family": "spline", "conditioner": "cnn", "n_layers": 4, "hidden": [4], "n_bins": 4,
                      "bound": 2.5},
    "z2affine-fc-4d": {"family": "z2affine", "conditioner": "fc", "n_layers": 2, "hidden": [16]},
    "u1_ncp": {"family": "u1_ncp", "n_layers": 4, "hidden": [8, 8], "n_components": 2},
    "u1_ncp_loops": {"family": "u1_ncp", "n_layers": 4, "hidden": [8, 8], "n_components": 2, "loops": True},
    "u1_spline": {"family": "u1", "transform": "spline", "n_layers": 4, "hidden": [8, 8], "n_bins": 4,
                  "marginal": False},
    "u1_marginal": {"family": "u1", "n_layers": 2, "hidden": [8, 8], "n_bins": 4},  # PlaquetteMarginal first
}
# Size of the random parameter perturbation. The 8-channel CNN RealNVP gets 0.2: at 0.3 its log-scales
# reach ~±4 per layer and N(0, 1) fields are stretched to |x| ~ 1e4, so round-off alone (cond · eps)
# approaches the 1e-10 tolerances; at 0.2 it is still far from the identity (|logdet| up to ~17).
SCALES = {"realnvp-cnn": 0.2, "z2affine-cnn": 0.2, "z2affine-cnn-3d": 0.2}
# Spline conditioners at 0.3 give bins of width ~MIN_BIN next to slopes ~10²: the composed flow's inverse then
# amplifies round-off by ~10⁶. At 0.1 the splines are still far from the identity (checked by
# test_randomised_flow_is_not_the_identity) and well conditioned.
SCALES.update({name: 0.1 for name in CONFIGS if "spline" in name})
# The marginal layer concentrates the plaquettes where randomised circular splines are steepest; 0.03 keeps
# the composed inverse well conditioned (the layer alone is tested at 0.1 in tests/flows/test_u1_plaquette.py).
SCALES["u1_marginal"] = 0.03
DEFAULT_SCALE = 0.3
# Lattices of the configs that are not on PHI4_SHAPE / U1_SHAPE: non-cubic, so mixed-up axes show
SHAPES = {"spline-decimated2-cnn": (8, 8), "spline-decimated2-colours-cnn": (8, 8), "spline-decimated2-colours-dil-cnn": (16, 16), "spline-decimated2-zm-cnn": (8, 8), "spline-cnn-3d": (4, 2, 6), "spline-decimated-cnn-3d": (4, 2, 6), "z2affine-cnn-3d": (4, 2, 6), "spline-cnn-1d": (8,), "z2affine-fc-4d": (2, 2, 2, 4)}
ALL = list(CONFIGS)
PHI4 = [name for name in ALL if not name.startswith("u1")]
Z2NICE = [name for name in ALL if name.startswith("z2nice")]
Z2 = Z2NICE + [name for name in ALL if name.startswith(("spline-", "z2affine"))]  # odd by construction
U1 = [name for name in ALL if name.startswith("u1")]
U1_TRANSLATION = [name for name in U1 if name != "u1_marginal"]  # the marginal layer singles out one plaquette
REALNVP = [name for name in ALL if name.startswith("realnvp")]
CNN = [name for name in ALL if CONFIGS[name].get("conditioner") == "cnn"]  # φ⁴ configs with CNN conditioners
OTHER_DIMENSIONS = list(SHAPES)


def is_u1(name: str) -> bool:
    return name.startswith("u1")


def lattice(name: str) -> tuple[int, ...]:
    """The lattice of config ``name``."""
    return SHAPES.get(name, U1_SHAPE if is_u1(name) else PHI4_SHAPE)


def make_action(name: str, shape=None):
    """U(1) at β = 1.7; φ⁴ at κ = 0.6/d, λ = 0.02 (2dκ = 1.2: the broken phase of the Gaussian start in every d)."""
    shape = tuple(shape or lattice(name))
    if is_u1(name):
        return U1Gauge(shape, beta=1.7)
    return Phi4(shape, kappa=0.6 / len(shape), lam=0.02)


def randomise(flow: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Add scale·N(0, 1) to every parameter (there are no biases in Z2Nice: none are added)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype))
    return flow


def make_flow(name: str, shape=None, dtype=F64, seed: int = 0, scale: float | None = None, **overrides):
    """(flow, action): ``build_flow`` of ``CONFIGS[name]`` in ``dtype`` with randomised parameters."""
    scale = SCALES.get(name, DEFAULT_SCALE) if scale is None else scale
    action = make_action(name, shape)
    with torch.random.fork_rng(devices=[]):  # the default init of the hidden layers uses the global RNG
        torch.manual_seed(1000 + seed)
        flow = build_flow({**CONFIGS[name], **overrides}, action)
    flow = flow.double() if dtype == F64 else flow.to(dtype)
    randomise(flow, scale, seed)
    return flow, action


def base_sample(flow, n: int, seed: int = 1) -> torch.Tensor:
    return flow.base.sample((n,), generator=torch.Generator().manual_seed(seed))


def field_distance(name: str, a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b|, modulo 2π for U(1) link angles."""
    d = wrap(a - b) if is_u1(name) else a - b
    return float(d.detach().abs().max())


def random_alpha(batch: int, shape, seed: int = 2, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(batch, *shape, generator=g, dtype=F64) * 2 - 1) * math.pi).to(dtype)


def dense_jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    """∂ fn(x)/∂x of one sample ``x: (1, …)`` as a dense (D, D) matrix."""
    shape = x.shape
    return torch.autograd.functional.jacobian(lambda v: fn(v.view(shape)).flatten(), x.detach().flatten())


def maxabs(t: torch.Tensor) -> float:
    return float(t.detach().abs().max())
