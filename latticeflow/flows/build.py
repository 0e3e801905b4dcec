"""`build_flow(config, action)`: a `Flow` from the ``flow:`` section of a run config.

A lookup in the table of flow families (`latticeflow.flows.families`, where every key and default is
documented): ``family`` (default: the theory's default family, spline for φ⁴ and u1 for U(1)) picks the
entry; the config must name only that family's keys (one line naming the key, a did-you-mean hint and the
family's keys otherwise), and the family must apply to the theory (by its ``theory`` attribute). The keys
every family shares are checked here — ``n_layers`` (a positive integer), ``hidden`` (a list of positive
integers), ``kernel_size`` (odd), ``activation``, ``dilation`` — the rest by the family's builder.

Example:
    >>> from actions import Phi4
    >>> flow = build_flow({}, Phi4((4, 4, 4), kappa=0.1, lam=0.0))  # spline, periodic Conv3d conditioners
    >>> [type(layer).__name__ for layer in flow.layers][:2]
    ['FourierScaling', 'SplineCoupling']
    >>> build_flow({"family": "realnvp", "n_layer": 4}, Phi4((4, 4), kappa=0.2, lam=0.0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    latticeflow.flows.base.FlowError: unknown config key 'flow.n_layer' for family 'realnvp' (did you mean ...
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from .base import FlowError
from .conditioners import ACTIVATIONS
from .families import FAMILIES, FLOW_FAMILIES, default_family, families_for, flow_defaults
from .flow import Flow

__all__ = ["build_flow", "FLOW_FAMILIES", "flow_defaults"]


def _err(key: str, msg: str) -> FlowError:
    return FlowError(f"flow.{key} {msg}")


def _unknown_key(key: Any, family: str, allowed: frozenset[str]) -> FlowError:
    hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
    extra = f" (did you mean 'flow.{hint[0]}'?)" if hint else ""
    return FlowError(f"unknown config key 'flow.{key}' for family '{family}'{extra}; its keys: {', '.join(sorted(allowed))}")


def _check_dilation(dilation: Any, n_conv: int) -> int | list[int]:
    ok = lambda d: isinstance(d, int) and not isinstance(d, bool) and d >= 1  # noqa: E731
    if ok(dilation) or (isinstance(dilation, (list, tuple)) and len(dilation) == n_conv and all(map(ok, dilation))):
        return dilation if isinstance(dilation, int) else list(dilation)
    raise _err("dilation", f"must be a positive integer or a list of {n_conv} (one per convolution), got {dilation!r}")


def build_flow(config: Mapping[str, Any] | None, action) -> Flow:
    """Build the flow of ``config`` for the theory object ``action`` (e.g. ``actions.Phi4``, ``actions.U1Gauge``)."""
    cfg = dict(config or {})
    theory = getattr(action, "theory", None)
    family = cfg.get("family", default_family(theory))
    if not isinstance(family, str) or family not in FAMILIES:
        if family is None:
            raise FlowError(f"flow: no flow family applies to theory {theory!r} (families: {', '.join(FLOW_FAMILIES)})")
        raise _err("family", f"must be one of {', '.join(FLOW_FAMILIES)}, got {family!r}")
    entry = FAMILIES[family]
    for key in cfg:
        if key not in entry.keys:
            raise _unknown_key(key, family, entry.keys)
    if theory not in entry.theories:
        fits = families_for(theory)
        raise _err("family", f"{family!r} does not fit theory {theory!r}"
                             + (f" (its families: {', '.join(fits)})" if fits else ""))
    # torch has convolutions up to 3D: on d >= 4 lattices the default conditioner is fully connected
    conditioner = cfg.get("conditioner", "cnn" if len(getattr(action, "shape", ())) <= 3 else "fc")
    opts = entry.options(conditioner, action)
    if "conditioner" in entry.keys:
        opts["conditioner"] = conditioner
    opts.update((k, v) for k, v in cfg.items() if k != "family")
    n_layers, hidden, kernel = opts["n_layers"], opts["hidden"], opts["kernel_size"]
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        raise _err("n_layers", f"must be a positive integer, got {n_layers!r}")
    if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise _err("hidden", f"must be a list of positive integers, got {hidden!r}")
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise _err("kernel_size", f"must be an odd positive integer, got {kernel!r}")
    if opts["activation"] not in ACTIVATIONS:
        raise _err("activation", f"must be one of {', '.join(ACTIVATIONS)}, got {opts['activation']!r}")
    opts["dilation"] = _check_dilation(opts.get("dilation", 1), len(hidden) + 1)
    return entry.build(opts, action)
