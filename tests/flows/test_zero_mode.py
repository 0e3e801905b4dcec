"""ZeroModeSpline: y = x + (g(M) − M)·1 with M the lattice average and g an odd RQ spline; with a mask, the mean
over a set S of sites and the shift on S only (the two-level flow's A2 ∪ A1e), and the two-level couplings'
magnetization input channel (flow.magnetization).

Checked against dense autograd Jacobians (log-det, both score hooks), for the round trip, Z2 and
translation equivariance, and for its initialisation against the mean-field magnetization density.
The composed flow (Fourier + zero mode + spline couplings) runs through the generic family tests as
``spline-zm-cnn`` (tests/flows/helpers.py).
"""
import math

import numpy as np
import pytest
import torch

from actions import Phi4
from latticeflow.flows import FlowError, build_flow
from latticeflow.flows.zero_mode import ZeroModeSpline

from .helpers import dense_jacobian, maxabs

F64 = torch.float64
BROKEN = dict(kappa=0.3, lam=0.022)  # the paper's broken phase


def random_layer(shape=(4, 4), seed=0, scale=0.1, broken=True):
    action = Phi4(shape, **(BROKEN if broken else dict(kappa=0.2, lam=0.0)))
    layer = ZeroModeSpline.from_action(action, n_bins=8, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64))
    return layer


def fields(shape=(4, 4), n=4, seed=1, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, *shape, generator=g, dtype=F64)
    x[-1] += 3.0  # one field with M in the slope-1 tail
    return x


@pytest.mark.parametrize("shape", [(4, 4), (6, 4), (3, 4, 2)])
def test_round_trip_and_log_det_against_autograd(shape):
    layer = random_layer(shape)
    x = fields(shape)
    y, ld = layer(x)
    x_back, ld_inv = layer.inverse(y)
    assert maxabs(x_back - x) < 1e-12 and maxabs(ld + ld_inv) < 1e-12
    assert maxabs(y - x) > 1e-2  # not the identity
    for i in range(x.shape[0]):
        jac = dense_jacobian(lambda v: layer(v)[0], x[i:i + 1])
        assert abs(torch.linalg.slogdet(jac)[1].item() - ld[i].item()) < 1e-10


def test_only_the_zero_mode_moves():
    layer = random_layer()
    x = fields()
    y, _ = layer(x)
    fluct = lambda t: t - t.flatten(1).mean(1).reshape(-1, 1, 1)  # noqa: E731
    assert maxabs(fluct(y) - fluct(x)) < 1e-13


def test_score_hooks_against_autograd():
    layer = random_layer(seed=3)
    x = fields(seed=4)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    y, ld, g_new = layer.forward_with_score(x, g)
    x2, ld_inv, r_new = layer.inverse_with_score(y.detach(), g)
    assert maxabs(x2 - x) < 1e-12 and not g_new.requires_grad and not r_new.requires_grad
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_()
        (grad_ld,) = torch.autograd.grad(layer(xi)[1].sum(), xi)
        jac = dense_jacobian(lambda v: layer(v)[0], x[i:i + 1])
        ref = torch.linalg.solve(jac.T, g[i].flatten() - grad_ld.flatten())
        assert maxabs(g_new[i].flatten() - ref) < 1e-10 * max(1.0, maxabs(ref))
        ref_r = jac.T @ g[i].flatten() + grad_ld.flatten()
        assert maxabs(r_new[i].flatten() - ref_r) < 1e-10 * max(1.0, maxabs(ref_r))


def test_odd_and_translation_equivariant():
    layer = random_layer(seed=6)
    x = fields(seed=7)
    y, ld = layer(x)
    y_neg, ld_neg = layer(-x)
    assert maxabs(y_neg + y) < 1e-12 and maxabs(ld_neg - ld) < 1e-12
    for dims, shifts in (((1,), (1,)), ((2,), (3,)), ((1, 2), (2, 1))):
        rolled = torch.roll(x, shifts, dims)
        assert maxabs(layer(rolled)[0] - torch.roll(y, shifts, dims)) < 1e-12


def test_initialisation_pushes_the_zero_mode_into_the_two_vacua():
    """16×8, κ = 0.3, λ = 0.022: N(0, 1/V) zero modes are mapped onto the mean-field density (two peaks at
    ±v, v² = −(1 − 2λ − 4κ)/(2λ)); compared by quantiles, and the mass left between the vacua is < 3 %."""
    shape = (16, 8)
    action = Phi4(shape, **BROKEN)
    layer = ZeroModeSpline.from_action(action, dtype=F64)
    volume = 128
    u = torch.randn(200_000, generator=torch.Generator().manual_seed(8), dtype=F64) / math.sqrt(volume)
    with torch.no_grad():
        gm = layer._g(u, False)[0].numpy()
    vacuum = math.sqrt(-(1 - 2 * 0.022 - 4 * 0.3) / (2 * 0.022))
    assert abs(action.mean_field_magnetization() - vacuum) < 1e-12
    m = np.linspace(-2 * vacuum, 2 * vacuum, 20001)
    dens = action.mean_field_magnetization_density(m)
    cdf = np.cumsum(dens) / dens.sum()
    for prob in (0.05, 0.25, 0.4, 0.6, 0.75, 0.95):
        exact = np.interp(prob, cdf, m)
        assert abs(np.quantile(gm, prob) - exact) < 0.03, prob
    assert np.mean(np.abs(gm) < 0.8 * vacuum) < 0.03


def test_identity_in_the_symmetric_phase_and_bad_input():
    layer = ZeroModeSpline.from_action(Phi4((8, 8), kappa=0.2, lam=0.0), dtype=F64)
    x = fields((8, 8), scale=0.1)
    y, ld = layer(x)
    assert maxabs(y - x) < 1e-12 and maxabs(ld) < 1e-12
    with pytest.raises(FlowError, match="n_bins"):
        ZeroModeSpline((4, 4), n_bins=3)
    with pytest.raises(FlowError, match="bounds"):
        ZeroModeSpline((4, 4), bound_in=-1.0)
    with pytest.raises(FlowError, match="flow.zero_mode"):
        build_flow({"family": "spline", "zero_mode": "yes"}, Phi4((4, 4), **BROKEN))


def test_build_puts_the_layer_after_the_fourier_layer():
    flow = build_flow({"family": "spline", "zero_mode": True, "n_layers": 2}, Phi4((16, 8), **BROKEN))
    kinds = [type(layer).__name__ for layer in flow.layers]
    assert kinds[:2] == ["FourierScaling", "ZeroModeSpline"]
    with torch.no_grad():
        x, _ = flow.sample(4096)
    mag = x.flatten(1).mean(1).abs()
    assert float((mag > 1.5).float().mean()) > 0.95  # the fields start in a vacuum, not at M ≈ 0


# -- the masked layer (decimate 2: the mean of the learned sites A2 ∪ A1e) ---------------------------------------

def masked_layer(shape=(8, 8), seed=0, scale=0.3):
    from latticeflow.flows.two_level import two_level_masks
    masks = two_level_masks(shape)
    layer = ZeroModeSpline(shape, n_bins=8, bound_in=1.6, mask=masks["A2"] | masks["A1e"], dtype=F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64))
    return layer, masks["A2"] | masks["A1e"]


def test_masked_round_trip_log_det_and_scores_against_autograd():
    layer, mask = masked_layer()
    x = fields((8, 8), seed=11)
    y, ld = layer(x)
    x_back, ld_inv = layer.inverse(y)
    assert maxabs(x_back - x) < 1e-12 and maxabs(ld + ld_inv) < 1e-12
    assert maxabs(y - x) > 1e-2 and maxabs(ld) > 1e-2  # not the identity
    assert maxabs((y - x)[:, ~mask]) == 0.0  # the other sites pass through
    shift = (y - x)[:, mask]
    assert maxabs(shift - shift[:, :1]) < 1e-13  # one shift for every site of S
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(12), dtype=F64)
    _, ld2, g_new = layer.forward_with_score(x, g)
    _, _, r_new = layer.inverse_with_score(y.detach(), g)
    assert maxabs(ld2 - ld) < 1e-14
    for i in range(x.shape[0]):
        jac = dense_jacobian(lambda v: layer(v)[0], x[i:i + 1])
        assert abs(torch.linalg.slogdet(jac)[1].item() - ld[i].item()) < 1e-10
        xi = x[i:i + 1].clone().requires_grad_()
        (grad_ld,) = torch.autograd.grad(layer(xi)[1].sum(), xi)
        ref = torch.linalg.solve(jac.T, g[i].flatten() - grad_ld.flatten())
        assert maxabs(g_new[i].flatten() - ref) < 1e-10 * max(1.0, maxabs(ref))
        ref_r = jac.T @ g[i].flatten() + grad_ld.flatten()
        assert maxabs(r_new[i].flatten() - ref_r) < 1e-10 * max(1.0, maxabs(ref_r))


def test_masked_layer_is_odd_and_equivariant_under_the_two_level_shifts():
    layer, _ = masked_layer(seed=2)
    x = fields((8, 8), seed=13)
    y, ld = layer(x)
    y_neg, ld_neg = layer(-x)
    assert maxabs(y_neg + y) < 1e-12 and maxabs(ld_neg - ld) < 1e-12
    for shifts in ((4, 0), (0, 4), (2, 2)):
        rolled, rolled_ld = layer(torch.roll(x, shifts, (1, 2)))
        assert maxabs(rolled - torch.roll(y, shifts, (1, 2))) < 1e-12 and maxabs(rolled_ld - ld) < 1e-12


def test_masked_layer_bad_mask_and_state_dict():
    with pytest.raises(FlowError, match="mask must be a non-empty bool tensor of shape"):
        ZeroModeSpline((4, 4), mask=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(FlowError, match="mask must be"):
        ZeroModeSpline((4, 4), mask=torch.zeros(4, 4, dtype=torch.bool))
    layer, _ = masked_layer()
    assert "mask" not in layer.state_dict()  # from the architecture: the weights carry over between sizes
    bigger, _ = masked_layer((16, 16))
    bigger.load_state_dict(layer.state_dict())


def test_decimate2_zero_mode_builds_after_the_couplings_as_the_identity():
    theory = Phi4((16, 16), kappa=0.331, lam=0.5)
    flow = build_flow({"family": "spline", "vacua": False, "decimate": 2, "zero_mode": True, "n_layers": 2}, theory)
    kinds = [type(layer).__name__ for layer in flow.layers]
    assert kinds[-3:] == ["ZeroModeSpline", "MarginalSiteConditional", "SiteConditional"]
    layer = flow.layers[-3].double()
    x = fields((16, 16), seed=14)
    y, ld = layer(x)
    assert maxabs(y - x) < 1e-12 and maxabs(ld) < 1e-12
    with pytest.raises(FlowError, match="flow.zero_mode with decimation needs flow.decimate 2"):
        build_flow({"family": "spline", "vacua": False, "decimate": True, "zero_mode": True}, theory)


def test_magnetization_input_keeps_z2_and_reaches_the_conditioners():
    """flow.magnetization (decimate 2): a second, constant conditioner channel M = mean of the visible source
    sites. Z2 equivariance holds in float64; with the first channel's weights zeroed the map still follows a
    uniform shift of the source sites (through M alone), and a hidden source site (A1o) changes nothing."""
    theory = Phi4((8, 8), kappa=0.331, lam=0.5)
    flow = build_flow({"family": "spline", "vacua": False, "decimate": 2, "magnetization": True, "n_layers": 2,
                       "hidden": [4, 4]}, theory).double()
    gen = torch.Generator().manual_seed(15)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    layer = flow.layers[2]
    assert layer.magnetization and layer.net.net.trunk[0].in_channels == 2
    z = torch.randn(3, 8, 8, generator=gen, dtype=F64)
    y, ld = layer(z)
    y_neg, ld_neg = layer(-z)
    assert maxabs(y + y_neg) < 1e-12 and maxabs(ld - ld_neg) < 1e-12
    # the M channel alone: with the first-channel weights zeroed, the map still depends on the source sites
    with torch.no_grad():
        layer.net.net.trunk[0].weight[:, 0].zero_()
    z2 = z.clone()
    z2[:, 1::2, 1::2] += 0.5  # the source coset A2, uniformly
    assert maxabs(layer(z2)[0][:, 0::2, 0::2] - layer(z)[0][:, 0::2, 0::2]) > 1e-6
    # A2 given A1e (source_class 0): the hidden A1o sites (2i, 2j), i + j odd, enter neither channel
    second = flow.layers[3]
    assert second.magnetization and second.n_visible == 8
    z3 = z.clone()
    z3[:, 0, 2] += 1.0  # (0, 2): i + j = 1, an A1o site
    assert maxabs(second(z3)[0][:, 1::2, 1::2] - second(z)[0][:, 1::2, 1::2]) < 1e-14
    z3[:, 0, 0] += 1.0  # (0, 0): an A1e site, visible
    assert maxabs(second(z3)[0][:, 1::2, 1::2] - second(z)[0][:, 1::2, 1::2]) > 1e-6
    for bad, match in (({"decimate": True}, "flow.magnetization needs flow.decimate 2 and flow.z2 true"),
                       ({"decimate": 2, "z2": False}, "got decimate 2, z2 False"),
                       ({"decimate": 2, "magnetization": "yes"}, "flow.magnetization must be true or false")):
        with pytest.raises(FlowError, match=match) as err:
            build_flow({"family": "spline", "vacua": False, "magnetization": True, **bad}, theory)
        assert "\n" not in str(err.value)
