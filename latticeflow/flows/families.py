"""Flow families as a table: `FAMILIES` maps a ``flow.family`` name to its `FlowFamily` entry.

An entry holds the family's builder ``build(options, theory) -> Flow``, its defaults (whose keys are the
family's allowed ``flow:`` keys, besides ``family``), the theories it applies to (by the theory object's
``theory`` attribute) and whether it is the default family of those theories. `build_flow`
(`latticeflow.flows.build`) only looks a config up here; this table is the one place outside ``actions/``
that names theories. A new family is its layer file plus one entry.

Keys (all optional; defaults per family, see `flow_defaults`):
  family        spline | z2affine | realnvp | z2nice | snf (real scalar fields: φ⁴, Gaussian-mixture toy
                targets), u1 | u1_ncp (2D U(1)); default spline (φ⁴, gmm), u1 (U(1))
  n_layers      coupling layers (φ⁴: 8, alternating checkerboard parity; U(1): 16 = 2 directions × 4 stripes × 2)
  conditioner   cnn | fc (φ⁴; U(1) is always cnn). cnn: periodic Conv1d / Conv2d / Conv3d on d = 1, 2, 3
                lattices (torch has no Conv4d: use fc for d ≥ 4); fc: any d
  hidden        hidden widths / channels (cnn: [16, 16], fc: [256, 256]; U(1): [8, 8])
  kernel_size   3
  activation    tanh | relu | leaky_relu | silu | gelu (z2nice, z2affine and the z2 spline require tanh: the
                conditioner must be odd)
  dilation      dilation of the conditioner's convolutions (int, or one per convolution): 1
  n_components  NCP mixture components (U(1), transform ncp): 2
  fourier       φ⁴: a `FourierScaling` layer first, initialised from the theory's quadratic kernel and
                Gaussian vacuum (the free field is exact at step 0): true for spline and z2affine on a theory
                that has a quadratic kernel (φ⁴), false otherwise
  vacua         φ⁴: auto | true | false. The base and the Fourier layer's start come from the theory's Gaussian
                variational vacua (`actions.Phi4.gaussian_vacuum`): broken = a `VacuumMixture` base
                ½N(+m·1, 1) + ½N(−m·1, 1) with the fluctuation kernel around ±φ₀, symmetric = N(0, 1) with
                the Hartree kernel; auto takes the lower variational free energy (the better KL at step 0).
                auto for spline and z2affine, false for the others (true needs a φ⁴ theory; auto is off elsewhere)
  zero_mode     φ⁴: a `ZeroModeSpline` after the Fourier layer: an odd spline of the magnetization M that moves
                the whole field, y = x + (g(M) − M)·1, initialised from the theory's mean-field magnetization
                density (two vacua in the broken phase, identity where that density is unimodal): false.
                With decimate 2: the spline moves the mean of the learned sites A2 ∪ A1e after the couplings,
                starting as the identity on ±ZERO_MODE_BOUND (the non-Gaussian magnetization near criticality)
  n_bins, bound spline: K bins on [−bound, bound] with identity tails (φ⁴: 8, 4.0); U(1): K bins on the circle (8)
  z2            spline: mirrored parameters, T(−z) = −T(z) (true)
  decimate      spline on φ⁴: the couplings model the even sublattice only (`latticeflow.flows.decimation`) and
                every odd site is drawn from its exact conditional density given its neighbours
                (`SiteConditional`), so half the sites carry no error; needs vacua auto/false (zero_mode only
                with 2).
                2 (2D, extents divisible by 4, cnn): an eighth more of the sites from their exact conditional
                with the odd sites integrated out, the couplings on 3/8 of the sites (`flows.two_level`) (false)
  magnetization spline with decimate 2 and z2: every coupling's conditioner also sees the mean M of its visible
                source sites as a constant second input channel (odd under Z2), so the local maps can follow the
                global magnetization (false)
  colours       spline with decimate 2 and z2: each coupling updates one of four colours of A2 or of A1e given
                every other learned site (`ColourSplineCoupling`; the sites of one colour are independent given
                the rest under the target), one colour of A2 then of A1e in turn, every site once per 8 layers;
                translation equivariant under shifts by (4, ±4) (false)
  scaling       z2nice: learned global scaling layer y = e^a x at the end (true); a per site with the fc
                conditioner (Nicoli et al. 2020), one scalar with cnn (keeps translation equivariance)
  transform     U(1): spline (circular RQ spline, closed-form inverse) | ncp (mixture of non-compact
                projections, bisection inverse): spline for family u1, ncp for u1_ncp
  loops         U(1): 2×1 and 1×2 Wilson loops of the frozen region as extra conditioner inputs
                (true for transform spline, false for ncp)
  marginal      U(1): a `PlaquetteMarginal` layer first: the plaquettes mapped to the single-plaquette
                marginal e^{β cos P}/(2π I₀(β)) by learned 32-bin circular splines, the torus constraint
                spread evenly (reverse ESS 0.98 at 8×8, β = 2 and 0.85 at β = 6 before any training):
                true for family u1, false for u1_ncp

Family ``snf`` (self-normalizing flows, Keller et al. 2021; see `latticeflow.flows.snf`):
  layer         dense (W mixes all sites; any d) | conv (periodic k × k convolution; 2D only): dense
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

Lattices: the φ⁴ coupling families (spline, z2affine, realnvp, z2nice, and snf's couplings) need even extents
(checkerboard masks), in any dimension d; U(1) families need a 2D lattice with even extents ≥ 4 (checked by
the gauge couplings). A shape a family cannot take raises one line saying why.

Example:
    >>> FAMILIES["spline"].theories, FAMILIES["spline"].default
    (('phi4', 'gmm'), True)
    >>> default_family("u1")
    'u1'
    >>> sorted(FAMILIES["z2nice"].keys)[:4]
    ['activation', 'conditioner', 'dilation', 'family']
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import FlowError
from .conditioners import ODD_ACTIVATIONS
from .flow import Flow, StandardNormal, UniformAngles, VacuumMixture
from .fourier import FourierScaling
from .phi4 import AdditiveCoupling, AffineCoupling, GlobalScaling, Z2AffineCoupling, check_conditioner
from .snf import GRADIENTS, OddPower, SelfNormConv, SelfNormDense
from .spline import SplineCoupling
from .u1 import NCPCoupling
from .u1_plaquette import PlaquetteMarginal
from .u1_spline import CircularSplineCoupling
from .zero_mode import ZeroModeSpline
from .decimation import SublatticeFourierScaling, SublatticeSplineCoupling
from .site_conditional import SiteConditional
from .site_marginal import SiteMarginal
from .two_level import (ColourSplineCoupling, CosetFourierScaling, CosetGaussianShift, CosetSplineCoupling, MarginalSiteConditional,
                        two_level_masks)

#: decimate 2 with zero_mode: the learned sites' mean M (hopping normalisation; std 0.44 at L = 16, κ = 0.331,
#: smaller at larger L on the line ξ ≈ L/4) is reshaped on [−1.6, 1.6] in 16 bins, identity tails outside
ZERO_MODE_BOUND = 1.6
ZERO_MODE_BINS = 16

__all__ = ["FlowFamily", "Depends", "FAMILIES", "FLOW_FAMILIES", "default_family", "families_for", "flow_defaults"]


@dataclass(frozen=True)
class Depends:
    """A default that depends on the conditioner or the theory: ``rule(conditioner, theory)``; ``theory`` is
    None when only the documented defaults are asked for (`flow_defaults`)."""

    rule: Callable[[str, Any], Any]


@dataclass(frozen=True)
class FlowFamily:
    """One row of the table: ``build(options, theory) -> Flow`` with ``options`` = the defaults updated by
    the config (common keys already checked), the ``defaults`` (their keys are the allowed keys), the
    ``theories`` it applies to and whether it is their ``default`` family."""

    name: str
    build: Callable[[dict[str, Any], Any], Flow]
    defaults: Mapping[str, Any]
    theories: tuple[str, ...]
    default: bool = False
    summary: str = ""
    keys: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", frozenset(self.defaults) | {"family"})

    def options(self, conditioner: str = "cnn", theory: Any = None) -> dict[str, Any]:
        """The defaults, resolved for ``conditioner`` and ``theory`` (fresh copies of lists)."""
        return {k: copy.deepcopy(v.rule(conditioner, theory) if isinstance(v, Depends) else v)
                for k, v in self.defaults.items()}


def _err(key: str, msg: str) -> FlowError:
    return FlowError(f"flow.{key} {msg}")


def _bool(opts: Mapping[str, Any], key: str) -> bool:
    if not isinstance(opts[key], bool):
        raise _err(key, f"must be true or false, got {opts[key]!r}")
    return opts[key]


def _odd_activation(opts: Mapping[str, Any], what: str) -> None:
    if opts["activation"] not in ODD_ACTIVATIONS:
        raise _err("activation", f"must be odd for {what} (tanh), got {opts['activation']!r}")


def _conditioner_kwargs(opts: Mapping[str, Any]) -> dict[str, Any]:
    return dict(conditioner=opts["conditioner"], hidden=opts["hidden"], kernel_size=opts["kernel_size"],
                activation=opts["activation"], dilation=opts["dilation"])


# -- real scalar fields (φ⁴) --------------------------------------------------------------------------

def _check_checkerboard(shape: tuple[int, ...], opts: Mapping[str, Any]) -> None:
    """Checkerboard couplings: even extents (otherwise a site neighbours its own parity across the boundary
    and mask-preserving translations do not exist) and a conditioner that takes the lattice."""
    if any(s % 2 for s in shape):
        raise FlowError(f"flow: checkerboard couplings need even lattice extents (with an odd one, sites of equal "
                        f"parity neighbour across the boundary), got shape {list(shape)}")
    check_conditioner(opts["conditioner"], shape)


def _phi4_start(theory, opts: Mapping[str, Any]) -> tuple[StandardNormal | VacuumMixture, list]:
    """The base density and the first layers (Fourier, zero mode) of a φ⁴ coupling flow, from ``fourier``,
    ``vacua`` and ``zero_mode``; the physics comes from the theory (`actions.Phi4.gaussian_vacuum`, …)."""
    fourier, zero_mode, vacua = _bool(opts, "fourier"), _bool(opts, "zero_mode"), opts["vacua"]
    if not (vacua == "auto" or vacua is True or vacua is False):  # not 0 / 1
        raise _err("vacua", f"must be auto, true or false, got {vacua!r}")
    has_vacua = hasattr(theory, "gaussian_vacuum")
    if fourier and not hasattr(theory, "quadratic_kernel"):
        raise _err("fourier", f"needs a theory with a quadratic kernel (φ⁴), got {type(theory).__name__}")
    if vacua is True and not has_vacua:
        raise _err("vacua", f"needs a theory with Gaussian vacua (φ⁴), got {type(theory).__name__}")
    if zero_mode and vacua is True:
        raise _err("vacua", "and flow.zero_mode both move the magnetization: set one of them false")
    vacuum = None
    if vacua is not False and not zero_mode and has_vacua:  # the zero-mode layer takes the broken base's place
        try:
            vacuum = theory.gaussian_vacuum(vacua)
        except ValueError as err:
            raise FlowError(f"flow.{err}") from None
    if vacuum is None or not vacuum.broken:
        base, first = StandardNormal(theory.field_shape), [FourierScaling.from_action(theory)] if fourier else []
    elif not fourier:
        base, first = VacuumMixture(theory.field_shape, vacuum.phi0), []
    else:
        # the base zero mode m·1 is scaled by e^{a(0)} = K(0)^{-1/2}: m = φ₀ √K(0) lands it on ±φ₀
        first = [FourierScaling(theory.shape, -0.5 * np.log(vacuum.kernel))]
        base = VacuumMixture(theory.field_shape, vacuum.phi0 * math.sqrt(float(vacuum.kernel.flat[0])))
    if zero_mode:
        # the zero mode reaching the layer: N(0, e^{2a(0)}/V) after the Fourier layer, N(0, 1/V) without it
        scale = math.exp(float(first[0].log_scale.detach().flatten()[0])) if first else 1.0
        first.append(ZeroModeSpline.from_action(theory, input_std=scale / math.sqrt(math.prod(theory.shape))))
    return base, first


def _check_spline(opts: Mapping[str, Any]) -> tuple[int, float, bool]:
    n_bins, bound, z2 = opts["n_bins"], opts.get("bound", 1.0), opts.get("z2", True)
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 2:
        raise _err("n_bins", f"must be an integer >= 2, got {n_bins!r}")
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0:
        raise _err("bound", f"must be a number > 0, got {bound!r}")
    if not isinstance(z2, bool):
        raise _err("z2", f"must be true or false, got {z2!r}")
    return n_bins, float(bound), z2


def _coupling_flow(theory, opts: Mapping[str, Any], make: Callable[[tuple[int, ...], int], list]) -> Flow:
    """[start layers] + ``make(shape, i)`` for i < n_layers on checkerboard parities i mod 2."""
    shape = tuple(theory.shape)
    _check_checkerboard(shape, opts)
    base, first = _phi4_start(theory, opts)
    return Flow(base, first + [layer for i in range(opts["n_layers"]) for layer in make(shape, i)])


def _decimated_spline(theory, opts: Mapping[str, Any], levels: int = 1, **kw: Any) -> Flow:
    """N(0, 1) → [`SublatticeFourierScaling`] → even-site `SublatticeSplineCoupling` × n_layers → `SiteConditional`;
    ``levels`` 2: N(0, 1) → [`CosetFourierScaling`, `CosetGaussianShift`] → `CosetSplineCoupling` × n_layers →
    [`ZeroModeSpline` on A2 ∪ A1e] → `MarginalSiteConditional` → `SiteConditional` (`latticeflow.flows.two_level`)."""
    if not hasattr(theory, "site_potential"):
        raise _err("decimate", f"needs a theory with a site potential and neighbour field (φ⁴), "
                               f"got {type(theory).__name__}")
    zero_mode = _bool(opts, "zero_mode")
    if opts["vacua"] is True:
        raise _err("decimate", "starts from the symmetric Gaussian: set flow.vacua false (got vacua true)")
    if zero_mode and levels != 2:
        raise _err("zero_mode", f"with decimation needs flow.decimate 2 (the learned sites' mean), got decimate "
                                f"{opts['decimate']!r}")
    shape = tuple(theory.shape)
    if len(shape) < 2:
        raise _err("decimate", f"needs a lattice of dimension >= 2, got shape {list(shape)}")
    _check_checkerboard(shape, opts)
    # σ of the grid bound: the Hartree field's local width (1 for a theory without a Gaussian vacuum)
    scale = (math.sqrt(float(np.mean(1.0 / theory.gaussian_vacuum(False).kernel)))
             if hasattr(theory, "gaussian_vacuum") else 1.0)
    last = SiteConditional(shape, 1, theory.site_potential, theory.neighbour_field, field_scale=scale)
    if levels == 2:  # A1o from its exact conditional too; the couplings alternate A1e | A2 and A2 | A1e
        if len(shape) != 2 or any(s % 4 for s in shape) or opts["conditioner"] != "cnn":
            raise _err("decimate", f"2 needs a 2D lattice with extents divisible by 4 and the cnn conditioner, got "
                                   f"shape {list(shape)} and {opts['conditioner']!r}")
        first = ([CosetFourierScaling.from_action(theory, 1), CosetGaussianShift.from_action(theory)]
                 if _bool(opts, "fourier") else [])
        mag = _bool(opts, "magnetization")
        if _bool(opts, "colours"):  # one colour of A2, then of A1e, …: every site once per 8 layers
            if any(s % 8 for s in shape):
                raise _err("colours", f"needs a 2D lattice with extents divisible by 8, got shape {list(shape)}")
            couplings = [ColourSplineCoupling(shape, (i + 1) % 2, (i // 2) % 4, **kw) for i in range(opts["n_layers"])]
        else:
            couplings = [CosetSplineCoupling(shape, 0, 1, target_class=0, magnetization=mag, **kw) if i % 2 == 0
                         else CosetSplineCoupling(shape, 1, 0, source_class=0, magnetization=mag, **kw)
                         for i in range(opts["n_layers"])]
        if zero_mode:  # the magnetization of the learned sites: identity at the start, learned
            masks = two_level_masks(shape)
            couplings.append(ZeroModeSpline(shape, n_bins=ZERO_MODE_BINS, bound_in=ZERO_MODE_BOUND,
                                            mask=masks["A2"] | masks["A1e"]))
        level2 = MarginalSiteConditional(shape, theory.site_potential, theory.neighbour_field,
                                         SiteMarginal(last, theory.site_potential), field_scale=scale)
        return Flow(StandardNormal(theory.field_shape), first + couplings + [level2, last])
    first = [SublatticeFourierScaling.from_action(theory)] if _bool(opts, "fourier") else []
    couplings = [SublatticeSplineCoupling(shape, i % 2, **kw) for i in range(opts["n_layers"])]
    return Flow(StandardNormal(theory.field_shape), first + couplings + [last])


def _decimate_levels(opts: Mapping[str, Any]) -> int:
    """``decimate``: false (0), true (1: the odd sites) or 2 (also A1o, `two_level`)."""
    value = opts["decimate"]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1, 2):
        return value
    raise _err("decimate", f"must be true, false or 2, got {value!r}")


def build_spline(opts: dict[str, Any], theory) -> Flow:
    """Rational-quadratic spline couplings (`SplineCoupling`), Z2-mirrored by default; ``decimate``: on the
    even sublattice, the odd sites from their exact conditional."""
    n_bins, bound, z2 = _check_spline(opts)
    if z2:
        _odd_activation(opts, "a Z2-equivariant spline")
    kw = _conditioner_kwargs(opts)
    levels = _decimate_levels(opts)
    if _bool(opts, "magnetization") and (levels != 2 or not z2):
        raise _err("magnetization", f"needs flow.decimate 2 and flow.z2 true (the coset couplings' Z2 conditioners), "
                                    f"got decimate {opts['decimate']!r}, z2 {z2!r}")
    if _bool(opts, "colours") and (levels != 2 or not z2 or _bool(opts, "magnetization")):
        raise _err("colours", f"needs flow.decimate 2, flow.z2 true and flow.magnetization false, got decimate "
                              f"{opts['decimate']!r}, z2 {z2!r}, magnetization {opts['magnetization']!r}")
    if levels:
        return _decimated_spline(theory, opts, levels, n_bins=n_bins, bound=bound, z2=z2, **kw)
    return _coupling_flow(theory, opts, lambda shape, i: [SplineCoupling(shape, i % 2, n_bins=n_bins, bound=bound,
                                                                         z2=z2, **kw)])


def build_z2affine(opts: dict[str, Any], theory) -> Flow:
    """Z2-equivariant affine couplings (`Z2AffineCoupling`: even log-scales, odd shifts)."""
    _odd_activation(opts, "z2affine")
    kw = _conditioner_kwargs(opts)
    return _coupling_flow(theory, opts, lambda shape, i: [Z2AffineCoupling(shape, i % 2, **kw)])


def build_realnvp(opts: dict[str, Any], theory) -> Flow:
    """Affine checkerboard couplings (`AffineCoupling`, RealNVP)."""
    kw = _conditioner_kwargs(opts)
    return _coupling_flow(theory, opts, lambda shape, i: [AffineCoupling(shape, i % 2, **kw)])


def build_z2nice(opts: dict[str, Any], theory) -> Flow:
    """Odd additive couplings (`AdditiveCoupling`, Z2Nice) and a final `GlobalScaling`."""
    _odd_activation(opts, "z2nice")
    scaling = _bool(opts, "scaling")
    kw = _conditioner_kwargs(opts)
    n = opts["n_layers"]

    def make(shape, i):
        layers = [AdditiveCoupling(shape, i % 2, odd=True, **kw)]
        if scaling and i == n - 1:
            layers.append(GlobalScaling(shape, per_site=opts["conditioner"] == "fc"))
        return layers

    return _coupling_flow(theory, opts, make)


def build_snf(opts: dict[str, Any], theory) -> Flow:
    """Self-normalizing linear layers, `OddPower` nonlinearities and Z2Nice couplings: an odd map, so
    q(−φ) = q(φ)."""
    shape = tuple(theory.shape)
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
    if opts["couplings"]:
        _check_checkerboard(shape, opts)
    if opts["layer"] == "conv" and len(shape) != 2:
        raise _err("layer", f"'conv' needs a 2D lattice, got shape {list(shape)}; use 'dense'")
    if opts["couplings"]:
        _odd_activation(opts, "Z2Nice couplings")
    lin = dict(gradient=opts["gradient"], inverted=opts["direction"] == "inverse")
    kw = _conditioner_kwargs(opts)
    layers: list = []
    for i in range(opts["n_layers"]):
        if opts["layer"] == "dense":
            layers.append(SelfNormDense(shape, refresh=opts["refresh"], **lin))
        else:
            layers.append(SelfNormConv(shape, kernel_size=opts["kernel_size"], block=opts["block"], **lin))
        if opts["nonlinearity"] and i < opts["n_layers"] - 1:
            layers.append(OddPower())
        layers += [AdditiveCoupling(shape, j % 2, odd=True, **kw) for j in range(opts["couplings"])]
    return Flow(StandardNormal(theory.field_shape), layers)


# -- 2D U(1) gauge fields -----------------------------------------------------------------------------

U1_TRANSFORMS = ("spline", "ncp")


def build_u1(opts: dict[str, Any], theory) -> Flow:
    """Gauge-equivariant couplings on plaquettes: circular splines or NCP mixtures (the coupling
    constructors check the lattice), optionally after a `PlaquetteMarginal` layer."""
    shape = tuple(theory.shape)
    if opts["conditioner"] != "cnn":
        raise _err("conditioner", f"must be 'cnn' for U(1) (gauge-invariant features on the lattice), got "
                                  f"{opts['conditioner']!r}")
    transform = opts["transform"]
    if transform not in U1_TRANSFORMS:
        raise _err("transform", f"must be one of {', '.join(U1_TRANSFORMS)}, got {transform!r}")
    loops, marginal = _bool(opts, "loops"), _bool(opts, "marginal")
    common = dict(hidden=opts["hidden"], kernel_size=opts["kernel_size"], activation=opts["activation"],
                  dilation=opts["dilation"], loops=loops)
    if transform == "spline":
        n_bins = _check_spline(opts)[0]
        layers = [CircularSplineCoupling(shape, i, n_bins=n_bins, **common) for i in range(opts["n_layers"])]
    else:
        k = opts["n_components"]
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise _err("n_components", f"must be a positive integer, got {k!r}")
        layers = [NCPCoupling(shape, i, n_components=k, **common) for i in range(opts["n_layers"])]
    if marginal:
        layers = [PlaquetteMarginal.from_action(theory), *layers]
    return Flow(UniformAngles(theory.field_shape), layers)


# -- the table ----------------------------------------------------------------------------------------

SCALAR_THEORIES = ("phi4", "gmm")  # real scalar fields: a lattice φ⁴ theory and the Gaussian-mixture toys
#: 2D U(1) link angles: pure gauge, and the Schwinger model (its determinant is in the target; the plaquette
#: marginal of pure U(1) at the same β is only a start there)
GAUGE_THEORIES = ("u1", "schwinger")
_HIDDEN = Depends(lambda conditioner, theory: [16, 16] if conditioner == "cnn" else [256, 256])
_CONDITIONER = Depends(lambda conditioner, theory: conditioner)
_PHYSICS_START = Depends(lambda conditioner, theory: theory is None or hasattr(theory, "quadratic_kernel"))


def _coupling_defaults(*, fourier: Any = False, vacua: Any = False, **extra: Any) -> dict[str, Any]:
    return {"n_layers": 8, "conditioner": _CONDITIONER, "hidden": _HIDDEN, "kernel_size": 3, "activation": "tanh",
            "dilation": 1, "fourier": fourier, "zero_mode": False, "vacua": vacua, **extra}


def _u1_defaults(spline: bool) -> dict[str, Any]:
    return {"n_layers": 16, "conditioner": "cnn", "hidden": [8, 8], "kernel_size": 3, "activation": "tanh",
            "n_components": 2, "transform": "spline" if spline else "ncp", "n_bins": 8, "loops": spline,
            "dilation": 1, "marginal": spline}


FAMILIES: dict[str, FlowFamily] = {f.name: f for f in (
    FlowFamily("spline", build_spline, _coupling_defaults(fourier=_PHYSICS_START, vacua="auto", n_bins=8, bound=4.0,
                                                          z2=True, decimate=False, magnetization=False, colours=False),
               SCALAR_THEORIES, default=True, summary="Gaussian start + Z2-mirrored rational-quadratic splines"),
    FlowFamily("z2affine", build_z2affine, _coupling_defaults(fourier=_PHYSICS_START, vacua="auto"),
               SCALAR_THEORIES, summary="Gaussian start + Z2-equivariant affine couplings"),
    FlowFamily("realnvp", build_realnvp, _coupling_defaults(), SCALAR_THEORIES,
               summary="affine checkerboard couplings (RealNVP)"),
    FlowFamily("z2nice", build_z2nice, _coupling_defaults(scaling=True), SCALAR_THEORIES,
               summary="odd additive couplings + global scaling (Nicoli et al. 2020)"),
    FlowFamily("snf", build_snf, {"layer": "dense", "n_layers": 2, "nonlinearity": True, "couplings": 0,
                                  "gradient": "self_normalized", "direction": "inverse", "block": 1, "refresh": 25,
                                  "conditioner": _CONDITIONER, "hidden": _HIDDEN, "kernel_size": 3,
                                  "activation": "tanh"},
               SCALAR_THEORIES, summary="self-normalizing linear layers (Keller et al. 2021)"),
    FlowFamily("u1", build_u1, _u1_defaults(True), GAUGE_THEORIES, default=True,
               summary="plaquette marginal + gauge-equivariant circular splines"),
    FlowFamily("u1_ncp", build_u1, _u1_defaults(False), GAUGE_THEORIES,
               summary="gauge-equivariant NCP mixtures (Kanwar et al. 2020)"),
)}
FLOW_FAMILIES = tuple(FAMILIES)


def families_for(theory: str | None) -> tuple[str, ...]:
    """The families that apply to the theory named ``theory``."""
    return tuple(name for name, f in FAMILIES.items() if theory in f.theories)


def default_family(theory: str | None) -> str | None:
    """The default family of the theory named ``theory`` (None if no family applies)."""
    return next((name for name, f in FAMILIES.items() if f.default and theory in f.theories), None)


def flow_defaults(family: str, conditioner: str = "cnn") -> dict[str, Any]:
    """The documented defaults of one family (with the given conditioner).

    Example:
        >>> flow_defaults("realnvp", "fc")["hidden"]
        [256, 256]
    """
    if family not in FAMILIES:
        raise _err("family", f"must be one of {', '.join(FLOW_FAMILIES)}, got {family!r}")
    return FAMILIES[family].options(conditioner)
