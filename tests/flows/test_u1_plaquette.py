"""The plaquette-marginal layer of 2D U(1): the link solve, the von Mises initialisation (asked of the theory,
`U1Gauge.plaquette_marginal_log_density`), its quality at step 0 against the character-expansion prediction,
and what it does to Q. (Invertibility, log-det, score hooks, gauge invariance and the float32 lane run in the
shared family tests as ``u1_marginal``.)"""
import math

import numpy as np
import pytest
import torch

from actions import U1Gauge, exact
from latticeflow.analysis import reverse_ess
from latticeflow.flows import Flow, UniformAngles, build_flow
from latticeflow.flows.u1_plaquette import (MARGINAL_MIN_BIN, MARGINAL_MIN_DERIVATIVE, PlaquetteMarginal,
                                           _CircleSpline, _inv_softplus, link_update, marginal_spline_init)

F64 = torch.float64


@pytest.mark.parametrize("shape", [(4, 4), (8, 4), (6, 10)])
def test_link_update_realises_any_plaquette_change_of_zero_sum(shape):
    d = torch.randn(3, *shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    d = d - d.mean((1, 2), keepdim=True)
    assert float((U1Gauge.plaquettes(link_update(d)) - d).abs().max()) < 1e-13


@pytest.mark.parametrize("beta", [0.5, 2.0, 6.0, 800.0])
def test_theory_gives_the_normalised_single_plaquette_density(beta):
    """U1Gauge.plaquette_marginal_log_density = β cos P − log(2π I₀(β)): ∫ρ = 1 (trapezoid on 2·10⁵ points,
    exponentially accurate for a periodic integrand) and ρ(P)/ρ(0) = e^{β(cos P − 1)}; finite at β = 800."""
    u1 = U1Gauge((6, 6), beta=beta)
    p = torch.linspace(-math.pi, math.pi, 200001, dtype=F64)
    log_rho = u1.plaquette_marginal_log_density(p)
    assert bool(torch.isfinite(log_rho).all())
    assert abs(float(torch.trapezoid(torch.exp(log_rho), p)) - 1) < 1e-12
    assert float((log_rho - log_rho[100000] - beta * (torch.cos(p) - 1)).abs().max()) < 1e-9 * max(1.0, beta)
    if beta < 50:
        assert abs(float(log_rho[100000]) - (beta - math.log(2 * math.pi * float(np.i0(beta))))) < 1e-13


def _marginal_init_before_the_theory_method(beta, n_bins):
    """The layer's initialisation as it was computed inside u1_plaquette from action.beta (the reference)."""
    grid = np.linspace(-math.pi, math.pi, 64 * n_bins * 64 + 1)
    dens = np.exp(beta * (np.cos(grid) - 1.0))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    norm = cdf[-1]
    knots = np.linspace(-math.pi, math.pi, n_bins + 1)
    mass = np.diff(np.interp(knots, grid, cdf / norm))
    frac = np.maximum((mass - MARGINAL_MIN_BIN) / (1 - n_bins * MARGINAL_MIN_BIN), 1e-30)
    slope = 2 * math.pi * np.exp(beta * (np.cos(knots[:-1]) - 1.0)) / norm
    shift = math.log(math.expm1(1.0 - MARGINAL_MIN_DERIVATIVE))
    raw_d = _inv_softplus(np.maximum(slope - MARGINAL_MIN_DERIVATIVE, 1e-30)) - shift
    return np.zeros(n_bins), np.log(frac), raw_d


@pytest.mark.parametrize("beta", [0.5, 2.0, 4.0, 6.0, 10.0, 20.0])
def test_marginal_layer_init_from_the_theory_equals_the_former_one(beta):
    """Same raw spline parameters as when the layer computed e^{β(cos P − 1)} itself: bit for bit in float32
    (the default dtype of runs), to round-off in float64 (log-heights of near-floor bins, mass − MIN_BIN ~ 1e-7,
    amplify the 1e-16 relative change of the normalisation to < 1e-6)."""
    u1 = U1Gauge((8, 8), beta=beta)
    layer = PlaquetteMarginal.from_action(u1, n_bins=32)
    old = np.stack(_marginal_init_before_the_theory_method(beta, 32))
    new = np.stack(marginal_spline_init(u1.plaquette_marginal_log_density, 32))
    assert np.array_equal(layer.bulk.raw.detach().numpy(), old.astype(np.float32))
    assert np.array_equal(layer.last.raw.detach().numpy(), old.astype(np.float32))
    assert np.abs(new - old).max() < 1e-6
    assert np.abs(new[2] - old[2]).max() < 1e-12


def test_marginal_layer_asks_the_theory_for_the_density():
    """The layer starts from whatever density the theory returns, not from action.beta."""

    class Shifted(U1Gauge):
        def plaquette_marginal_log_density(self, p):
            return U1Gauge(self.shape, beta=3.0).plaquette_marginal_log_density(p)

    asked = PlaquetteMarginal.from_action(Shifted((4, 4), beta=1.0))
    want = PlaquetteMarginal.from_action(U1Gauge((4, 4), beta=3.0))
    other = PlaquetteMarginal.from_action(U1Gauge((4, 4), beta=1.0))
    assert torch.equal(asked.bulk.raw, want.bulk.raw) and not torch.equal(asked.bulk.raw, other.bulk.raw)


@pytest.mark.parametrize("beta", [1.0, 6.0, 10.0])
def test_marginal_spline_starts_at_the_von_mises_quantile_map(beta):
    """KL(h_# U ‖ e^{β cos P}/(2π I₀(β))) per plaquette < 1e-4 (stratified quadrature), and h⁻¹∘h = id."""
    torch.set_default_dtype(F64)
    try:
        spline = _CircleSpline(U1Gauge((8, 8), beta=beta).plaquette_marginal_log_density, 32)
    finally:
        torch.set_default_dtype(torch.float32)
    n = 20000
    u = -math.pi + 2 * math.pi * (torch.arange(n, dtype=F64) + 0.5) / n
    with torch.no_grad():
        y, log_h = spline(u)
        back, log_h_back = spline.inverse(y)
    log_z = math.log(2 * math.pi) + beta + math.log(float(np.i0(beta) * np.exp(-beta)))
    kl = float((-math.log(2 * math.pi) - log_h - (beta * torch.cos(y) - log_z)).mean())
    assert abs(kl) < 1e-4, kl
    assert float((back - u).abs().max()) < 1e-12
    assert float((log_h_back - log_h).abs().max()) < 1e-9


@pytest.mark.parametrize("beta, ess_min", [(2.0, 0.95), (6.0, 0.78)])
def test_untrained_marginal_layer_reaches_the_predicted_reverse_ess(beta, ess_min):
    """8×8: the predicted step-0 ESS is 0.98 (β = 2) and 0.84 (β = 6) (character expansion, n = 0 term; a
    numpy Monte Carlo of the ideal map); without step B it would be I₀(β)²/I₀(2β) = 0.46 / 0.24.
    4096 samples, seed 0: the ESS estimate's own error is ~0.02."""
    u1 = U1Gauge((8, 8), beta=beta)
    flow = Flow(UniformAngles(u1.field_shape), [PlaquetteMarginal.from_action(u1)]).double()
    with torch.no_grad():
        x, log_q = flow.sample(4096, generator=torch.Generator().manual_seed(0))
        ess = reverse_ess((-u1.action(x) - log_q).numpy())
    assert ess > ess_min, ess


def test_untrained_marginal_flow_samples_topology_and_reweights_to_the_exact_chi_t():
    """Q comes from the winding of the last plaquette: the untrained flow's reweighted χ_t at β = 4, 8×8,
    matches the exact torus value within 3σ (20000 samples, seed 2), and its raw χ_t is within 20 %."""
    u1 = U1Gauge((8, 8), beta=4.0)
    flow = build_flow({"family": "u1", "n_layers": 2}, u1).double()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        x, log_q = flow.sample(20000, generator=gen)
        lw = (-u1.action(x) - log_q).numpy()
    q2 = u1.topological_charge(x).numpy() ** 2 / 64
    w = np.exp(lw - lw.max())
    est = (w * q2).sum() / w.sum()
    n_eff = w.sum() ** 2 / (w * w).sum()
    err = q2.std() / math.sqrt(n_eff)
    chi_t = exact.u1_topological_susceptibility(4.0, 64)
    assert abs(est - chi_t) < 3 * err
    assert abs(q2.mean() / chi_t - 1) < 0.2
