"""The plaquette-marginal layer of 2D U(1): the link solve, the von Mises initialisation, its quality at
step 0 against the character-expansion prediction, and what it does to Q. (Invertibility, log-det,
score hooks, gauge invariance and the float32 lane run in the shared family tests as ``u1_marginal``.)"""
import math

import numpy as np
import pytest
import torch

from actions import U1Gauge, exact
from latticeflow.analysis import reverse_ess
from latticeflow.flows import Flow, UniformAngles, build_flow
from latticeflow.flows.u1_plaquette import PlaquetteMarginal, _CircleSpline, link_update

F64 = torch.float64


@pytest.mark.parametrize("shape", [(4, 4), (8, 4), (6, 10)])
def test_link_update_realises_any_plaquette_change_of_zero_sum(shape):
    d = torch.randn(3, *shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    d = d - d.mean((1, 2), keepdim=True)
    assert float((U1Gauge.plaquettes(link_update(d)) - d).abs().max()) < 1e-13


@pytest.mark.parametrize("beta", [1.0, 6.0, 10.0])
def test_marginal_spline_starts_at_the_von_mises_quantile_map(beta):
    """KL(h_# U ‖ e^{β cos P}/(2π I₀(β))) per plaquette < 1e-4 (stratified quadrature), and h⁻¹∘h = id."""
    torch.set_default_dtype(F64)
    try:
        spline = _CircleSpline(beta, 32)
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
