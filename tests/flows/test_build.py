"""`build_flow`: the families it builds, and bad configs failing at build time with one clear line."""
import pytest
import torch

from actions import Phi4, ProductMixture, U1Gauge
from latticeflow.flows import (AdditiveCoupling, AffineCoupling, DomainError, FlowError, GlobalScaling, NCPCoupling,
                               StandardNormal, UniformAngles, build_flow)

PHI4 = Phi4((4, 4), kappa=0.3, lam=0.02)
U1 = U1Gauge((4, 4), beta=1.0)


@pytest.mark.parametrize("conditioner", ["cnn", "fc"])
def test_build_flow_makes_the_requested_phi4_layers(conditioner):
    nvp = build_flow({"family": "realnvp", "conditioner": conditioner, "n_layers": 3}, PHI4)
    assert isinstance(nvp.base, StandardNormal) and len(nvp.layers) == 3
    assert all(isinstance(layer, AffineCoupling) for layer in nvp.layers)
    nice = build_flow({"family": "z2nice", "conditioner": conditioner, "n_layers": 2}, PHI4)
    assert [type(layer) for layer in nice.layers] == [AdditiveCoupling, AdditiveCoupling, GlobalScaling]
    # consecutive couplings update the two checkerboard parities
    assert bool((nice.layers[0].mask ^ nice.layers[1].mask).all())
    # Z2Nice conditioners are bias-free (odd)
    assert not any(name.endswith("bias") for name, _ in nice.named_parameters())


def test_build_flow_makes_u1_ncp_layers_covering_every_link_once_per_eight_layers():
    flow = build_flow({"family": "u1_ncp", "n_layers": 8}, U1)
    assert isinstance(flow.base, UniformAngles) and all(isinstance(lay, NCPCoupling) for lay in flow.layers)
    cover = sum(layer.mask.to(torch.int64) for layer in flow.layers)
    assert bool((cover == 1).all())


@pytest.mark.parametrize("family", ["realnvp", "z2nice", "spline", "z2affine", "u1_ncp", "u1"])
def test_fresh_flow_is_the_identity(family):
    """Zero-initialised last conditioner layers: T = id, logdet = 0 at construction (without the Fourier layer,
    which starts from the action's free part instead, and the plaquette-marginal layer, which starts at the
    von Mises quantile map; see tests/flows/test_fourier.py and test_u1_plaquette.py)."""
    action = U1 if family.startswith("u1") else PHI4
    extra = {"fourier": False} if family in ("spline", "z2affine") else {"marginal": False} if family == "u1" else {}
    flow = build_flow({"family": family, "n_layers": 2, **extra}, action).double()
    z = flow.base.sample((3,), generator=torch.Generator().manual_seed(0))
    x, logdet = flow(z)
    assert float((x - z).detach().abs().max()) < 1e-12
    assert float(logdet.detach().abs().max()) < 1e-12


BAD = {
    "odd-extent-checkerboard": ({"family": "z2nice"}, Phi4((7, 8), kappa=0.3, lam=0.02), "even"),
    "odd-extent-realnvp": ({"family": "realnvp"}, Phi4((8, 7), kappa=0.3, lam=0.02), "even"),
    "unknown-family": ({"family": "glow"}, PHI4, "realnvp"),
    "family-not-a-name": ({"family": ["spline"]}, PHI4, "flow.family must be one of"),
    "unknown-key": ({"family": "realnvp", "n_layer": 4}, PHI4, "did you mean 'flow.n_layers'"),
    "z2nice-relu": ({"family": "z2nice", "activation": "relu"}, PHI4, "odd"),
    "realnvp-on-u1": ({"family": "realnvp"}, U1, "u1"),
    "u1_ncp-on-phi4": ({"family": "u1_ncp"}, PHI4, "phi4"),
    "key-of-other-family": ({"family": "u1_ncp", "scaling": True}, U1, "scaling"),
    "bad-conditioner": ({"family": "realnvp", "conditioner": "transformer"}, PHI4, "conditioner"),
    "even-kernel": ({"family": "realnvp", "kernel_size": 4}, PHI4, "kernel_size"),
    "zero-layers": ({"family": "z2nice", "n_layers": 0}, PHI4, "n_layers"),
    "one-bin": ({"family": "spline", "n_bins": 1}, PHI4, "flow.n_bins must be an integer >= 2, got 1"),
    "u1-one-bin": ({"family": "u1", "n_bins": 1}, U1, "flow.n_bins"),
    "zero-bound": ({"family": "spline", "bound": 0}, PHI4, "flow.bound must be a number > 0, got 0"),
    "negative-bound": ({"family": "spline", "bound": -2.0}, PHI4, "-2.0"),
    "unknown-transform": ({"family": "u1", "transform": "glow"}, U1, "flow.transform must be one of spline, ncp, got 'glow'"),
    "spline-relu": ({"family": "spline", "activation": "relu"}, PHI4, "odd"),
    "bad-dilation": ({"family": "spline", "dilation": 0}, PHI4, "flow.dilation"),
    "dilation-list-length": ({"family": "u1", "dilation": [1, 2]}, U1, "flow.dilation"),
    "fourier-not-bool": ({"family": "spline", "fourier": "yes"}, PHI4, "flow.fourier"),
    "loops-on-phi4": ({"family": "spline", "loops": True}, PHI4, "loops"),
    "vacua-not-bool": ({"family": "spline", "vacua": "yes"}, PHI4, "flow.vacua must be auto, true or false, got 'yes'"),
    "vacua-zero": ({"family": "spline", "vacua": 0}, PHI4, "flow.vacua must be auto, true or false, got 0"),
    "vacua-symmetric": ({"family": "spline", "vacua": True}, Phi4((4, 4), kappa=0.2, lam=0.5), "no broken-phase"),
    "vacua-and-zero-mode": ({"family": "spline", "vacua": True, "zero_mode": True}, PHI4, "flow.vacua"),
    "marginal-not-bool": ({"family": "u1", "marginal": 1}, U1, "flow.marginal must be true or false, got 1"),
    "scaling-on-realnvp": ({"family": "realnvp", "scaling": True}, PHI4, "'flow.scaling' for family 'realnvp'"),
    "u1-fc-conditioner": ({"family": "u1", "conditioner": "fc"}, U1, "flow.conditioner must be 'cnn' for U(1)"),
    "odd-extent-3d": ({"family": "spline"}, Phi4((4, 4, 3), kappa=0.1, lam=0.02), "even lattice extents"),
    "odd-extent-1d": ({"family": "z2affine", "conditioner": "fc"}, Phi4((7,), kappa=0.1, lam=0.02), "[7]"),
    "cnn-in-4d": ({"family": "realnvp", "conditioner": "cnn"}, Phi4((2, 2, 2, 4), kappa=0.1, lam=0.02),
                  "'cnn' needs a 1D, 2D or 3D lattice (torch has no Conv4d), got shape [2, 2, 2, 4]; use 'fc'"),
    "snf-conv-in-3d": ({"family": "snf", "layer": "conv"}, Phi4((4, 4, 4), kappa=0.1, lam=0.02), "2D lattice"),
    "snf-couplings-cnn-in-4d": ({"family": "snf", "couplings": 1, "conditioner": "cnn"}, Phi4((2, 2, 2, 4), kappa=0.1, lam=0.02), "Conv4d"),
    "vacua-on-gmm": ({"family": "spline", "vacua": True, "fourier": False}, ProductMixture(dim=6), "Gaussian vacua"),
    "fourier-on-gmm": ({"family": "spline", "fourier": True, "vacua": False}, ProductMixture(dim=6), "flow.fourier needs a theory"),
    "u1-on-gmm": ({"family": "u1"}, ProductMixture(dim=6), "'u1' does not fit theory 'gmm'"),
    "theory-without-families": ({}, type("Other", (), {"theory": "other", "shape": (4,)})(), "no flow family"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_flow_config_fails_at_build_time_with_one_clear_line(case):
    config, action, needle = BAD[case]
    with pytest.raises(FlowError) as info:
        build_flow(config, action)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in msg and msg.strip() == msg and len(msg) < 300
    assert needle in msg, msg


@pytest.mark.parametrize("family", ["z2nice", "u1_ncp"])
def test_flow_rejects_fields_of_the_wrong_shape_or_non_finite_values(family):
    action = U1 if family == "u1_ncp" else PHI4
    flow = build_flow({"family": family, "n_layers": 2}, action).double()
    good = flow.base.sample((2,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(FlowError, match="does not match"):
        flow.log_prob(good[..., :2])
    with pytest.raises(FlowError, match="does not match"):
        flow(good[..., :2])
    bad = good.clone()
    bad[0].view(-1)[3] = float("nan")
    with pytest.raises(DomainError):
        flow.log_prob(bad)
    with pytest.raises(DomainError):
        flow.inverse_with_score(bad, torch.zeros_like(bad))


def test_default_flow_in_4d_takes_the_fc_conditioner():
    """torch has no Conv4d: without a conditioner key, d >= 4 lattices get fully connected conditioners."""
    flow = build_flow({}, Phi4((2, 2, 2, 4), kappa=0.1, lam=0.02))
    assert not any(isinstance(m, torch.nn.Conv3d) for m in flow.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in flow.modules())
