"""Neural MCMC and reweighting are exact whatever the flow: tests against exact results (3σ)."""
import math

import numpy as np
import pytest
import torch

from actions import Phi4, U1Gauge, exact
from latticeflow.analysis import gamma_method, jackknife, reverse_ess
from latticeflow.flows import build_flow
from latticeflow.samplers import flow_batches, metropolize, nmcmc_batches
from latticeflow.training import Trainer
from tests.conftest import heavy_threads




def test_metropolize_accepts_by_weight_ratio():
    lw = np.array([0.0, -1.0, -0.5, 2.0, -10.0])
    log_u = np.log(np.full(5, 0.5))
    # start from −inf: the first proposal is always taken; then log u = −0.69 against w' − w
    assert metropolize(lw, log_u, -math.inf).tolist() == [0, 0, 2, 3, 3]
    assert metropolize(lw, log_u, 5.0).tolist() == [-1, -1, -1, -1, -1]


def _train(flow, action, steps, lr=3e-3, batch=256):
    if steps:
        Trainer(flow, action, batch_size=batch, lr=lr, seed=3).train(steps, progress=False)
    return flow


def _nmcmc(flow, action, n, batch=4096, seed=5):
    gen = torch.Generator().manual_seed(seed)
    obs, acc = [], []
    for b, _ in nmcmc_batches(flow, action, n, batch, generator=gen):
        obs.append({k: v.numpy() for k, v in action.observables(b.x).items()})
        acc.append(b.accepted)
    return {k: np.concatenate([o[k] for o in obs]) for k in obs[0]}, np.concatenate(acc)


def _reweighted(flow, action, n, batch=4096, seed=6):
    gen = torch.Generator().manual_seed(seed)
    obs, lw = [], []
    for b in flow_batches(flow, action, n, batch, generator=gen):
        obs.append({k: v.numpy() for k, v in action.observables(b.x).items()})
        lw.append(b.log_weight.double().numpy())
    lw = np.concatenate(lw)
    return {k: np.concatenate([o[k] for o in obs]) for k in obs[0]}, lw


def _reweight_mean(values, lw):
    w = np.exp(lw - lw.max())
    return jackknife(lambda a, b: b / a, [w, w * values], n_bins=50)


def test_nmcmc_with_an_untrained_flow_reproduces_the_free_field():
    """The identity flow (N(0,1) proposals) is far from the free field at κ = 0.2, yet the chain is exact."""
    phi4 = Phi4((4, 4), kappa=0.2, lam=0.0)
    flow = build_flow({"family": "z2nice", "n_layers": 2}, phi4).double()
    obs, acc = _nmcmc(flow, phi4, 60000)
    chi2 = gamma_method(16 * obs["m2"])
    assert 0.05 < acc.mean() < 0.9
    assert abs(chi2.mean - exact.free_field_chi2((4, 4), 0.2)) < 3 * chi2.error
    s = gamma_method(obs["action_density"])
    assert abs(s.mean - 0.5) < 3 * s.error


@pytest.mark.slow
def test_nmcmc_and_reweighting_reproduce_the_free_field_with_a_briefly_trained_flow():
    phi4 = Phi4((8, 8), kappa=0.2, lam=0.0)
    torch.manual_seed(0)
    flow = _train(build_flow({"family": "z2nice", "n_layers": 4}, phi4), phi4, 60, lr=1e-2)
    obs, acc = _nmcmc(flow, phi4, 24576)
    g_exact = exact.free_field_propagator((8, 8), 0.2)
    chi2 = gamma_method(64 * obs["m2"])
    assert abs(chi2.mean - exact.free_field_chi2((8, 8), 0.2)) < 3 * chi2.error
    g10 = gamma_method(obs["two_point"][:, 1, 0])
    assert abs(g10.mean - g_exact[1, 0]) < 3 * g10.error
    # reweighting, and the free energy ln Z = ln E_q[e^{−S}/q]
    obs, lw = _reweighted(flow, phi4, 24576)
    mean, err = _reweight_mean(64 * obs["m2"].astype(np.float64), lw)
    assert abs(mean - exact.free_field_chi2((8, 8), 0.2)) < 3 * err
    m = lw.max()
    log_z = m + np.log(np.mean(np.exp(lw - m)))
    ess = reverse_ess(lw)
    log_z_err = math.sqrt(1 / (ess * len(lw)) - 1 / len(lw))
    assert abs(log_z - exact.free_field_log_z((8, 8), 0.2)) < 3 * log_z_err


@pytest.mark.slow
def test_nmcmc_and_reweighting_reproduce_exact_u1():
    u1 = U1Gauge((8, 8), beta=2.0)
    torch.manual_seed(0)
    flow = _train(build_flow({"family": "u1_ncp", "n_layers": 8}, u1), u1, 40, lr=1e-2, batch=128)
    obs, acc = _nmcmc(flow, u1, 16384)
    plaq = gamma_method(obs["plaquette"])
    assert abs(plaq.mean - exact.u1_mean_plaquette(2.0, 64)) < 3 * plaq.error
    chi_t = gamma_method(obs["q2"] / 64)
    assert abs(chi_t.mean - exact.u1_topological_susceptibility(2.0, 64)) < 3 * chi_t.error
    obs, lw = _reweighted(flow, u1, 30000)
    mean, err = _reweight_mean(obs["plaquette"].astype(np.float64), lw)
    assert abs(mean - exact.u1_mean_plaquette(2.0, 64)) < 3 * err
    mean, err = _reweight_mean(obs["q2"].astype(np.float64) / 64, lw)
    assert abs(mean - exact.u1_topological_susceptibility(2.0, 64)) < 3 * err


@pytest.mark.slow
def test_nmcmc_with_z2nice_agrees_with_hmc_in_the_broken_phase():
    """κ = 0.3, λ = 0.022 on 8×8 (two vacua): ⟨|m|⟩, χ₂ and the Binder cumulant of NMCMC with a trained
    Z2Nice flow agree with HMC within 3σ of the combined error; τ_int of |m| is reported for both."""
    torch.set_num_threads(heavy_threads())  # training batches large enough for two threads (the conftest fixture restores one)
    from latticeflow.analysis import gamma_method_derived
    from latticeflow.samplers import HMC

    phi4 = Phi4((8, 8), kappa=0.3, lam=0.022)
    torch.manual_seed(0)
    flow = _train(build_flow({"family": "z2nice", "n_layers": 8, "conditioner": "fc", "hidden": [256, 256]}, phi4),
                  phi4, 1000, lr=1e-3)
    obs, acc = _nmcmc(flow, phi4, 50000)
    assert 0.3 < (obs["m"] > 0).mean() < 0.7  # the Z2-symmetric flow proposes both vacua
    gen = torch.Generator().manual_seed(9)
    hmc = HMC(phi4, n_leapfrog=10, step_size=0.1, generator=gen)
    x = hmc.thermalize(torch.randn(64, 8, 8, dtype=torch.float32, generator=gen), 200)
    hm = []
    for _ in range(400):
        x = hmc.step(x).x
        hm.append({k: v.numpy() for k, v in phi4.observables(x).items()})
    hmc_obs = {k: list(np.stack([h[k] for h in hm], axis=1)) for k in ("abs_m", "m2", "m4")}  # replicas = chains

    def compare(a, b):
        assert abs(a.mean - b.mean) < 3 * math.hypot(a.error, b.error), (a, b)

    n_abs, h_abs = gamma_method(obs["abs_m"]), gamma_method(hmc_obs["abs_m"])
    compare(n_abs, h_abs)
    compare(gamma_method(64 * obs["m2"]), gamma_method([64 * r for r in hmc_obs["m2"]]))
    binder = lambda m4, m2: 1 - m4 / (3 * m2**2)  # noqa: E731
    compare(gamma_method_derived(binder, [obs["m4"], obs["m2"]]), gamma_method_derived(binder, [hmc_obs["m4"], hmc_obs["m2"]]))
    print(f"acceptance {acc.mean():.3f}; tau_int(|m|): NMCMC {n_abs.tau_int:.2f}, HMC {h_abs.tau_int:.2f}")
    assert n_abs.tau_int < 50


@pytest.mark.slow
def test_nmcmc_with_a_circular_spline_flow_reproduces_exact_u1():
    """The gauge-equivariant circular-spline flow (family u1), briefly trained at 8×8, β = 3: NMCMC ⟨cos P⟩
    and χ_t agree with the exact torus values within 3σ, and the acceptance is far from 0."""
    u1 = U1Gauge((8, 8), beta=3.0)
    torch.manual_seed(0)
    flow = _train(build_flow({"family": "u1", "n_layers": 8, "n_bins": 4}, u1), u1, 40, lr=3e-3, batch=64)
    obs, acc = _nmcmc(flow, u1, 16384)
    assert acc.mean() > 0.02
    plaq = gamma_method(obs["plaquette"])
    assert abs(plaq.mean - exact.u1_mean_plaquette(3.0, 64)) < 3 * plaq.error
    chi_t = gamma_method(obs["q2"] / 64)
    assert abs(chi_t.mean - exact.u1_topological_susceptibility(3.0, 64)) < 3 * chi_t.error


@pytest.mark.slow
def test_nmcmc_at_beta6_reproduces_exact_chi_t_where_hmc_freezes():
    """The README's main job in small: 8×8, β = 6 (HMC τ_int(Q) ≈ 1300, `bench efficiency`), the default
    `u1` flow trained for 40 steps, 16384 NMCMC configurations: χ_t and ⟨cos P⟩ within 3σ of the exact
    torus values, and the Gamma method's τ_int(Q) of the NMCMC chain is O(1)."""
    u1 = U1Gauge((8, 8), beta=6.0)
    torch.manual_seed(1)
    flow = _train(build_flow({"family": "u1"}, u1), u1, 40, lr=1e-3, batch=64)
    obs, acc = _nmcmc(flow, u1, 16384)
    assert acc.mean() > 0.5
    chi_t = gamma_method(obs["q2"] / 64)
    assert abs(chi_t.mean - exact.u1_topological_susceptibility(6.0, 64)) < 3 * chi_t.error
    plaq = gamma_method(obs["plaquette"])
    assert abs(plaq.mean - exact.u1_mean_plaquette(6.0, 64)) < 3 * plaq.error
    assert gamma_method(obs["topological_charge"]).tau_int < 5


@pytest.mark.slow
def test_nmcmc_with_an_interacting_spline_flow_agrees_with_hmc():
    """φ⁴ 8×8 at κ = 0.25, λ = 0.5 (m² = −4, λ₄ = 8): a Fourier + Z2-mirrored spline flow trained for 40 steps
    gives χ₂ and ⟨|m|⟩ by NMCMC that agree with HMC within 3σ of the combined error."""
    from latticeflow.samplers import HMC

    phi4 = Phi4((8, 8), kappa=0.25, lam=0.5)
    torch.manual_seed(0)
    flow = _train(build_flow({"family": "spline", "n_layers": 4}, phi4), phi4, 40, lr=1e-3)
    obs, acc = _nmcmc(flow, phi4, 16384)
    assert acc.mean() > 0.3
    gen = torch.Generator().manual_seed(9)
    hmc = HMC(phi4, n_leapfrog=10, step_size=0.1, generator=gen)
    x = hmc.thermalize(torch.randn(64, 8, 8, dtype=torch.float32, generator=gen), 200)
    hm = []
    for _ in range(300):
        x = hmc.step(x).x
        hm.append({k: v.numpy() for k, v in phi4.observables(x).items()})
    hmc_obs = {k: list(np.stack([h[k] for h in hm], axis=1)) for k in ("abs_m", "m2")}
    for name, scale in (("m2", 64), ("abs_m", 1)):
        a, b = gamma_method(scale * obs[name]), gamma_method([scale * r for r in hmc_obs[name]])
        assert abs(a.mean - b.mean) < 3 * math.hypot(a.error, b.error), (name, a, b)


def _chains(flow, action, n_sweeps, k, sweeps_per_batch=256, seed=5):
    from latticeflow.samplers import nmcmc_chains

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b, states in nmcmc_chains(flow, action, n_sweeps, sweeps_per_batch, k, generator=gen):
        rows.append((action.observables(b.x), b.accepted, b.chain, b.mc_index))
    obs = {name: np.concatenate([r[0][name].numpy() for r in rows]) for name in rows[0][0]}
    return obs, *(np.concatenate([r[i] for r in rows]) for i in (1, 2, 3)), states


def test_one_chain_of_nmcmc_chains_is_nmcmc_batches():
    """K = 1 reproduces the single chain bitwise (same proposal and uniform streams)."""
    from latticeflow.samplers import nmcmc_chains

    phi4 = Phi4((4, 4), kappa=0.2, lam=0.0)
    flow = build_flow({"family": "z2nice", "n_layers": 2}, phi4).double()
    one = [b for b, _ in nmcmc_batches(flow, phi4, 700, 256, generator=torch.Generator().manual_seed(1))]
    many = [b for b, _ in nmcmc_chains(flow, phi4, 700, 256, 1, generator=torch.Generator().manual_seed(1))]
    assert len(one) == len(many)
    for a, b in zip(one, many):
        assert torch.equal(a.x, b.x) and np.array_equal(a.accepted, b.accepted) and np.array_equal(a.mc_index, b.mc_index)


def test_multichain_nmcmc_reproduces_the_free_field_chain_by_chain():
    """16 chains of the identity flow at κ = 0.2, 4×4: χ₂ within 3σ of exact with the chains as replicas,
    each chain's mc_index is 0 … n − 1, the chains differ, and each is within 4σ of exact on its own."""
    phi4 = Phi4((4, 4), kappa=0.2, lam=0.0)
    flow = build_flow({"family": "z2nice", "n_layers": 2}, phi4).double()
    k, n = 16, 4000
    obs, acc, chain, mc, states = _chains(flow, phi4, n, k)
    assert np.array_equal(np.bincount(chain), np.full(k, n))
    chi2 = 16 * obs["m2"]
    reps = [chi2[chain == c] for c in range(k)]
    assert all(np.array_equal(mc[chain == c], np.arange(n)) for c in range(k))
    res = gamma_method(reps)
    exact_chi2 = exact.free_field_chi2((4, 4), 0.2)
    assert abs(res.mean - exact_chi2) < 3 * res.error, res
    assert len({float(r[-1]) for r in reps}) > k // 2
    for r in reps:
        one = gamma_method(r)
        assert abs(one.mean - exact_chi2) < 4 * one.error
    assert [s.step for s in states] == [n] * k


def test_multichain_nmcmc_reproduces_exact_u1_beta2():
    """8 chains with the untrained marginal flow (ESS ≈ 0.98) at 8×8, β = 2: ⟨cos P⟩ and χ_t within 3σ."""
    u1 = U1Gauge((8, 8), beta=2.0)
    flow = build_flow({"family": "u1", "n_layers": 2}, u1)
    k = 8
    obs, acc, chain, mc, _ = _chains(flow, u1, 2000, k, sweeps_per_batch=512)
    assert acc.mean() > 0.8
    plaq = gamma_method([obs["plaquette"][chain == c] for c in range(k)])
    assert abs(plaq.mean - exact.u1_mean_plaquette(2.0, 64)) < 3 * plaq.error
    chi_t = gamma_method([obs["q2"][chain == c] / 64 for c in range(k)])
    assert abs(chi_t.mean - exact.u1_topological_susceptibility(2.0, 64)) < 3 * chi_t.error
