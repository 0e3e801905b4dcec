"""`build_flow(config, action)`: a `Flow` from the ``flow:`` section of a run config.

Keys (all optional but ``family``; defaults depend on the family):
  family        realnvp | z2nice (φ⁴), u1_ncp (U(1))
  n_layers      coupling layers (φ⁴: 8, alternating checkerboard parity; U(1): 16 = 2 directions × 4 stripes × 2)
  conditioner   cnn | fc (φ⁴; U(1) is always cnn)
  hidden        hidden widths / channels (cnn: [16, 16], fc: [256, 256]; U(1): [8, 8])
  kernel_size   3
  activation    tanh | relu | leaky_relu | silu | gelu (z2nice requires tanh: the conditioner must be odd)
  n_components  NCP mixture components (U(1)): 2
  scaling       z2nice: learned global scaling layer y = e^a x at the end (true); a per site with the fc
                conditioner (Nicoli et al. 2020), one scalar with cnn (keeps translation equivariance)
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from .base import FlowError
from .conditioners import ACTIVATIONS, ODD_ACTIVATIONS
from .flow import Flow, StandardNormal, UniformAngles
from .phi4 import AdditiveCoupling, AffineCoupling, GlobalScaling
from .u1 import NCPCoupling

__all__ = ["build_flow", "FLOW_FAMILIES", "flow_defaults"]

FLOW_FAMILIES = ("realnvp", "z2nice", "u1_ncp")
_KEYS = {"family", "n_layers", "conditioner", "hidden", "kernel_size", "activation", "n_components", "scaling"}


def flow_defaults(family: str, conditioner: str = "cnn") -> dict[str, Any]:
    """The defaults of one family (with the given conditioner)."""
    if family == "u1_ncp":
        return {"n_layers": 16, "conditioner": "cnn", "hidden": [8, 8], "kernel_size": 3, "activation": "tanh",
                "n_components": 2}
    return {"n_layers": 8, "conditioner": conditioner, "hidden": [16, 16] if conditioner == "cnn" else [256, 256],
            "kernel_size": 3, "activation": "tanh", "scaling": family == "z2nice"}


def _err(key: str, msg: str) -> FlowError:
    return FlowError(f"flow.{key} {msg}")


def build_flow(config: Mapping[str, Any] | None, action) -> Flow:
    """Build the flow of ``config`` for the theory object ``action`` (``actions.Phi4`` / ``actions.U1Gauge``)."""
    cfg = dict(config or {})
    for key in cfg:
        if key not in _KEYS:
            hint = difflib.get_close_matches(str(key), sorted(_KEYS), n=1)
            raise FlowError(f"unknown config key 'flow.{key}'" + (f" (did you mean 'flow.{hint[0]}'?)" if hint else ""))
    theory = getattr(action, "theory", None)
    family = cfg.get("family", "u1_ncp" if theory == "u1" else "z2nice")
    if family not in FLOW_FAMILIES:
        raise _err("family", f"must be one of {', '.join(FLOW_FAMILIES)}, got {family!r}")
    if (family == "u1_ncp") != (theory == "u1"):
        raise _err("family", f"{family!r} does not fit theory {theory!r}")
    opts = flow_defaults(family, cfg.get("conditioner", "cnn"))
    for key, value in cfg.items():
        if key != "family" and key not in opts:
            raise _err(key, f"is not a key of family {family!r}")
        opts[key] = value
    n_layers, hidden, kernel = opts["n_layers"], opts["hidden"], opts["kernel_size"]
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        raise _err("n_layers", f"must be a positive integer, got {n_layers!r}")
    if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise _err("hidden", f"must be a list of positive integers, got {hidden!r}")
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise _err("kernel_size", f"must be an odd positive integer, got {kernel!r}")
    if opts["activation"] not in ACTIVATIONS:
        raise _err("activation", f"must be one of {', '.join(ACTIVATIONS)}, got {opts['activation']!r}")
    shape = tuple(action.shape)

    if family == "u1_ncp":
        if len(shape) != 2 or any(s % 4 for s in shape):
            raise FlowError(f"flow: u1_ncp needs both lattice extents to be multiples of 4 (stripes of period 4), got shape {list(shape)}")
        k = opts["n_components"]
        if not isinstance(k, int) or k < 1:
            raise _err("n_components", f"must be a positive integer, got {k!r}")
        layers = [NCPCoupling(shape, i, n_components=k, hidden=hidden, kernel_size=kernel, activation=opts["activation"])
                  for i in range(n_layers)]
        return Flow(UniformAngles(action.field_shape), layers)

    if any(s % 2 for s in shape):
        raise FlowError(f"flow: checkerboard couplings need even lattice extents, got shape {list(shape)}")
    if opts["conditioner"] not in ("cnn", "fc"):
        raise _err("conditioner", f"must be 'cnn' or 'fc', got {opts['conditioner']!r}")
    if opts["conditioner"] == "cnn" and len(shape) != 2:
        raise _err("conditioner", f"'cnn' needs a 2D lattice, got shape {list(shape)}; use 'fc'")
    common = dict(conditioner=opts["conditioner"], hidden=hidden, kernel_size=kernel, activation=opts["activation"])
    if family == "z2nice":
        if opts["activation"] not in ODD_ACTIVATIONS:
            raise _err("activation", f"must be odd for z2nice (tanh), got {opts['activation']!r}")
        layers = [AdditiveCoupling(shape, i % 2, odd=True, **common) for i in range(n_layers)]
        if opts["scaling"]:
            layers.append(GlobalScaling(shape, per_site=opts["conditioner"] == "fc"))
    else:
        layers = [AffineCoupling(shape, i % 2, **common) for i in range(n_layers)]
    return Flow(StandardNormal(action.field_shape), layers)
