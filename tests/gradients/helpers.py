"""Builders for the gradient-estimator tests: small float64 flows of every family, randomised.

The last layer of every conditioner starts at zero (the identity flow), so each flow gets scale·N(0, 1)
added to every parameter; otherwise the estimators would only be compared at the identity.
Lattices are non-square where the family allows it (φ⁴ CNN 6×4, U(1) 8×4) to catch transposed axes.
"""
from __future__ import annotations

import copy

import torch

from actions import Phi4, U1Gauge
from latticeflow.flows import build_flow

F64 = torch.float64

FAMILIES = {
    "z2nice-cnn": ({"family": "z2nice", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8]}, (6, 4)),
    "z2nice-fc": ({"family": "z2nice", "conditioner": "fc", "n_layers": 4, "hidden": [16, 16]}, (4, 4)),
    "realnvp-cnn": ({"family": "realnvp", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8]}, (6, 4)),
    "realnvp-fc": ({"family": "realnvp", "conditioner": "fc", "n_layers": 4, "hidden": [16, 16]}, (4, 4)),
    "spline-cnn": ({"family": "spline", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8], "n_bins": 4,
                    "bound": 2.5}, (6, 4)),
    "spline-fc": ({"family": "spline", "conditioner": "fc", "n_layers": 4, "hidden": [16, 16], "n_bins": 4,
                   "bound": 2.5}, (4, 4)),
    "z2affine-cnn": ({"family": "z2affine", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8]}, (6, 4)),
    "spline-decimated-cnn": ({"family": "spline", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8], "n_bins": 4,
                              "bound": 2.5, "vacua": False, "decimate": True}, (6, 4)),
    "spline-decimated2-cnn": ({"family": "spline", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8], "n_bins": 4,
                               "bound": 2.5, "vacua": False, "decimate": 2,
                               "zero_mode": True, "magnetization": True}, (8, 4)),
    "spline-decimated2-colours-cnn": ({"family": "spline", "conditioner": "cnn", "n_layers": 8, "hidden": [8],
                                       "n_bins": 4, "bound": 2.5, "vacua": False, "decimate": 2, "colours": True},
                                      (8, 8)),
    "u1_ncp": ({"family": "u1_ncp", "n_layers": 4, "hidden": [8, 8], "n_components": 2}, (8, 4)),
    "u1_spline": ({"family": "u1", "transform": "spline", "n_layers": 4, "hidden": [8, 8], "n_bins": 4,
                   "marginal": False}, (8, 4)),
    "u1_marginal": ({"family": "u1", "n_layers": 2, "hidden": [8, 8], "n_bins": 4}, (8, 4)),
}
NAMES = list(FAMILIES)
# RealNVP with CNN conditioners stretches fields a lot at 0.3 (|x| up to ~1e3); 0.2 keeps it far from the
# identity while round-off stays well below the 1e-10 tolerances.
SCALES = {"realnvp-cnn": 0.2, "z2affine-cnn": 0.15}
SCALES.update({name: 0.1 for name in FAMILIES if "spline" in name})  # see tests/flows/helpers.py
# The marginal layer concentrates the plaquettes where randomised circular splines are steepest; 0.03 keeps
# the composed inverse well conditioned (the layer alone is tested at 0.1 in tests/flows/test_u1_plaquette.py).
SCALES["u1_marginal"] = 0.03


def make_action(name: str):
    shape = FAMILIES[name][1]
    if name.startswith("u1"):
        return U1Gauge(shape, beta=2.0)
    return Phi4(shape, kappa=0.3, lam=0.022)


def randomise(flow: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype))
    return flow


def make_flow(name: str, seed: int = 0, dtype=F64, scale: float | None = None, **overrides):
    """(flow, action) of family ``name`` in ``dtype``, parameters randomised by ``seed``."""
    config, _ = FAMILIES[name]
    action = make_action(name)
    with torch.random.fork_rng(devices=[]):  # default init of hidden layers uses the global RNG
        torch.manual_seed(100 + seed)
        flow = build_flow({**config, **overrides}, action)
    flow = flow.to(dtype)
    randomise(flow, SCALES.get(name, 0.3) if scale is None else scale, seed)
    return flow, action


def base_sample(flow, n: int, seed: int = 1) -> torch.Tensor:
    return flow.base.sample((n,), generator=torch.Generator().manual_seed(seed))


def target_like(name: str, n: int, seed: int = 7) -> torch.Tensor:
    """Samples x of a differently randomised flow of the same family (stand-ins for target samples)."""
    other, _ = make_flow(name, seed=seed + 50)
    with torch.no_grad():
        return other.sample(n, generator=torch.Generator().manual_seed(seed))[0]


def grads(flow, loss: torch.Tensor) -> torch.Tensor:
    """The flat parameter gradient that ``loss.backward()`` leaves (zeros for unused parameters)."""
    flow.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in flow.parameters()])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())


class FrozenFlowTarget:
    """Target density p = q_{θ₀} of a frozen deep copy of a flow: S(x) = −log q_{θ₀}(x), ∇S by autograd."""

    def __init__(self, flow, action) -> None:
        self.frozen = copy.deepcopy(flow)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.theory, self.shape, self.field_shape = action.theory, action.shape, action.field_shape

    def action(self, x: torch.Tensor) -> torch.Tensor:
        return -self.frozen.log_prob(x)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_ = x.detach().requires_grad_()
            (g,) = torch.autograd.grad(self.action(x_).sum(), x_)
        return g
