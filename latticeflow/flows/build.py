"""`build_flow(config, action)`: a `Flow` from the ``flow:`` section of a run config.

Keys (all optional; defaults depend on the family):
  family        spline | z2affine | realnvp | z2nice | snf (φ⁴), u1 | u1_ncp (U(1))
  n_layers      coupling layers (φ⁴: 8, alternating checkerboard parity; U(1): 16 = 2 directions × 4 stripes × 2)
  conditioner   cnn | fc (φ⁴; U(1) is always cnn)
  hidden        hidden widths / channels (cnn: [16, 16], fc: [256, 256]; U(1): [8, 8])
  kernel_size   3
  activation    tanh | relu | leaky_relu | silu | gelu (z2nice requires tanh: the conditioner must be odd)
  dilation      dilation of the conditioner's convolutions (int, or one per convolution): 1
  n_components  NCP mixture components (U(1), transform ncp): 2
  fourier       φ⁴: a `FourierScaling` layer first, initialised from the quadratic part of the action
                (the free field is exact at step 0): true for spline and z2affine, false for the others
  vacua         φ⁴: auto | true | false. The base and the Fourier layer's start come from the Gaussian
                variational method (`latticeflow.flows.vacuum`): broken = a `VacuumMixture` base
                ½N(+m·1, 1) + ½N(−m·1, 1) with the fluctuation kernel around ±φ₀, symmetric = N(0, 1) with
                the Hartree kernel; auto takes the lower variational free energy (the better KL at step 0).
                auto for spline and z2affine, false for the others (true/auto need kappa, lam)
  zero_mode     φ⁴: a `ZeroModeSpline` after the Fourier layer: an odd spline of the magnetization M that moves
                the whole field, y = x + (g(M) − M)·1, initialised from the mean-field magnetization density
                (two vacua in the broken phase, identity where that density is unimodal): false
  n_bins, bound spline: K bins on [−bound, bound] with identity tails (φ⁴); U(1): K bins on the circle
  z2            spline: mirrored parameters, T(−z) = −T(z) (true)
  transform     U(1): spline (circular RQ spline, closed-form inverse) | ncp (mixture of non-compact
                projections, bisection inverse): spline for family u1, ncp for u1_ncp
  loops         U(1): 2×1 and 1×2 Wilson loops of the frozen region as extra conditioner inputs
                (true for transform spline, false for ncp)
  marginal      U(1): a `PlaquetteMarginal` layer first: the plaquettes mapped to the single-plaquette
                marginal e^{β cos P}/(2π I₀(β)) by learned 32-bin circular splines, the torus constraint
                spread evenly (reverse ESS 0.98 at 8×8, β = 2 and 0.85 at β = 6 before any training;
                2D only): true for family u1, false for u1_ncp
  scaling       z2nice: learned global scaling layer y = e^a x at the end (true); a per site with the fc
                conditioner (Nicoli et al. 2020), one scalar with cnn (keeps translation equivariance)

Family ``snf`` (self-normalizing flows, Keller et al. 2021; see `latticeflow.flows.snf`):
  layer         dense (W mixes all sites) | conv (periodic k × k convolution): dense
  n_layers      self-normalizing linear layers: 2
  nonlinearity  an `OddPower` elementwise bijection after every linear layer but the last: true
  couplings     Z2Nice couplings after every linear layer (alternating parity; conditioner, hidden,
                kernel_size, activation as above): 0
  gradient      self_normalized (learned inverse R in the log-det gradient) | exact (the twin): self_normalized
  direction     the flow direction that applies W and trains at O(D²): inverse (x → z, forward KL /
                maximum likelihood) | forward (z → x, reverse KL): inverse here; config files default it
                from train.objective. The other direction solves W exactly (O(D³) gradients, R unused).
  block         conv only: regroup 2 × 2 blocks into 4 channels first (2) or not (1): 1
  refresh       dense: exact log-det value every this many updates while self-normalized training: 25
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import FlowError
from .conditioners import ACTIVATIONS, ODD_ACTIVATIONS
from .flow import Flow, StandardNormal, UniformAngles, VacuumMixture
from .fourier import FourierScaling
from .phi4 import AdditiveCoupling, AffineCoupling, GlobalScaling, Z2AffineCoupling
from .snf import GRADIENTS, OddPower, SelfNormConv, SelfNormDense
from .spline import SplineCoupling
from .u1 import NCPCoupling
from .u1_plaquette import PlaquetteMarginal
from .u1_spline import CircularSplineCoupling
from .vacuum import choose_vacuum
from .zero_mode import ZeroModeSpline

__all__ = ["build_flow", "FLOW_FAMILIES", "flow_defaults"]

FLOW_FAMILIES = ("spline", "z2affine", "realnvp", "z2nice", "snf", "u1", "u1_ncp")
U1_FAMILIES = ("u1", "u1_ncp")
DEFAULT_FAMILY = {"phi4": "spline", "u1": "u1"}
_KEYS = {"family", "n_layers", "conditioner", "hidden", "kernel_size", "activation", "n_components", "scaling",
         "layer", "nonlinearity", "couplings", "gradient", "direction", "block", "refresh", "dilation", "fourier",
         "n_bins", "bound", "z2", "transform", "loops", "marginal", "zero_mode", "vacua"}
U1_TRANSFORMS = ("spline", "ncp")


def flow_defaults(family: str, conditioner: str = "cnn") -> dict[str, Any]:
    """The defaults of one family (with the given conditioner)."""
    if family == "snf":
        return {"layer": "dense", "n_layers": 2, "nonlinearity": True, "couplings": 0, "gradient": "self_normalized",
                "direction": "inverse", "block": 1, "refresh": 25, "conditioner": conditioner,
                "hidden": [16, 16] if conditioner == "cnn" else [256, 256], "kernel_size": 3, "activation": "tanh"}
    if family in U1_FAMILIES:
        spline = family == "u1"
        return {"n_layers": 16, "conditioner": "cnn", "hidden": [8, 8], "kernel_size": 3, "activation": "tanh",
                "n_components": 2, "transform": "spline" if spline else "ncp", "n_bins": 8, "loops": spline,
                "dilation": 1, "marginal": spline}
    opts = {"n_layers": 8, "conditioner": conditioner, "hidden": [16, 16] if conditioner == "cnn" else [256, 256],
            "kernel_size": 3, "activation": "tanh", "scaling": family == "z2nice", "dilation": 1,
            "fourier": family in ("spline", "z2affine"), "zero_mode": False,
            "vacua": "auto" if family in ("spline", "z2affine") else False}
    if family == "spline":
        opts.update(n_bins=8, bound=4.0, z2=True)
    return opts


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
    family = cfg.get("family", DEFAULT_FAMILY.get(theory, "spline"))
    if family not in FLOW_FAMILIES:
        raise _err("family", f"must be one of {', '.join(FLOW_FAMILIES)}, got {family!r}")
    if (family in U1_FAMILIES) != (theory == "u1"):
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

    dilation = _check_dilation(opts.get("dilation", 1), len(hidden) + 1)
    if family in U1_FAMILIES:
        return _build_u1(shape, action, opts, dict(hidden=hidden, kernel_size=kernel, activation=opts["activation"],
                                                   dilation=dilation))

    common = dict(conditioner=opts["conditioner"], hidden=hidden, kernel_size=kernel, activation=opts["activation"],
                  dilation=dilation)
    if family == "snf" and not opts["couplings"]:
        return _build_snf(shape, action.field_shape, opts, common)
    if any(s % 2 for s in shape):
        raise FlowError(f"flow: checkerboard couplings need even lattice extents, got shape {list(shape)}")
    if opts["conditioner"] not in ("cnn", "fc"):
        raise _err("conditioner", f"must be 'cnn' or 'fc', got {opts['conditioner']!r}")
    if opts["conditioner"] == "cnn" and len(shape) != 2:
        raise _err("conditioner", f"'cnn' needs a 2D lattice, got shape {list(shape)}; use 'fc'")
    if family == "snf":
        return _build_snf(shape, action.field_shape, opts, common)
    if not isinstance(opts["fourier"], bool):
        raise _err("fourier", f"must be true or false, got {opts['fourier']!r}")
    if not isinstance(opts["zero_mode"], bool):
        raise _err("zero_mode", f"must be true or false, got {opts['zero_mode']!r}")
    base, first = _phi4_start(action, opts)
    if opts["zero_mode"]:
        # the zero mode reaching the layer: N(0, e^{2a(0)}/V) after the Fourier layer, N(0, 1/V) without it
        scale = math.exp(float(first[0].log_scale.detach().flatten()[0])) if first else 1.0
        first.append(ZeroModeSpline.from_action(action, input_std=scale / math.sqrt(math.prod(shape))))
    if family == "spline":
        n_bins, bound, z2 = _check_spline(opts)
        if z2 and opts["activation"] not in ODD_ACTIVATIONS:
            raise _err("activation", f"must be odd for a Z2-equivariant spline (tanh), got {opts['activation']!r}")
        layers = [SplineCoupling(shape, i % 2, n_bins=n_bins, bound=bound, z2=z2, **common) for i in range(n_layers)]
        return Flow(base, first + layers)
    if family == "z2affine":
        if opts["activation"] not in ODD_ACTIVATIONS:
            raise _err("activation", f"must be odd for z2affine (tanh), got {opts['activation']!r}")
        layers = [Z2AffineCoupling(shape, i % 2, **common) for i in range(n_layers)]
        return Flow(base, first + layers)
    if family == "z2nice":
        if opts["activation"] not in ODD_ACTIVATIONS:
            raise _err("activation", f"must be odd for z2nice (tanh), got {opts['activation']!r}")
        layers = [AdditiveCoupling(shape, i % 2, odd=True, **common) for i in range(n_layers)]
        if opts["scaling"]:
            layers.append(GlobalScaling(shape, per_site=opts["conditioner"] == "fc"))
    else:
        layers = [AffineCoupling(shape, i % 2, **common) for i in range(n_layers)]
    return Flow(base, first + layers)


def _phi4_start(action, opts: dict[str, Any]) -> tuple[StandardNormal | VacuumMixture, list]:
    """The base density and the Fourier layer (if any) of a φ⁴ coupling flow, from ``fourier`` and ``vacua``."""
    vacua = opts["vacua"]
    if not (vacua == "auto" or vacua is True or vacua is False):  # not 0 / 1
        raise _err("vacua", f"must be auto, true or false, got {vacua!r}")
    has_couplings = all(hasattr(action, k) for k in ("kappa", "lam"))
    if vacua is True and not has_couplings:
        raise _err("vacua", f"needs a φ⁴ action with kappa and lam, got {type(action).__name__}")
    if opts["zero_mode"]:
        if vacua is True:
            raise _err("vacua", "and flow.zero_mode both move the magnetization: set one of them false")
        vacua = False  # the zero-mode layer takes the place of the broken base
    vacuum = None
    if vacua is not False and has_couplings:
        vacuum = choose_vacuum(action.shape, float(action.kappa), float(action.lam), vacua)
    if vacuum is None or not vacuum.broken:
        first = [FourierScaling.from_action(action)] if opts["fourier"] else []
        return StandardNormal(action.field_shape), first
    if not opts["fourier"]:
        return VacuumMixture(action.field_shape, vacuum.phi0), []
    # the base zero mode m·1 is scaled by e^{a(0)} = K(0)^{-1/2}: m = φ₀ √K(0) lands it on ±φ₀
    layer = FourierScaling(action.shape, -0.5 * np.log(vacuum.kernel))
    return VacuumMixture(action.field_shape, vacuum.phi0 * math.sqrt(float(vacuum.kernel.flat[0]))), [layer]


def _check_dilation(dilation: Any, n_conv: int) -> int | list[int]:
    ok = lambda d: isinstance(d, int) and not isinstance(d, bool) and d >= 1  # noqa: E731
    if ok(dilation) or (isinstance(dilation, (list, tuple)) and len(dilation) == n_conv and all(map(ok, dilation))):
        return dilation if isinstance(dilation, int) else list(dilation)
    raise _err("dilation", f"must be a positive integer or a list of {n_conv} (one per convolution), got {dilation!r}")


def _check_spline(opts: dict[str, Any]) -> tuple[int, float, bool]:
    n_bins, bound, z2 = opts["n_bins"], opts.get("bound", 1.0), opts.get("z2", True)
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 2:
        raise _err("n_bins", f"must be an integer >= 2, got {n_bins!r}")
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0:
        raise _err("bound", f"must be a number > 0, got {bound!r}")
    if not isinstance(z2, bool):
        raise _err("z2", f"must be true or false, got {z2!r}")
    return n_bins, float(bound), z2


def _build_u1(shape: tuple[int, ...], action, opts: dict[str, Any], common: dict[str, Any]) -> Flow:
    """Gauge-equivariant couplings on plaquettes: circular splines or NCP mixtures."""
    if len(shape) != 2 or any(s % 4 for s in shape):
        raise FlowError(f"flow: gauge-equivariant U(1) couplings need both lattice extents to be multiples of 4 "
                        f"(stripes of period 4), got shape {list(shape)}")
    transform, loops = opts["transform"], opts["loops"]
    if transform not in U1_TRANSFORMS:
        raise _err("transform", f"must be one of {', '.join(U1_TRANSFORMS)}, got {transform!r}")
    if not isinstance(loops, bool):
        raise _err("loops", f"must be true or false, got {loops!r}")
    marginal = opts["marginal"]
    if not isinstance(marginal, bool):
        raise _err("marginal", f"must be true or false, got {marginal!r}")
    if transform == "spline":
        n_bins = _check_spline(opts)[0]
        layers = [CircularSplineCoupling(shape, i, n_bins=n_bins, loops=loops, **common) for i in range(opts["n_layers"])]
    else:
        k = opts["n_components"]
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise _err("n_components", f"must be a positive integer, got {k!r}")
        layers = [NCPCoupling(shape, i, n_components=k, loops=loops, **common) for i in range(opts["n_layers"])]
    if marginal:
        layers = [PlaquetteMarginal.from_action(action), *layers]
    return Flow(UniformAngles(action.field_shape), layers)


def _build_snf(shape: tuple[int, ...], field_shape, opts: dict[str, Any], common: dict[str, Any]) -> Flow:
    """Self-normalizing linear layers, `OddPower` nonlinearities and Z2Nice couplings: an odd map, so q(−φ) = q(φ)."""
    if opts["layer"] not in ("dense", "conv"):
        raise _err("layer", f"must be 'dense' or 'conv', got {opts['layer']!r}")
    if opts["gradient"] not in GRADIENTS:
        raise _err("gradient", f"must be one of {', '.join(GRADIENTS)}, got {opts['gradient']!r}")
    if opts["direction"] not in ("inverse", "forward"):
        raise _err("direction", f"must be 'inverse' (forward KL) or 'forward' (reverse KL), got {opts['direction']!r}")
    for key in ("couplings", "refresh", "block"):
        v = opts[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "couplings" else 1):
            raise _err(key, f"must be a {'non-negative' if key == 'couplings' else 'positive'} integer, got {v!r}")
    if opts["layer"] == "conv" and len(shape) != 2:
        raise _err("layer", f"'conv' needs a 2D lattice, got shape {list(shape)}; use 'dense'")
    if opts["couplings"] and opts["activation"] not in ODD_ACTIVATIONS:
        raise _err("activation", f"must be odd for Z2Nice couplings (tanh), got {opts['activation']!r}")
    lin = dict(gradient=opts["gradient"], inverted=opts["direction"] == "inverse")
    layers: list = []
    for i in range(opts["n_layers"]):
        if opts["layer"] == "dense":
            layers.append(SelfNormDense(shape, refresh=opts["refresh"], **lin))
        else:
            layers.append(SelfNormConv(shape, kernel_size=opts["kernel_size"], block=opts["block"], **lin))
        if opts["nonlinearity"] and i < opts["n_layers"] - 1:
            layers.append(OddPower())
        layers += [AdditiveCoupling(shape, j % 2, odd=True, **common) for j in range(opts["couplings"])]
    return Flow(StandardNormal(field_shape), layers)
