"""The table of flow families (`latticeflow.flows.families`) and φ⁴ flows in d = 1, 2, 3, 4.

Every entry builds, with its defaults, on the default test lattice of each theory it names and gives exact
densities there; each theory has exactly one default family (what an empty ``flow:`` builds); keys that are
not a family's own are refused in one line naming the key and the family's keys; the public namespace
exports every layer class defined in latticeflow/flows/. The default φ⁴ flow builds in 3D (periodic Conv3d
conditioners) and, at λ = 0, samples the free field exactly at step 0 (log w = ln Z for every sample).
"""
import importlib
import pkgutil

import pytest
import torch

from actions import Phi4, ProductMixture, Schwinger, U1Gauge
from actions.exact import free_field_log_z
import latticeflow.flows as flows
from latticeflow.flows import (FAMILIES, FLOW_FAMILIES, Bijection, FlowError, FourierScaling, SplineCoupling,
                               build_flow, default_family, flow_defaults)
from latticeflow.flows.conditioners import PeriodicConv1d, PeriodicConv3d

from .helpers import F64, maxabs

DEFAULT_LATTICE = {
    "phi4": lambda: Phi4((4, 4), kappa=0.3, lam=0.02),
    "u1": lambda: U1Gauge((4, 4), beta=1.0),
    "schwinger": lambda: Schwinger((4, 4), beta=1.0, kappa=0.2),
    "gmm": lambda: ProductMixture(dim=6),
}
CASES = [(family, theory) for family, entry in FAMILIES.items() for theory in entry.theories]
ALL_KEYS = frozenset().union(*(entry.keys for entry in FAMILIES.values()))


def _exact_densities(flow, n=3, seed=0):
    x, log_q = flow.sample(n, generator=torch.Generator().manual_seed(seed))
    assert torch.isfinite(x).all() and torch.isfinite(log_q).all()
    assert maxabs(flow.log_prob(x.detach()) - log_q) < 1e-10 * max(1.0, maxabs(log_q))
    return x, log_q


def test_every_theory_of_the_table_has_a_test_lattice_and_exactly_one_default_family():
    theories = {theory for entry in FAMILIES.values() for theory in entry.theories}
    assert theories == set(DEFAULT_LATTICE)
    for theory in theories:
        assert sum(entry.default and theory in entry.theories for entry in FAMILIES.values()) == 1
    assert (default_family("phi4"), default_family("u1")) == ("spline", "u1")
    assert FLOW_FAMILIES == tuple(FAMILIES)


@pytest.mark.parametrize("family,theory", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_every_family_builds_on_its_theories_default_lattice(family, theory):
    action = DEFAULT_LATTICE[theory]()
    flow = build_flow({"family": family}, action).double()
    x, _ = _exact_densities(flow)
    assert x.shape[1:] == tuple(action.field_shape)


@pytest.mark.parametrize("theory", list(DEFAULT_LATTICE))
def test_an_empty_config_builds_the_default_family(theory):
    action = DEFAULT_LATTICE[theory]()
    kinds = lambda flow: [type(layer) for layer in flow.layers]  # noqa: E731
    assert kinds(build_flow({}, action)) == kinds(build_flow({"family": default_family(theory)}, action))


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_keys_that_are_not_the_familys_own_are_refused_in_one_line(family):
    entry = FAMILIES[family]
    action = DEFAULT_LATTICE[entry.theories[0]]()
    foreign = sorted(ALL_KEYS - entry.keys)
    assert foreign  # every family lacks some key of another
    for key in ["not_a_key", *foreign]:
        with pytest.raises(FlowError) as info:
            build_flow({"family": family, key: 1}, action)
        msg = str(info.value)
        assert "\n" not in msg and f"'flow.{key}' for family '{family}'" in msg, msg
        assert msg.endswith("its keys: " + ", ".join(sorted(entry.keys))), msg
    # every own key is accepted, at its default value
    build_flow({"family": family, **entry.options("cnn", action)}, action)


def test_flow_defaults_are_the_documented_values_and_fresh_copies():
    for family, entry in FAMILIES.items():
        assert set(flow_defaults(family)) | {"family"} == entry.keys
    assert flow_defaults("spline") == {"n_layers": 8, "conditioner": "cnn", "hidden": [16, 16], "kernel_size": 3,
                                       "activation": "tanh", "dilation": 1, "fourier": True, "zero_mode": False,
                                       "vacua": "auto", "n_bins": 8, "bound": 4.0, "z2": True, "decimate": False,
                                       "magnetization": False, "colours": False}
    assert flow_defaults("realnvp", "fc")["hidden"] == [256, 256]
    assert flow_defaults("z2nice")["scaling"] is True and flow_defaults("realnvp")["fourier"] is False
    assert (flow_defaults("u1")["transform"], flow_defaults("u1_ncp")["transform"]) == ("spline", "ncp")
    flow_defaults("u1")["hidden"].append(99)
    assert flow_defaults("u1")["hidden"] == [8, 8]
    # theory-dependent: no Fourier start on a target without a quadratic kernel
    assert FAMILIES["spline"].options("fc", ProductMixture(dim=6))["fourier"] is False


def test_the_public_namespace_exports_every_layer_class_of_latticeflow_flows():
    defined = set()
    for info in pkgutil.iter_modules(flows.__path__):
        module = importlib.import_module(f"latticeflow.flows.{info.name}")
        defined |= {name for name, obj in vars(module).items()
                    if isinstance(obj, type) and issubclass(obj, Bijection) and obj.__module__ == module.__name__
                    and not name.startswith("_")}
    assert {"Bijection", "Coupling", "SplineCoupling", "Z2AffineCoupling", "FourierScaling", "ZeroModeSpline",
            "CircularSplineCoupling", "NCPCoupling", "SelfNormDense", "PlaquetteMarginal"} <= defined
    assert defined - set(flows.__all__) == set()
    assert all(hasattr(flows, name) for name in flows.__all__)


# ---------------------------------------------------------------------------------------------------
# φ⁴ in d = 1, 2, 3, 4
# ---------------------------------------------------------------------------------------------------

PHI4_FAMILIES = ["spline", "z2affine", "realnvp", "z2nice"]
D_CASES = [(family, conditioner, shape) for family in PHI4_FAMILIES
           for conditioner, shape in [("cnn", (8,)), ("fc", (8,)), ("cnn", (4, 2, 6)), ("fc", (4, 2, 6)),
                                      ("fc", (2, 2, 2, 4))]]


@pytest.mark.parametrize("family,conditioner,shape", D_CASES, ids=[f"{f}-{c}-{len(s)}d" for f, c, s in D_CASES])
def test_phi4_families_build_in_d_dimensions_with_exact_densities(family, conditioner, shape):
    action = Phi4(shape, kappa=0.6 / len(shape), lam=0.02)  # broken Gaussian start in every d
    flow = build_flow({"family": family, "conditioner": conditioner, "n_layers": 2, "hidden": [4]}, action).double()
    _exact_densities(flow)
    convs = [m for m in flow.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert (len(convs) > 0) == (conditioner == "cnn")
    assert all(conv.weight.dim() == len(shape) + 2 for conv in convs)  # Conv1d / Conv3d by the lattice dimension


@pytest.mark.parametrize("shape", [(16,), (4, 4, 4), (2, 2, 2, 4)], ids=["1d", "3d", "4d"])
def test_snf_dense_builds_in_d_dimensions(shape):
    flow = build_flow({"family": "snf", "layer": "dense", "direction": "forward"}, Phi4(shape, kappa=0.1, lam=0.02))
    _exact_densities(flow.double())


@pytest.mark.parametrize("config,shape,kappa", [({}, (4, 4, 4), 0.1), ({"family": "spline"}, (6, 6, 6), 0.15)],
                         ids=["default-4x4x4", "spline-6x6x6"])
def test_default_phi4_flow_in_3d_samples_the_free_field_exactly_at_step_0(config, shape, kappa):
    """λ = 0: the Fourier start is the free field, the couplings start at the identity, so every sample has
    log w = −S − log q = ln Z (exact, `actions.exact`), reverse ESS = 1. Built in float64 (a float32 build
    rounds the Fourier log-scales at 1e-7)."""
    action = Phi4(shape, kappa=kappa, lam=0.0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        flow = build_flow(config, action)
    finally:
        torch.set_default_dtype(previous)
    assert isinstance(flow.layers[0], FourierScaling)
    assert all(isinstance(layer, SplineCoupling) for layer in flow.layers[1:]) and len(flow.layers) == 9
    assert any(isinstance(m, PeriodicConv3d) for m in flow.modules())
    x, log_q = flow.sample(16, generator=torch.Generator().manual_seed(1))
    log_w = (-action.action(x) - log_q).detach()
    log_z = free_field_log_z(shape, kappa)
    assert maxabs(log_w - log_z) < 1e-9 * abs(log_z)


def test_periodic_conv1d_is_translation_equivariant_and_wraps_around():
    torch.manual_seed(0)
    conv = PeriodicConv1d(1, 2, 3).double()
    x = torch.randn(2, 1, 7, dtype=F64)
    assert maxabs(conv(torch.roll(x, 3, -1)) - torch.roll(conv(x), 3, -1)) < 1e-14
    direct = sum(conv.weight[:, 0, k].view(1, 2, 1) * torch.roll(x, 1 - k, -1) for k in range(3)) + conv.bias.view(1, 2, 1)
    assert maxabs(conv(x) - direct) < 1e-14
