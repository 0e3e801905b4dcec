"""Decimated φ⁴ flows (`latticeflow.flows.decimation`, `SiteConditional`): the flow models the even sublattice and
every odd site is drawn from its conditional density given its neighbours.

The layer families (round trip, log-det against autograd, both score hooks, estimators, Z2 and translation
equivariance) run on the config ``spline-decimated-cnn`` in tests/flows/helpers.py and tests/gradients/helpers.py.
Here: the physics of the conditional, the exact free field at step 0, the support, the float32 lane, config errors.
"""
from __future__ import annotations

import math

import pytest
import torch

from actions import GaussianMixture, Phi4
from latticeflow.flows import FlowError, FourierScaling, build_flow
from latticeflow.flows.decimation import SublatticeFourierScaling, sublattice_class_mask
from latticeflow.flows.site_conditional import SiteConditional, grid_bound

F64 = torch.float64
CRITICAL = Phi4((8, 8), kappa=0.331, lam=0.5)


def _layer(theory=CRITICAL, dtype=F64) -> SiteConditional:
    return SiteConditional(theory.shape, 1, theory.site_potential, theory.neighbour_field).to(dtype)


def _exact_moments(theory, b: float) -> tuple[float, float, float]:
    """⟨φ⟩, ⟨φ²⟩ and log Z of e^{−U(φ) + bφ} by a fine trapezoid rule (spectrally accurate here)."""
    phi = torch.linspace(-6, 6, 200001, dtype=F64)
    w = torch.exp(-theory.site_potential(phi) + b * phi)
    dz = float(phi[1] - phi[0])
    z = float(w.sum()) * dz
    return float((phi * w).sum()) * dz / z, float((phi * phi * w).sum()) * dz / z, math.log(z)


@pytest.mark.parametrize("b", [0.0, 1.3, -3.7])
def test_site_conditional_samples_the_conditional_of_phi4(b):
    """Draws at fixed b, reweighted by p/q, reproduce ⟨φ⟩ and ⟨φ²⟩ of p(φ|b) ∝ e^{−φ⁴/2 + bφ} within 4σ (seed 5,
    10⁵ draws), and Var log(p/q) (the grid error) is below 10⁻⁵ per site."""
    layer = _layer()
    n = 100_000
    z = torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=F64)
    phi, log_fprime, _ = layer._forward(z, torch.full((n,), b, dtype=F64))
    log_q = -0.5 * z * z - 0.5 * math.log(2 * math.pi) - log_fprime
    log_p = -CRITICAL.site_potential(phi) + b * phi
    log_w = log_p - log_q
    assert float(log_w.var()) < 1e-5
    w = torch.exp(log_w - log_w.max())
    w = w / w.sum()
    mean, second, log_z = _exact_moments(CRITICAL, b)
    for est, exact, obs in [((w * phi).sum(), mean, phi), ((w * phi * phi).sum(), second, phi * phi)]:
        sigma = float(obs.std()) / math.sqrt(n)
        assert abs(float(est) - exact) < 4 * sigma, (float(est), exact, sigma)
    # q is normalised: E_q[e^{log p̃ − log q}] = Z_p (the statistical error of the log is below 10⁻⁵ here)
    assert abs(float(torch.logsumexp(log_w, 0)) - math.log(n) - log_z) < 1e-4


def test_site_conditional_log_density_is_within_the_chord_bound():
    """q(φ|b) e^{U − bφ} Z_q varies by at most Δ² max U''/8 on the grid (chords of a concave log-density)."""
    layer = _layer()
    b = torch.tensor([0.7], dtype=F64)
    z = torch.linspace(-4, 4, 2001, dtype=F64)
    phi, log_fprime, _ = layer._forward(z, b.expand(z.numel()))
    log_q = -0.5 * z * z - 0.5 * math.log(2 * math.pi) - log_fprime
    log_z_q = layer._tables(b)[-1]
    err = log_q + log_z_q - (-CRITICAL.site_potential(phi) + b * phi)  # f_interp − f ≤ 0
    u2 = 12 * CRITICAL.lam * phi.abs().max() ** 2 + 2 * (1 - 2 * CRITICAL.lam)
    assert float(err.max()) < 1e-12 and float(-err.min()) <= layer.spacing**2 * float(u2) / 8 + 1e-12


def test_site_conditional_is_odd_and_leaves_the_even_sites():
    layer = _layer()
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    y, logdet = layer(x)
    y_neg, logdet_neg = layer(-x)
    assert torch.equal(y_neg, -y) and torch.allclose(logdet_neg, logdet, atol=1e-12)
    even = ~layer.mask
    assert torch.equal(y[:, even], x[:, even]) and (y[:, layer.mask] - x[:, layer.mask]).abs().max() > 0.1


def test_a_field_beyond_the_grid_has_zero_density():
    flow = build_flow({"family": "spline", "decimate": True, "vacua": False}, CRITICAL).double()
    phi, _ = flow.sample(2)
    phi = phi.detach().clone()
    phi[0, 0, 1] = 1.5 * _layer().bound  # an odd site
    with torch.no_grad():
        log_q = flow.log_prob(phi)
    assert log_q[0] == -math.inf and math.isfinite(float(log_q[1]))


def test_free_field_decimated_flow_is_exact_at_step_zero():
    """λ = 0: the even-sublattice Fourier start is the free field's even marginal, ½[1/A(p) + 1/A(p + π)], and the
    odd sites are Gaussian given their neighbours, so log w = −S − log q is log Z up to the grid error."""
    theory = Phi4((8, 6), kappa=0.2, lam=0.0)
    flow = build_flow({"family": "spline", "decimate": True}, theory).double()
    with torch.no_grad():
        phi, log_q = flow.sample(512, generator=torch.Generator().manual_seed(3))
        log_w = -theory.action(phi) - log_q
    assert float(log_w.var()) < 1e-4
    assert float(flow.layers[0].log_scale.detach().std()) > 0.05  # not the identity


def test_sublattice_fourier_scaling_keeps_the_even_sublattice():
    layer = SublatticeFourierScaling.from_action(CRITICAL, dtype=F64)
    even = sublattice_class_mask(CRITICAL.shape, 0) | sublattice_class_mask(CRITICAL.shape, 1)
    x = torch.randn(2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    y, logdet = layer(x)
    assert torch.equal(y[:, ~even], x[:, ~even])
    with torch.no_grad():  # the even-site kernel itself maps an even field to an even field (a(p) = a(p + π))
        moved = FourierScaling._multiply(layer, x.masked_fill(~even, 0.0), layer.log_scale, 1.0)
    assert float(moved[:, ~even].abs().max()) < 1e-12 and float(moved[:, even].abs().max()) > 0.1


def test_float32_decimated_flow_matches_float64():
    """The float32 lane: the same flow in float32 gives log q of a float64 sample within 1e-3 (|log q| ~ 100)."""
    torch.manual_seed(0)
    flow64 = build_flow({"family": "spline", "decimate": True, "vacua": False}, CRITICAL).double()
    with torch.no_grad():
        for p in flow64.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flow32 = build_flow({"family": "spline", "decimate": True, "vacua": False}, CRITICAL).float()
    flow32.load_state_dict({k: v.float() for k, v in flow64.state_dict().items()})
    with torch.no_grad():
        phi, log_q = flow64.sample(8, generator=torch.Generator().manual_seed(4))
        log_q32 = flow32.log_prob(phi.float())
        z = flow64.base.sample((8,), generator=torch.Generator().manual_seed(5))
        (x64, ld64), (x32, ld32) = flow64(z), flow32(z.float())
    assert log_q32.dtype == x32.dtype == torch.float32
    assert float((log_q32.double() - log_q).abs().max()) < 1e-3
    assert float((x32.double() - x64).abs().max()) < 1e-4 and float((ld32.double() - ld64).abs().max()) < 1e-3


def test_site_conditional_stays_finite_at_huge_neighbour_fields():
    """b of a few thousand (a diverging training step) keeps φ in the grid and every gradient finite, in float32."""
    layer = _layer(dtype=torch.float32)
    b = torch.tensor([1700.0, -3000.0, 50.0, 0.0], requires_grad=True)
    z = torch.tensor([0.3, -0.2, 2.0, -1.0], requires_grad=True)
    phi, log_fprime, dlog = layer._forward(z, b)
    grads = torch.autograd.grad(phi.sum() + log_fprime.sum(), [z, b])
    assert all(bool(torch.isfinite(t).all()) for t in (phi, log_fprime, dlog, *grads))
    assert float(phi[0].detach()) > 3.9 and float(phi[1].detach()) < -3.9  # the grid's edge: the conditional is all there


def test_grid_bound_follows_the_potential():
    """R = 4 on the critical line; a nearly free field needs a wider grid; a potential unbounded below has none."""
    assert grid_bound(CRITICAL.site_potential, CRITICAL.neighbour_field, CRITICAL.shape, 1.0) == 4.0
    free = Phi4((4, 4), kappa=0.2, lam=0.0)
    assert grid_bound(free.site_potential, free.neighbour_field, free.shape, 0.8) > 8
    with pytest.raises(ValueError, match="no grid bound"):
        grid_bound(lambda phi: -phi * phi, free.neighbour_field, free.shape, 1.0)


@pytest.mark.parametrize("cfg,theory,match", [
    ({"vacua": True}, CRITICAL, "flow.decimate starts from the symmetric Gaussian"),
    ({"zero_mode": True}, CRITICAL, "flow.zero_mode with decimation needs flow.decimate 2"),
    ({}, Phi4((8,), kappa=0.3, lam=0.5), "dimension >= 2"),
    ({}, Phi4((6, 5), kappa=0.3, lam=0.5), "even lattice extents"),
    ({"decimate": "yes"}, CRITICAL, "flow.decimate must be true, false or 2"),
])
def test_decimate_config_errors_are_one_line(cfg, theory, match):
    with pytest.raises(FlowError, match=match) as err:
        build_flow({"family": "spline", "decimate": True, **cfg}, theory)
    assert "\n" not in str(err.value)


def test_decimate_needs_a_theory_with_a_site_potential():
    gmm = GaussianMixture(dim=4)
    with pytest.raises(FlowError, match="flow.decimate needs a theory with a site potential"):
        build_flow({"family": "spline", "decimate": True, "vacua": False}, gmm)


@pytest.mark.parametrize("shape,compact", [((12, 12), True), ((12, 12), False), ((4, 2, 6), False)])
def test_sublattice_coupling_conditions_on_the_other_class_only(shape, compact):
    """∂y_x/∂x_y = 0 unless y = x or y is an even site of the other class; the odd sites pass unchanged. Compact
    (12 × 12, two 3 × 3 convolutions on the 6 × 6 half lattice): every site reads exactly the 5 × 5 half-lattice
    stencil around it, its four diagonal neighbours among them, so outputs land on the right sites."""
    from latticeflow.flows.decimation import SublatticeSplineCoupling
    torch.manual_seed(0)
    layer = SublatticeSplineCoupling(shape, 1, compact=compact, n_bins=4, bound=2.5, hidden=[4]).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(1, *shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    jac = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, *shape))[0].flatten(), x.flatten())
    own = sublattice_class_mask(shape, 1).flatten()
    other = sublattice_class_mask(shape, 0).flatten()
    off = jac - torch.diag(torch.diagonal(jac))
    assert float(off[own][:, ~other].abs().max()) == 0.0  # nothing from odd sites or its own class
    assert float(off[own][:, other].abs().max()) > 1e-3   # but it does read the other class
    assert torch.equal(jac[~own], torch.eye(len(own), dtype=F64)[~own])  # every other site passes unchanged
    if compact:
        n = shape[0] // 2
        for i, j in [(0, 0), (2, 3), (5, 5)]:  # site (2i + 1, 2j + 1) reads (2(i + a), 2(j + c)), |a|, |c| ≤ 2
            row = off[(2 * i + 1) * shape[1] + 2 * j + 1].view(shape)
            reads = {(int(u), int(v)) for u, v in torch.nonzero(row.abs() > 0)}
            stencil = {(2 * ((i + a) % n), 2 * ((j + c) % n)) for a in range(-2, 3) for c in range(-2, 3)}
            assert reads == stencil
            assert {((2 * i + 1 + a) % shape[0], (2 * j + 1 + c) % shape[1]) for a in (-1, 1) for c in (-1, 1)} <= reads


def test_compact_coupling_needs_a_2d_cnn():
    from latticeflow.flows.decimation import SublatticeSplineCoupling
    with pytest.raises(FlowError, match="compact sublattice coupling needs a 2D lattice and a cnn"):
        SublatticeSplineCoupling((4, 4), 0, compact=True, conditioner="fc", hidden=[4])
