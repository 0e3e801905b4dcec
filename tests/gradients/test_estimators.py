"""Gradient estimators of `latticeflow.gradients` (Vaitl, Winkler, Richter, Kessel, ICLR 2024).

What must hold (docs: shared/design/path-gradients.md), float64, every flow family:
- fast_path == path_inverse (reverse KL) and fast_path == gdreg (forward KL) on the same z / x:
  ‖g_fast − g_ref‖ / ‖g_ref‖ < 1e-10;
- every estimator's loss value is the KL estimate up to log Z, recomputed independently (to 1e-10);
- sticking the landing: with target p = q_{θ₀}, at θ = θ₀ the path gradients vanish *per sample*
  (‖g‖ < 1e-8 ‖g_standard‖) while the standard gradient does not;
- E[fast_path] == E[standard] (statistical, paired batches);
- float32 runs give finite losses and gradients; unknown estimator names raise ValueError naming them.
"""
from __future__ import annotations

import math

import pytest
import torch

from latticeflow.gradients import FORWARD_ESTIMATORS, REVERSE_ESTIMATORS, forward_kl, reverse_kl

from .helpers import NAMES, FrozenFlowTarget, base_sample, grads, make_flow, rel, target_like

TOL = 1e-10        # relative agreement of two estimators of the same (path) gradient, float64
STL_TOL = 1e-8     # per-sample path gradient at the optimum, relative to the standard gradient's norm
BATCH = 16


# -- the fast path equals the baselines ----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_fast_path_equals_path_inverse(name):
    flow, action = make_flow(name)
    z = base_sample(flow, BATCH)
    g_fast = grads(flow, reverse_kl(flow, action, z, "fast_path"))
    g_inv = grads(flow, reverse_kl(flow, action, z, "path_inverse"))
    g_std = grads(flow, reverse_kl(flow, action, z, "standard"))
    assert g_inv.norm() > 0 and torch.isfinite(g_inv).all()
    assert rel(g_fast, g_inv) < TOL, f"{name}: fast_path vs path_inverse rel. difference {rel(g_fast, g_inv):.3e}"
    # not vacuous: on a finite batch the path gradient is not the total (standard) gradient
    assert rel(g_fast, g_std) > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_fast_path_equals_gdreg(name):
    flow, action = make_flow(name)
    x = target_like(name, BATCH)
    g_fast = grads(flow, forward_kl(flow, action, x, "fast_path"))
    g_gdreg = grads(flow, forward_kl(flow, action, x, "gdreg"))
    g_std = grads(flow, forward_kl(flow, action, x, "standard"))
    assert g_gdreg.norm() > 0 and torch.isfinite(g_gdreg).all()
    assert rel(g_fast, g_gdreg) < TOL, f"{name}: fast_path vs gdreg rel. difference {rel(g_fast, g_gdreg):.3e}"
    assert rel(g_fast, g_std) > 1e-4


# -- loss values: the KL estimate up to log Z ---------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_reverse_loss_value_is_kl_estimate(name):
    flow, action = make_flow(name)
    z = base_sample(flow, BATCH)
    with torch.no_grad():
        x, logdet = flow(z)
        log_q = flow.base.log_prob(z) - logdet
        s = action.action(x)
        expected = float((log_q + s).mean())
        expected_lw = -(s + log_q)
    for est in REVERSE_ESTIMATORS:
        loss = reverse_kl(flow, action, z, est)
        assert loss.dim() == 0
        assert abs(float(loss.detach()) - expected) <= TOL * max(1.0, abs(expected)), f"{name} {est}: {float(loss.detach())} vs {expected}"
        assert not loss.log_weight.requires_grad
        torch.testing.assert_close(loss.log_weight, expected_lw, rtol=TOL, atol=TOL * float(expected_lw.abs().max()))


@pytest.mark.parametrize("name", NAMES)
def test_forward_loss_value_is_kl_estimate(name):
    flow, action = make_flow(name)
    x = target_like(name, BATCH)
    with torch.no_grad():
        log_q = flow.log_prob(x)
        s = action.action(x)
        expected = float((-s - log_q).mean())
        expected_lw = -(s + log_q)
    for est in FORWARD_ESTIMATORS:
        loss = forward_kl(flow, action, x, est)
        assert loss.dim() == 0
        assert abs(float(loss.detach()) - expected) <= TOL * max(1.0, abs(expected)), f"{name} {est}: {float(loss.detach())} vs {expected}"
        assert not loss.log_weight.requires_grad
        torch.testing.assert_close(loss.log_weight, expected_lw, rtol=TOL, atol=TOL * float(expected_lw.abs().max()))


# -- sticking the landing -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_sticking_the_landing(name):
    """Target S = −log q_{θ₀}; at θ = θ₀ each single-sample path gradient is zero, the standard one is not."""
    flow, action = make_flow(name)
    target = FrozenFlowTarget(flow, action)
    # reverse KL: batches of one base sample
    z_all = base_sample(flow, 3, seed=11)
    for i in range(z_all.shape[0]):
        z = z_all[i : i + 1]
        g_std = grads(flow, reverse_kl(flow, target, z, "standard"))
        ref = float(g_std.norm())
        assert ref > 1e-3, f"{name}: the standard per-sample gradient should not vanish at the optimum, got {ref:.3e}"
        for est in ("fast_path", "path_inverse"):
            loss = reverse_kl(flow, target, z, est)
            assert abs(float(loss.detach())) < 1e-8  # KL(q‖q) = 0 per sample (log Z = 0)
            g = float(grads(flow, loss).norm())
            assert g < STL_TOL * ref, f"{name} reverse {est} sample {i}: |g| = {g:.3e}, standard |g| = {ref:.3e}"
    # forward KL: x drawn from the frozen flow itself (the target)
    with torch.no_grad():
        x_all = target.frozen.sample(3, generator=torch.Generator().manual_seed(12))[0]
    for i in range(x_all.shape[0]):
        x = x_all[i : i + 1]
        g_std = grads(flow, forward_kl(flow, target, x, "standard"))
        ref = float(g_std.norm())
        assert ref > 1e-3, f"{name}: the forward standard per-sample gradient should not vanish, got {ref:.3e}"
        for est in ("fast_path", "gdreg"):
            g = float(grads(flow, forward_kl(flow, target, x, est)).norm())
            assert g < STL_TOL * ref, f"{name} forward {est} sample {i}: |g| = {g:.3e}, standard |g| = {ref:.3e}"


def test_sticking_the_landing_is_not_vacuous():
    """Away from θ₀ (parameters nudged) the single-sample fast path gradient is clearly non-zero."""
    flow, action = make_flow("z2nice-cnn")
    target = FrozenFlowTarget(flow, action)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5), dtype=p.dtype))
    z = base_sample(flow, 1, seed=11)
    g_std = float(grads(flow, reverse_kl(flow, target, z, "standard")).norm())
    g_fast = float(grads(flow, reverse_kl(flow, target, z, "fast_path")).norm())
    assert g_fast > 1e-4 * g_std


# -- unbiasedness -----------------------------------------------------------------------------------------
def _paired_t_values(flow, est_a, est_b, n_batches, batch, seed=0):
    """t-values of the mean over batches of (g_a − g_b), each pair on the same z, per parameter component."""
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(n_batches):
        z = flow.base.sample((batch,), generator=gen)
        diffs.append(est_a(z) - est_b(z))
    d = torch.stack(diffs)
    mean, se = d.mean(0), d.std(0) / math.sqrt(n_batches)
    # components where both estimators agree exactly on every batch carry no information: skipped;
    # a constant non-zero difference (se = 0, mean ≠ 0) is an infinite t
    scale = float(d.abs().max())
    keep = (se > 1e-12 * scale) | (mean.abs() > 1e-12 * scale)
    return mean[keep] / se[keep], d


def _hotelling_p_value(d: torch.Tensor, k: int = 10) -> float:
    """p-value of H0: E[d] = 0 from Hotelling's T² on the top-k principal components of the rows of ``d``.

    T² = n m̄ᵀ C⁻¹ m̄ of the projected rows; (n − k)/(k(n − 1)) T² ~ F(k, n − k) under H0 (Gaussian rows).
    """
    from scipy import stats

    n = d.shape[0]
    _, _, vh = torch.linalg.svd(d - d.mean(0), full_matrices=False)
    y = d @ vh[:k].T
    m = y.mean(0)
    t2 = n * float(m @ torch.linalg.solve(torch.cov(y.T), m))
    return float(stats.f.sf(t2 * (n - k) / (k * (n - 1)), k, n - k))


def test_fast_path_is_unbiased():
    """E[fast_path] = E[standard] on a small z2nice 4×4 φ⁴ flow away from the optimum.

    200 batches of 8; paired differences d_b = g_fast(z_b) − g_std(z_b) (same z_b), 145 parameters.
    1. per component t = mean(d)/SE(d), each ~N(0, 1) under H0 (t with 199 d.o.f.): |t| < 4.5 for *all*
       components (P(any |t| > 4.5) ≤ 145 · 7e-6 ≈ 1e-3 by the union bound, whatever the correlations);
    2. the components are strongly correlated (so mean t² is no χ² statistic): Hotelling's T² on the top 10
       principal components of d, p-value > 1e-3 (over 30 seeds p ranged 0.05–1.0).
    Power: a biased estimator (the standard gradient on z ~ N(0, 1.2²) instead of N(0, 1)) is rejected by
    both statistics with only 50 batches (max |t| ≈ 30, p ≈ 1e-26).
    """
    from actions import Phi4
    from latticeflow.flows import build_flow

    from .helpers import randomise

    action = Phi4((4, 4), kappa=0.3, lam=0.022)
    torch.manual_seed(3)
    flow = randomise(build_flow({"family": "z2nice", "conditioner": "cnn", "n_layers": 2, "hidden": [4]}, action).double(),
                     0.3, seed=3)

    def fast(z):
        return grads(flow, reverse_kl(flow, action, z, "fast_path"))

    def std(z):
        return grads(flow, reverse_kl(flow, action, z, "standard"))

    def biased(z):
        return std(1.2 * z)

    t, d = _paired_t_values(flow, fast, std, 200, 8)
    n = t.numel()
    assert n >= 100
    # the estimators differ batch by batch, by much more than round-off (otherwise this tests nothing)
    assert float(d.std(0).norm()) > 1.0
    assert float(t.abs().max()) < 4.5, f"max |t| = {float(t.abs().max()):.2f} over {n} components"
    p = _hotelling_p_value(d)
    assert p > 1e-3, f"Hotelling T² p-value {p:.2e}"

    t_biased, d_biased = _paired_t_values(flow, biased, std, 50, 8)
    assert float(t_biased.abs().max()) > 8, "the statistic should reject a biased estimator"
    assert _hotelling_p_value(d_biased) < 1e-6


# -- dtypes and errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_estimators_run_in_float32(name):
    flow, action = make_flow(name, dtype=torch.float32)
    z = base_sample(flow, 8)
    assert z.dtype == torch.float32
    x = target_like(name, 8).to(torch.float32)
    for kl, inputs, names in ((reverse_kl, z, REVERSE_ESTIMATORS), (forward_kl, x, FORWARD_ESTIMATORS)):
        for est in names:
            loss = kl(flow, action, inputs, est)
            assert loss.dtype == torch.float32 and math.isfinite(float(loss.detach())), f"{name} {kl.__name__} {est}: {loss}"
            g = grads(flow, loss)
            assert torch.isfinite(g).all() and g.norm() > 0, f"{name} {kl.__name__} {est}: gradient {g.norm()}"


@pytest.mark.parametrize("kl,bad", [(reverse_kl, "gdreg"), (reverse_kl, "fastpath"), (forward_kl, "path_inverse"),
                                    (forward_kl, "Standard")])
def test_unknown_estimator_raises(kl, bad):
    flow, action = make_flow("z2nice-fc")
    inputs = base_sample(flow, 2) if kl is reverse_kl else target_like("z2nice-fc", 2)
    with pytest.raises(ValueError, match=repr(bad)):
        kl(flow, action, inputs, bad)
