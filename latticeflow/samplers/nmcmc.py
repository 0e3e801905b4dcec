"""Neural MCMC: independent Metropolis–Hastings with flow proposals (Albergo et al. 2019; Nicoli et al. 2020).

Proposals x' ~ q_θ come in batches; the chain consumes them in order and accepts x' with probability
min(1, w(x')/w(x)), w = e^{−S}/q_θ. The chain is exact for p = e^{−S}/Z whatever q_θ (given support),
so observables are unbiased; the acceptance rate and the autocorrelation measure the flow's quality.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .flow import flow_batches

__all__ = ["ChainState", "NMCMCBatch", "NMCMCChainsBatch", "metropolize", "nmcmc_batches", "nmcmc_chains"]


@dataclass
class ChainState:
    """The current configuration of an NMCMC chain with its action, log q and log-weight."""

    x: torch.Tensor
    action: float
    log_q: float
    log_weight: float
    step: int = 0
    longest_rejection_run: int = 0
    current_rejection_run: int = 0


@dataclass
class NMCMCBatch:
    """Rows of the chain after consuming one batch of proposals (repeats where rejected)."""

    x: torch.Tensor
    action: torch.Tensor
    log_q: torch.Tensor
    log_weight: torch.Tensor
    accepted: np.ndarray
    mc_index: np.ndarray


def metropolize(log_weight_proposals: np.ndarray, log_u: np.ndarray, current_log_weight: float) -> np.ndarray:
    """Index of the chain's state after each proposal (−1 = the state before the batch).

    Proposal i is accepted iff log u_i < log w_i − log w(current); sequential by nature, run on floats.
    """
    idx = np.empty(len(log_weight_proposals), dtype=np.int64)
    cur_i, cur_w = -1, current_log_weight
    lw = log_weight_proposals.tolist()
    lu = log_u.tolist()
    for i, (w, u) in enumerate(zip(lw, lu)):
        if u < w - cur_w or (cur_w == -math.inf and w > -math.inf):
            cur_i, cur_w = i, w
        idx[i] = cur_i
    return idx


@dataclass
class NMCMCChainsBatch:
    """Rows of K chains after one batch of proposals, sweep-major (row r: sweep r // K, chain r % K)."""

    x: torch.Tensor
    action: torch.Tensor
    log_q: torch.Tensor
    log_weight: torch.Tensor
    accepted: np.ndarray
    chain: np.ndarray  # 0 … K−1
    mc_index: np.ndarray
    proposal_log_weight: np.ndarray  # −S − log q of the proposal consumed at each row (float64)


@torch.no_grad()
def nmcmc_chains(flow, action, n_sweeps: int, sweeps_per_batch: int, n_chains: int,
                 states: list[ChainState] | None = None, generator: torch.Generator | None = None
                 ) -> Iterator[tuple[NMCMCChainsBatch, list[ChainState]]]:
    """``n_chains`` independent NMCMC chains fed from one stream of flow proposals, ``n_sweeps`` steps each.

    Each batch holds ``sweeps_per_batch · n_chains`` proposals; proposal r goes to chain r mod K, so the
    flow's cost is that of one batch whatever K. Every proposal has its own uniform, so the chains are
    independent (i.i.d. proposals). Without ``states`` every chain starts from its first proposal
    (always accepted). Yields the rows and the K chain states after each batch.
    """
    k = n_chains
    if k < 1:
        raise ValueError(f"nmcmc needs n_chains >= 1, got {n_chains}")
    for proposals in flow_batches(flow, action, n_sweeps * k, sweeps_per_batch * k, generator=generator):
        b = proposals.x.shape[0]
        if b % k:
            raise ValueError(f"nmcmc: a batch of {b} proposals does not split into {k} chains")
        lw = proposals.log_weight.double().cpu().numpy()
        log_u = np.log(torch.rand(b, generator=generator, dtype=torch.float64,
                                  device=generator.device if generator is not None else "cpu").cpu().numpy())
        if states is None:
            states = [ChainState(proposals.x[c], float(proposals.action[c]), float(proposals.log_q[c]), -math.inf)
                      for c in range(k)]
        take = np.empty(b, dtype=np.int64)
        accepted = np.empty(b, dtype=bool)
        for c in range(k):
            idx = metropolize(lw[c::k], log_u[c::k], states[c].log_weight)
            acc = np.empty(len(idx), dtype=bool)
            acc[0] = idx[0] == 0
            acc[1:] = idx[1:] != idx[:-1]
            accepted[c::k] = acc
            take[c::k] = np.where(idx < 0, -1, c + k * idx)
        device = proposals.x.device
        keep_old = torch.as_tensor(take < 0, device=device)
        src = torch.as_tensor(np.maximum(take, 0), device=device)
        chain_of_row = torch.arange(b, device=device) % k
        view = (-1,) + (1,) * (proposals.x.dim() - 1)
        old_x = torch.stack([st.x for st in states])[chain_of_row]
        x = torch.where(keep_old.view(view), old_x, proposals.x[src])
        dtype = proposals.action.dtype

        def old(attr: str) -> torch.Tensor:
            return torch.tensor([getattr(st, attr) for st in states], dtype=dtype, device=device)[chain_of_row]

        s = torch.where(keep_old, old("action"), proposals.action[src])
        lq = torch.where(keep_old, old("log_q"), proposals.log_q[src])
        lwr = torch.where(keep_old, old("log_weight"), proposals.log_weight[src])
        n_sw = b // k
        mc_index = np.empty(b, dtype=np.int64)
        new_states = []
        for c, st in enumerate(states):
            mc_index[c::k] = np.arange(st.step, st.step + n_sw)
            run, longest = st.current_rejection_run, st.longest_rejection_run
            for a in accepted[c::k].tolist():  # a flow that misses a region shows long plateaus
                run = 0 if a else run + 1
                longest = max(longest, run)
            last = b - k + c
            new_states.append(ChainState(x[last].clone(), float(s[last]), float(lq[last]), float(lwr[last]),
                                         st.step + n_sw, longest, run))
        states = new_states
        yield NMCMCChainsBatch(x, s, lq, lwr, accepted, np.tile(np.arange(k), n_sw), mc_index, lw), states


def nmcmc_batches(flow, action, n_steps: int, batch_size: int, state: ChainState | None = None,
                  generator: torch.Generator | None = None) -> Iterator[tuple[NMCMCBatch, ChainState]]:
    """One chain (`nmcmc_chains` with K = 1): ``n_steps`` Metropolis steps, yielding each batch of chain
    rows and the chain state after it. Without ``state`` the chain starts from the first proposal (which
    is then always accepted: a flow sample is already a draw near equilibrium, no thermalisation is
    needed for an independence sampler)."""
    for batch, states in nmcmc_chains(flow, action, n_steps, batch_size, 1, None if state is None else [state],
                                      generator=generator):
        yield NMCMCBatch(batch.x, batch.action, batch.log_q, batch.log_weight, batch.accepted, batch.mc_index), states[0]
