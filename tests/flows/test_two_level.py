"""Two-level decimation (`latticeflow.flows.two_level`, ``flow.decimate: 2``).

The layer families (round trip, log-det against autograd, both score hooks, estimators, Z2 and translation
equivariance under (4, 0), (0, 4), (2, 2), float32) run on the config ``spline-decimated2-cnn`` of
tests/flows/helpers.py and tests/gradients/helpers.py. Here: the structure the method rests on, the physics of
the A1o conditional, the Gaussian start, and config errors.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actions import Phi4
from latticeflow.flows import FlowError, build_flow
from latticeflow.flows.site_conditional import SiteConditional
from latticeflow.flows.site_marginal import SiteMarginal
from latticeflow.flows.two_level import (ColourSplineCoupling, CosetFourierScaling, CosetGaussianShift,
                                         MarginalSiteConditional, colour_mask, two_level_masks)
from latticeflow import gradients

F64 = torch.float64
CRITICAL = Phi4((8, 8), kappa=0.331, lam=0.5)


def _layers(theory=CRITICAL) -> tuple[MarginalSiteConditional, SiteMarginal]:
    last = SiteConditional(theory.shape, 1, theory.site_potential, theory.neighbour_field)
    marginal = SiteMarginal(last, theory.site_potential)
    return MarginalSiteConditional(theory.shape, theory.site_potential, theory.neighbour_field, marginal).to(F64), marginal


def test_sets_partition_the_lattice_and_every_odd_site_has_one_a1o_neighbour():
    """The A1o sites are independent given A2 ∪ A1e only because every odd site neighbours exactly one of them."""
    m = two_level_masks((8, 12))
    total = sum(m[k].int() for k in ("A2", "A1e", "A1o", "odd"))
    assert torch.equal(total, torch.ones(8, 12, dtype=torch.int))
    a1o = m["A1o"].double()
    count = sum(torch.roll(a1o, s, a) for a in (0, 1) for s in (1, -1))
    assert torch.equal(count[m["odd"]], torch.ones(int(m["odd"].sum()), dtype=F64))
    assert float(count[~m["odd"]].abs().sum()) == 0.0  # no even site neighbours an A1o site


def _full_colour(shape, coset: int, colour: int) -> torch.Tensor:
    full = torch.zeros(shape, dtype=torch.bool)
    full[coset::2, coset::2] = colour_mask(tuple(s // 2 for s in shape), coset, colour)
    return full


def test_every_a1o_factor_holds_one_site_of_every_colour():
    """With the odd sites and A1o integrated out, the learned sites interact only through H_a (a ∈ A1o), the
    integral over φ_a of e^{−U(φ_a)} Π_k e^{F(b_k)}: it holds the other neighbours of a's four odd neighbours. Each
    H_a holds one site of each colour of A2 and of A1e, so the sites of one colour are independent given the rest."""
    shape = (16, 24)
    m = two_level_masks(shape)
    colours = [_full_colour(shape, coset, c) for coset in (0, 1) for c in range(4)]
    assert torch.equal(sum(c.int() for c in colours), (m["A2"] | m["A1e"]).int())  # a partition of the learned sites
    moves = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    for a in torch.nonzero(m["A1o"]).tolist():
        factor = torch.zeros(shape, dtype=torch.bool)
        for d0, d1 in moves:
            o = ((a[0] + d0) % shape[0], (a[1] + d1) % shape[1])
            for e0, e1 in moves:
                factor[(o[0] + e0) % shape[0], (o[1] + e1) % shape[1]] = True
        factor[a[0], a[1]] = False
        assert torch.equal(factor, factor & (m["A2"] | m["A1e"]))
        assert [int((factor & c).sum()) for c in colours] == [1] * 8


def test_colour_coupling_sees_every_other_learned_site_and_nothing_else():
    """The Jacobian of a colour coupling: its target sites depend on themselves and on learned sites of other
    colours only, never on A1o or the odd sites (drawn after it); translation by (4, 4) commutes with it."""
    shape = (8, 16)
    m = two_level_masks(shape)
    torch.manual_seed(0)
    for coset, colour in [(1, 2), (0, 3)]:
        layer = ColourSplineCoupling(shape, coset, colour, n_bins=4, bound=2.5, hidden=[8]).to(F64)
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(1, *shape, dtype=F64)
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, *shape))[0].flatten(), x.flatten())
        target = layer.mask.flatten()
        seen = jac[target].abs().sum(0).view(shape) > 0
        assert not (seen & (m["A1o"] | m["odd"])).any()
        own = torch.diag(jac)[target]
        assert bool((own > 0).all())  # monotone in its own site
        block = jac[target][:, target]
        assert float((block - torch.diag(torch.diag(block))).abs().max()) == 0.0  # not on the other targets
        assert bool((seen & ~layer.mask & (m["A2"] | m["A1e"])).any())  # it does see the other learned sites
        y = layer(x)[0]
        y_s = layer(torch.roll(x, (4, 4), (1, 2)))[0]
        assert float((y_s - torch.roll(y, (4, 4), (1, 2))).abs().max()) < 1e-12


def _exact_log_density(theory, c: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """log of e^{−U(φ)} Π_k ∫ ds e^{−U(s) + (2κφ + c_k) s}, by a fine trapezoid rule (unnormalised)."""
    s = torch.linspace(-7, 7, 8001, dtype=F64)
    ds = float(s[1] - s[0])
    b = (2 * theory.kappa * phi.unsqueeze(-1) + c.unsqueeze(-2)).flatten()  # (n_phi · 4,)
    log_z = torch.cat([torch.logsumexp(-theory.site_potential(s) + part.unsqueeze(-1) * s, -1)
                       for part in b.split(2000)]) + math.log(ds)
    return -theory.site_potential(phi) + log_z.view(-1, 4).sum(-1)


@pytest.mark.parametrize("c", [[0.0, 0.0, 0.0, 0.0], [1.1, -0.4, 2.3, 0.7], [-2.5, -1.9, -3.0, -0.8]])
def test_a1o_conditional_is_the_exact_marginal_conditional(c):
    """log q of the layer at fixed c_k is the exact conditional with the odd sites integrated out, up to the grid
    error (|Δ log q| < 0.02 where the density is above 10⁻⁶ of its peak), and draws reweighted by p/q give its ⟨φ⟩,
    ⟨φ²⟩ within 4σ (seed 3, 10⁵ draws)."""
    layer, _ = _layers()
    c = torch.tensor(c, dtype=F64)
    n = 100_000
    z = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=F64)
    phi, log_fprime, _ = layer._forward(z, c.expand(n, 4))
    log_q = -0.5 * z * z - 0.5 * math.log(2 * math.pi) - log_fprime
    grid = torch.linspace(-4, 4, 8001, dtype=F64)
    g = _exact_log_density(CRITICAL, c, grid)
    log_norm = float(torch.logsumexp(g, 0)) + math.log(float(grid[1] - grid[0]))
    # the exact log-density at the draws: linear in φ between the 8001 nodes (an error below 10⁻⁵)
    log_p = torch.as_tensor(np.interp(phi.numpy(), grid.numpy(), g.numpy()), dtype=F64) - log_norm
    assert float((log_p - log_q).abs().max()) < 0.02
    log_w = log_p - log_q
    w = torch.exp(log_w - log_w.max())
    w = w / w.sum()
    p = torch.exp(g - log_norm) * float(grid[1] - grid[0])
    for power in (1, 2):
        exact = float((p * grid**power).sum())
        est = float((w * phi**power).sum())
        sigma = float((phi**power).std()) / math.sqrt(n)
        assert abs(est - exact) < 4 * sigma, (power, est, exact, sigma)


def test_a1o_conditional_reads_the_four_odd_neighbours():
    """c_k = b of the k-th odd neighbour without the A1o site, whatever the odd sites and the A1o site hold."""
    layer, _ = _layers()
    x = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(4), dtype=F64)
    params = layer.conditioner_params(layer._frozen(x))
    m = two_level_masks((8, 8))
    even = torch.where(m["odd"] | m["A1o"], torch.zeros_like(x), x)
    b = CRITICAL.neighbour_field(even)
    sites = torch.nonzero(m["A1o"])
    for n, (i, j) in enumerate(sites.tolist()):
        expected = sorted(float(b[0, (i + di) % 8, (j + dj) % 8]) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)))
        assert sorted(params[0, n].tolist()) == pytest.approx(expected, abs=1e-12)


def test_coset_fourier_start_is_the_a2_marginal_of_the_gaussian():
    """On N(0, 1) noise the layer gives A2 the covariance of the Hartree Gaussian restricted to A2 (free field:
    exact), and leaves the other sites."""
    theory = Phi4((8, 8), kappa=0.2, lam=0.0)
    layer = CosetFourierScaling.from_action(theory, 1, dtype=F64)
    a2 = two_level_masks((8, 8))["A2"].flatten()
    eye = torch.eye(64, dtype=F64).reshape(64, 8, 8)
    cols = layer(eye)[0].reshape(64, 64).T  # the layer's matrix M, columns M e_i
    m = cols[a2][:, a2]
    kernel = torch.as_tensor(theory.quadratic_kernel(), dtype=F64)
    cov_full = torch.fft.ifftn(1.0 / kernel).real  # C(r) of the free field
    idx = torch.nonzero(a2).flatten()
    r0, r1 = idx // 8, idx % 8
    cov = cov_full[(r0[:, None] - r0[None]) % 8, (r1[:, None] - r1[None]) % 8]
    assert torch.allclose(m @ m.T, cov, atol=1e-12)
    assert torch.equal(cols[~a2][:, ~a2], torch.eye(int((~a2).sum()), dtype=F64))


def test_gaussian_shift_makes_the_free_field_nearly_exact_at_step_zero():
    """Free field, 12 × 12, κ = 0.2 (seed 2, 1024 samples): with A1e coupled to A2 as the Gaussian does, Var log w of
    the untrained flow is below 0.01 (measured 0.001); with A1e drawn independently (the shift zeroed) it is above 1
    (measured 5.7)."""
    theory = Phi4((12, 12), kappa=0.2, lam=0.0)
    flow = build_flow({"family": "spline", "vacua": False, "decimate": 2, "n_layers": 2, "hidden": [4]}, theory).double()
    shift = next(layer for layer in flow.layers if isinstance(layer, CosetGaussianShift))
    var = float(gradients.log_weights(flow, theory, 1024, generator=torch.Generator().manual_seed(2)).log_weight.var())
    with torch.no_grad():
        shift.weight.zero_()
        shift.log_sigma.zero_()
    var_off = float(gradients.log_weights(flow, theory, 1024, generator=torch.Generator().manual_seed(2)).log_weight.var())
    assert var < 0.01 and var_off > 1.0, (var, var_off)


def test_training_integrates_out_only_the_odd_sites():
    flow = build_flow({"family": "spline", "vacua": False, "decimate": 2, "n_layers": 2, "hidden": [4]}, CRITICAL)
    trained, target = flow.marginal(CRITICAL)
    assert isinstance(target, SiteMarginal) and isinstance(trained.layers[-1], MarginalSiteConditional)
    assert len(trained.layers) == len(flow.layers) - 1


@pytest.mark.parametrize("opts,shape,match", [
    ({"decimate": 3}, (8, 8), "flow.decimate must be true, false or 2, got 3"),
    ({"decimate": 2}, (6, 6), "flow.decimate 2 needs a 2D lattice with extents divisible by 4"),
    ({"decimate": 2, "conditioner": "fc", "hidden": [8]}, (8, 8), "cnn conditioner"),
    ({"decimate": 2, "colours": True}, (12, 12), "flow.colours needs a 2D lattice with extents divisible by 8"),
    ({"decimate": True, "colours": True}, (8, 8), "flow.colours needs flow.decimate 2"),
    ({"decimate": 2, "colours": True, "magnetization": True}, (8, 8), "magnetization false"),
])
def test_bad_two_level_configs_name_the_key(opts, shape, match):
    theory = Phi4(shape, kappa=0.3, lam=0.5)
    with pytest.raises(FlowError, match=match):
        build_flow({"family": "spline", "vacua": False, **opts}, theory)


def test_window_sum_is_the_sum_of_f_at_the_grid_nodes_with_its_gradient():
    """`WindowSum` (one shared cell fraction per (site, k)) gives Σ_k F(2κφ_g + c_k) of `SiteMarginal.log_z` at
    every grid node to 10⁻⁷ and the same gradient in c (float64); gradcheck holds inside the table and where c is
    clamped and continued linearly."""
    layer, marginal = _layers()
    c = (1.5 * torch.randn(40, 4, dtype=F64, generator=torch.Generator().manual_seed(5))).requires_grad_()
    reference = marginal.log_z(layer.two_kappa * layer.grid.to(F64).unsqueeze(-1) + c.unsqueeze(-2)).sum(-1)
    value = layer.window(c)
    assert value.shape == (40, layer.n_grid)
    assert float((value - reference).detach().abs().max()) < 1e-7
    g = torch.randn_like(value)
    (expected,) = torch.autograd.grad((reference * g).sum(), c)
    (got,) = torch.autograd.grad((value * g).sum(), c)
    assert float((got - expected).abs().max()) < 1e-5 * float(expected.abs().max())
    assert torch.autograd.gradcheck(layer.window, (c[:3].detach().requires_grad_(),))
    far = torch.tensor([[300.0, -300.0, 0.3, 2.0]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(layer.window, (far,))


def test_window_sum_with_a_negative_kappa_and_nan():
    """κ < 0 walks F's table downwards (the windows flipped): still Σ_k F(2κφ_g + c_k) to 10⁻⁷; a NaN in c gives
    NaN in its row, not an index error (the trainer skips non-finite steps)."""
    theory = Phi4((8, 8), kappa=-0.3, lam=0.5)
    layer, marginal = _layers(theory)
    assert layer.window.flip
    c = 1.5 * torch.randn(20, 4, dtype=F64, generator=torch.Generator().manual_seed(6))
    reference = marginal.log_z(layer.two_kappa * layer.grid.to(F64).unsqueeze(-1) + c.unsqueeze(-2)).sum(-1)
    assert float((layer.window(c) - reference).abs().max()) < 1e-7
    c[3, 1] = float("nan")
    value = layer.window(c)
    assert bool(value[3].isnan().all()) and bool(value[torch.arange(20) != 3].isfinite().all())
