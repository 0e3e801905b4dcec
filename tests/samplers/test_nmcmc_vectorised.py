"""Issue 25: NMCMC's accept/reject vectorised over chains is bit for bit the sequential chain.

The reference is the loop the sampler used before (one chain at a time, one proposal at a time, Python floats),
kept here: accept proposal t iff log u_t < log w_t − log w(current), or the chain is fresh (log w = −∞) and
log w_t > −∞; then the rejection-run counters proposal by proposal.
"""
import math

import numpy as np
import pytest
import torch

from actions import Phi4
from latticeflow.flows import build_flow
from latticeflow.samplers.nmcmc import metropolize, metropolize_chains, nmcmc_chains
from latticeflow.samplers import nmcmc as nm
from latticeflow.samplers.scan_cpu import steps_numpy


def reference(lw, log_u, current, run=0, longest=0):
    """(index after each proposal, −1 = before the batch; decisions; current run; longest run) of one chain."""
    idx, acc = np.empty(len(lw), dtype=np.int64), np.empty(len(lw), dtype=bool)
    cur_i, cur_w = -1, float(current)
    for i, (w, u) in enumerate(zip(np.asarray(lw, float).tolist(), np.asarray(log_u, float).tolist())):
        a = u < w - cur_w or (cur_w == -math.inf and w > -math.inf)
        if a:
            cur_i, cur_w = i, w
        idx[i], acc[i] = cur_i, a
        run = 0 if a else run + 1
        longest = max(longest, run)
    return idx, acc, run, longest


def _inputs(rng, c, k, weird_u=False):
    """Log-weights with −∞, NaN, +∞ and ties; log-uniforms with −∞ (u = 0); states fresh, finite, NaN or ±∞."""
    lw = rng.normal(size=(k, c)) * rng.choice([0.1, 1.0, 3.0, 30.0])
    m = rng.random((k, c))
    lw[m < 0.05], lw[(m > 0.05) & (m < 0.08)], lw[(m > 0.08) & (m < 0.09)] = -np.inf, np.nan, np.inf
    if rng.random() < 0.3:
        lw = np.round(lw)  # ties with the current state
    log_u = np.log(rng.random((k, c)))
    log_u[rng.random((k, c)) < 0.02] = -np.inf
    if weird_u:
        log_u[rng.random((k, c)) < 0.05] = np.nan
        log_u[rng.random((k, c)) < 0.05] = np.inf
    current = rng.choice([-np.inf, 0.0, 2.0, -1.0, np.nan, np.inf], size=c)
    runs = rng.integers(0, 6, size=c)
    return lw, log_u, current, runs, runs + rng.integers(0, 6, size=c)


def _check(lw, log_u, current, runs, longest, out):
    index, accepted, run, top = (t.cpu() for t in out)
    top = torch.maximum(top.long(), torch.as_tensor(longest))
    for c in range(lw.shape[1]):
        idx, acc, r, lo = reference(lw[:, c], log_u[:, c], current[c], int(runs[c]), int(longest[c]))
        assert np.array_equal(index[:, c].clamp_min(-1).numpy(), idx), (c, current[c])
        assert np.array_equal(accepted[:, c].numpy(), acc)
        if len(idx):
            assert (int(run[c]), int(top[c])) == (r, lo)


@pytest.mark.parametrize("block", [2, 3, 8])
def test_blocked_accept_reject_is_the_sequential_loop_on_random_inputs(block):
    """Whenever `_steps` reports ok its result is the reference's, and `_steps_checked` always is (including
    fresh chains, whose first proposal with a weight is taken, NaN and infinite weights and states, ties, u = 0)."""
    rng = np.random.default_rng(block)
    n_ok = 0
    for _ in range(300):
        c, k = int(rng.integers(1, 6)), int(rng.integers(0, 70))
        lw, log_u, current, runs, longest = _inputs(rng, c, k)
        args = [torch.tensor(a) for a in (lw, log_u, current, runs)]
        *out, ok = nm._steps(*args, block=block)
        for sanitize in (False, True):  # the CPU's numpy twin is the tensor version, bit for bit, check included
            *twin, ok_twin = steps_numpy(lw, log_u, current, runs, block, sanitize=sanitize)
            *ref, ok_ref = nm._steps(*args, block=block, sanitize=sanitize)
            assert ok_twin == bool(ok_ref)
            for a, b in zip(twin, ref):
                assert np.array_equal(a, b.numpy()) and a.dtype == b.numpy().dtype
        if bool(ok):
            n_ok += 1
            _check(lw, log_u, current, runs, longest, out)
        _check(lw, log_u, current, runs, longest, nm._steps_checked(*args))
    assert n_ok > 100  # the blocked scan is the rule (NaN weights in a block need the second try)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_metropolize_chains_matches_the_loop_in_float64_and_float32(dtype):
    """Decisions in float64 whatever the input dtype: float32 weights give the loop's result on their values; also
    with log u = NaN or +∞ (where only a fresh chain takes a proposal)."""
    rng = np.random.default_rng(7)
    for _ in range(150):
        c, k = int(rng.integers(1, 5)), int(rng.integers(0, 100))
        lw, log_u, current, _, _ = _inputs(rng, c, k, weird_u=rng.random() < 0.5)
        lw, log_u, current = (torch.tensor(a).to(dtype).double().numpy() for a in (lw, log_u, current))
        got = metropolize_chains(torch.tensor(lw.T).to(dtype), torch.tensor(log_u.T).to(dtype),
                                 torch.tensor(current).to(dtype))
        assert got.dtype == torch.int64 and got.shape == (c, k)
        for j in range(c):
            assert np.array_equal(got[j].numpy(), reference(lw[:, j], log_u[:, j], current[j])[0])
            assert np.array_equal(metropolize(lw[:, j], log_u[:, j], current[j]), got[j].numpy())


def test_a_threshold_within_an_ulp_falls_back_to_the_exact_rule():
    """The blocked scan decides on τ = log w' − log u, the chain on log w' − log w: where they round apart the
    check of `_steps` fails and `_steps_checked` gives the sequential result."""
    rng = np.random.default_rng(3)
    for _ in range(100000):  # a state s and a proposal (w, log u) on which the two roundings disagree
        s, log_u = rng.normal(0, 5), -rng.random() * 3
        w = s + log_u + rng.integers(-3, 4) * np.spacing(abs(s) + abs(log_u))
        if (log_u < w - s) != (s < w - log_u):
            break
    else:
        pytest.fail("no rounding disagreement found")
    k = 16  # two blocks of 8: the first decides alone, the rest takes nothing
    lw = np.full((k, 1), -np.inf)
    lw[0, 0] = w
    log_u_all = np.full((k, 1), -0.5)
    log_u_all[0, 0] = log_u
    args = [torch.tensor(a) for a in (lw, log_u_all, np.array([s]), np.array([0]))]
    assert not bool(nm._steps(*args, block=8)[-1])
    _check(lw, log_u_all, np.array([s]), np.array([0]), np.array([0]), nm._steps_checked(*args))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_accept_reject_on_cuda_is_the_loop():
    rng = np.random.default_rng(11)
    lw, log_u, current, runs, longest = _inputs(rng, 16, 512)
    out = nm._steps_checked(*(torch.tensor(a, device="cuda") for a in (lw, log_u, current, runs)))
    assert all(t.device.type == "cuda" for t in out)
    _check(lw, log_u, current, runs, longest, out)


def test_nmcmc_chains_rows_and_states_follow_the_loop(monkeypatch):
    """16 chains fed by a flow with a few infinite and NaN actions, resumed halfway: every row, decision, counter
    and state is the reference loop's on the same log-weights and uniforms."""
    phi4 = Phi4((4, 4), kappa=0.2, lam=0.0)
    flow = build_flow({"family": "z2nice", "n_layers": 2}, phi4)

    class Spoilt:  # every 7th proposal has S = +∞, every 11th S = NaN
        def action(self, x):
            s = phi4.action(x).clone()
            s[::7], s[3::11] = math.inf, math.nan
            return s

    seen = []
    log_uniforms = nm._log_uniforms
    monkeypatch.setattr(nm, "_log_uniforms", lambda *a: seen.append(log_uniforms(*a)) or seen[-1])
    k, gen = 16, torch.Generator().manual_seed(1)
    batches = list(nmcmc_chains(flow, Spoilt(), 100, 48, k, generator=gen))
    first, half = len(batches), batches[0][1]
    batches += list(nmcmc_chains(flow, Spoilt(), 60, 24, k, states=half, generator=gen))
    cur = [-math.inf] * k
    runs, longest = [0] * k, [0] * k
    for i, ((b, states), log_u) in enumerate(zip(batches, seen)):
        if i == first:  # the resumed run starts again from the states after the first batch
            cur = [st.log_weight for st in half]
            runs = [st.current_rejection_run for st in half]
            longest = [st.longest_rejection_run for st in half]
        lw, lu = b.proposal_log_weight.reshape(-1, k), log_u.numpy().reshape(-1, k)
        for c in range(k):
            idx, acc, runs[c], longest[c] = reference(lw[:, c], lu[:, c], cur[c], runs[c], longest[c])
            assert np.array_equal(b.accepted[c::k], acc)
            taken = idx >= 0
            rows_lw = b.log_weight[c::k].double().numpy()
            assert np.array_equal(rows_lw[taken], lw[idx[taken], c].astype(np.float32).astype(float))
            assert np.array_equal(b.mc_index[c::k], states[c].step - len(idx) + np.arange(len(idx)))
            assert (states[c].current_rejection_run, states[c].longest_rejection_run) == (runs[c], longest[c])
            cur[c] = states[c].log_weight
            assert torch.equal(states[c].x, b.x[len(b.x) - k + c])
        assert np.array_equal(b.chain, np.tile(np.arange(k), len(b.x) // k))
