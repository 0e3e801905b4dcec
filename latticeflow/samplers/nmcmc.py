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

__all__ = ["ChainState", "NMCMCBatch", "metropolize", "nmcmc_batches"]


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


@torch.no_grad()
def nmcmc_batches(flow, action, n_steps: int, batch_size: int, state: ChainState | None = None,
                  generator: torch.Generator | None = None) -> Iterator[tuple[NMCMCBatch, ChainState]]:
    """Run ``n_steps`` Metropolis steps, yielding each batch of chain rows and the chain state after it.

    Without ``state`` the chain starts from the first proposal (which is then always accepted: a flow
    sample is already a draw near equilibrium, no thermalisation is needed for an independence sampler).
    """
    for proposals in flow_batches(flow, action, n_steps, batch_size, generator=generator):
        b = proposals.x.shape[0]
        lw = proposals.log_weight.double().cpu().numpy()
        log_u = np.log(torch.rand(b, generator=generator, dtype=torch.float64,
                                  device=generator.device if generator is not None else "cpu").cpu().numpy())
        if state is None:
            state = ChainState(proposals.x[0], float(proposals.action[0]), float(proposals.log_q[0]), -math.inf)
        idx = metropolize(lw, log_u, state.log_weight)
        accepted = np.zeros(b, dtype=bool)
        accepted[0] = idx[0] == 0
        accepted[1:] = idx[1:] != idx[:-1]
        take = torch.as_tensor(np.maximum(idx, 0), device=proposals.x.device)
        keep_old = torch.as_tensor(idx < 0, device=proposals.x.device)
        view = (-1,) + (1,) * (proposals.x.dim() - 1)
        x = torch.where(keep_old.view(view), state.x.unsqueeze(0), proposals.x[take])
        dtype = proposals.action.dtype
        old = lambda v: torch.full((b,), v, dtype=dtype, device=proposals.x.device)  # noqa: E731
        s = torch.where(keep_old, old(state.action), proposals.action[take])
        lq = torch.where(keep_old, old(state.log_q), proposals.log_q[take])
        lwr = torch.where(keep_old, old(state.log_weight), proposals.log_weight[take])
        # longest run of rejections (a flow that misses a region shows long plateaus)
        run, longest = state.current_rejection_run, state.longest_rejection_run
        for a in accepted.tolist():
            run = 0 if a else run + 1
            longest = max(longest, run)
        mc_index = np.arange(state.step, state.step + b, dtype=np.int64)
        state = ChainState(x[-1].clone(), float(s[-1]), float(lq[-1]), float(lwr[-1]), state.step + b, longest, run)
        yield NMCMCBatch(x, s, lq, lwr, accepted, mc_index), state
