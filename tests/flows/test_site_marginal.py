"""`SiteMarginal`: reverse-KL training of a decimated flow on the marginal of the even sites (the odd sites
integrated out exactly), wired in by `Flow.marginal` and `Trainer`.

- log Z̃(b) of the table against the layer's own normaliser and against an independent quadrature;
- the force against finite differences of the action (float64), inside and beyond the table;
- S_marg against the full action: log w of the whole flow minus log w of the marginal pair is the grid error
  of the odd sites, a near-constant (Var below 10⁻⁵ per odd site);
- the path gradient on the marginal is the Rao–Blackwellised full one: the full fast-path gradient averaged over
  the odd-site noise at fixed even sites reproduces it within 5σ (float64, seed 3);
- `Trainer` uses the marginal exactly when the flow ends in a `SiteConditional` of the trainer's theory.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from actions import Phi4
from latticeflow.flows import build_flow
from latticeflow.flows.site_conditional import SiteConditional
from latticeflow.flows.site_marginal import SiteMarginal
from latticeflow.gradients import reverse_kl
from latticeflow.training import Trainer

F64 = torch.float64
CRITICAL = Phi4((8, 8), kappa=0.331, lam=0.5)
SMALL = Phi4((4, 4), kappa=0.331, lam=0.5)


def _target(theory=CRITICAL) -> tuple[SiteConditional, SiteMarginal]:
    layer = SiteConditional(theory.shape, 1, theory.site_potential, theory.neighbour_field).to(F64)
    return layer, SiteMarginal(layer, theory.site_potential)


def test_table_is_log_z_of_the_layer_plus_its_mean_grid_error_and_nearly_the_exact_log_z():
    """F(b) = log Z̃(b) + E_q̃[I[U] − U | b]: against the layer's own log Z̃ plus that mean by an independent fine
    trapezoid rule (10⁻⁷ relative), and, since log Z − log Z̃ = log E_q̃[e^{I[U] − U}] = c + O(Var), against the exact
    log ∫_{−R}^{R} e^{−U + bφ} dφ (10⁻⁵ relative; log Z̃ alone is off by up to 10⁻²); beyond the nodes a tangent below it."""
    layer, target = _target()
    phi = torch.linspace(-layer.bound, layer.bound, 256 * (layer.n_grid - 1) + 1, dtype=F64)
    nodes = layer.grid.double()
    chord = torch.from_numpy(np.interp(phi.numpy(), nodes.numpy(), CRITICAL.site_potential(nodes).numpy()))
    eps = chord - CRITICAL.site_potential(phi)
    off = []
    for bv in (0.0, 0.77, -5.3, 11.0, 17.9, 60.0):
        b = torch.tensor([bv], dtype=F64)
        log_zt = float(layer._tables(b)[4])
        q = torch.exp(-chord + bv * phi - log_zt)
        mean_eps = float(torch.trapezoid(q * eps, phi))
        exact = math.log(float(torch.trapezoid(torch.exp(-CRITICAL.site_potential(phi) + bv * phi), phi)))
        f = float(target.log_z(b))
        if abs(bv) > target.b_max:  # the linear continuation: a tangent of the convex log Z, below it
            assert f <= exact
            continue
        assert abs(f - (log_zt + mean_eps)) < 1e-7 * max(1.0, abs(f)), (bv, f, log_zt + mean_eps)
        assert abs(f - exact) < 1e-5 * max(1.0, abs(exact)), (bv, f, exact)
        off.append(abs(log_zt - exact))
    assert max(off) > 1e-3  # the correction matters


def test_force_is_the_gradient_of_the_action():
    """Central differences of S_marg (float64, step 10⁻⁴, to 10⁻⁴ relative) against `force`, with a site pushed far out so that
    its odd neighbours read the table beyond ±b_max."""
    _, target = _target()
    x = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    x[1, 0, 0] = 80.0  # an even site: its four odd neighbours get b beyond the table
    assert float(target.neighbour_field(x).abs().max()) > target.b_max
    g = target.force(x)
    eps = 1e-4
    for site in [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 1, 0), (1, 3, 4)]:
        e = torch.zeros_like(x)
        e[site] = eps
        fd = (target.action(x + e) - target.action(x - e))[site[0]] / (2 * eps)
        assert abs(float(fd) - float(g[site])) < 1e-4 * max(1.0, abs(float(fd))), (site, float(fd), float(g[site]))


def test_marginal_log_weight_is_the_full_one_up_to_the_grid_error():
    """For the decimated flow at step 0 (float64, 8×8 at κ = 0.331, seed 2, 2000 samples), log w of the whole flow
    minus log w of (flow without its last layer, S_marg) has mean zero within 5σ and variance below 10⁻⁵ per odd site."""
    torch.manual_seed(0)
    flow = build_flow({"family": "spline", "vacua": False, "decimate": True}, CRITICAL).double()
    sub, target = flow.marginal(CRITICAL)
    assert isinstance(target, SiteMarginal) and len(sub.layers) == len(flow.layers) - 1
    z = flow.base.sample((2000,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x, logdet = flow(z)
        xm, logdet_m = sub(z)
        lw_full = -CRITICAL.action(x) - (flow.base.log_prob(z) - logdet)
        lw_marg = -target.action(xm) - (flow.base.log_prob(z) - logdet_m)
    diff = lw_full - lw_marg  # Σ_odd [ε − c(b)]: mean zero, variance the grid noise
    assert float(diff.var()) < 1e-5 * 32
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / math.sqrt(2000)
    assert float(lw_full.var()) > 100 * float(diff.var())  # the flow at step 0 is far from exact: a real check


def _grad(flow, action, z) -> torch.Tensor:
    flow.zero_grad()
    reverse_kl(flow, action, z, "fast_path").backward()
    return torch.cat([p.grad.flatten() for p in flow.parameters() if p.grad is not None])


def test_marginal_path_gradient_is_the_full_one_averaged_over_the_odd_sites():
    """4×4, float64, a trained-looking (randomised) flow: at 4 fixed even-site draws, the full fast-path
    gradient averaged over 16 × 256 odd-site noises equals the marginal gradient within 5σ of that average
    (σ from the 16 block means), in every parameter where σ is not negligible."""
    torch.manual_seed(4)
    flow = build_flow({"family": "spline", "vacua": False, "decimate": True}, SMALL).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sub, target = flow.marginal(SMALL)
    odd = flow.layers[-1].mask
    gen = torch.Generator().manual_seed(3)
    even_z = flow.base.sample((4,), generator=gen)
    marg = _grad(sub, target, even_z)
    blocks = []
    for _ in range(16):
        z = even_z.repeat(256, 1, 1)
        z = torch.where(odd, torch.randn(z.shape, generator=gen, dtype=F64), z)
        blocks.append(_grad(flow, SMALL, z))
    blocks = torch.stack(blocks)
    mean, se = blocks.mean(0), blocks.std(0) / math.sqrt(16)
    scale = marg.abs().max()
    assert float(scale) > 0
    bad = (mean - marg).abs() > 5 * se + 1e-4 * scale
    assert not bool(bad.any()), (mean - marg)[bad][:5]


def test_trainer_trains_on_the_marginal_only_for_its_own_theory():
    torch.manual_seed(0)
    flow = build_flow({"family": "spline", "vacua": False, "decimate": True}, SMALL)
    trainer = Trainer(flow, SMALL, batch_size=8, seed=0)
    sub, target = trainer._reverse_pair
    assert isinstance(target, SiteMarginal) and sub.layers[0] is flow.layers[0]
    before = [p.detach().clone() for p in flow.parameters()]
    assert math.isfinite(trainer.step()["loss"])
    assert any(not torch.equal(p, q) for p, q in zip(flow.parameters(), before))  # the shared parameters moved
    copied = copy.deepcopy(flow)  # a deep copy holds a copy of the theory: the same physics, so the marginal
    assert isinstance(Trainer(copied, SMALL, batch_size=8, seed=0)._reverse_pair[1], SiteMarginal)
    assert isinstance(Trainer(flow, Phi4((4, 4), kappa=0.331, lam=0.5), batch_size=8, seed=0)._reverse_pair[1],
                      SiteMarginal)
    other = Phi4((4, 4), kappa=0.3, lam=0.5)  # another theory: the layer's conditional is not its conditional
    assert Trainer(flow, other, batch_size=8, seed=0)._reverse_pair == (flow, other)
    plain = build_flow({"family": "spline", "vacua": False}, SMALL)
    assert Trainer(plain, SMALL, batch_size=8, seed=0)._reverse_pair == (plain, SMALL)
