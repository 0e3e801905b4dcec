"""Neural MCMC: independent Metropolis–Hastings with flow proposals (Albergo et al. 2019; Nicoli et al. 2020).

Proposals x' ~ q_θ come in batches; the chain consumes them in order and accepts x' with probability
min(1, w(x')/w(x)), w = e^{−S}/q_θ: with a uniform u per proposal, x' is taken iff
log u < log w(x') − log w(x). The chain is exact for p = e^{−S}/Z whatever q_θ (given support), so
observables are unbiased; the acceptance rate and the autocorrelation measure the flow's quality.

The accept/reject step runs on tensors, all chains at once on the proposals' device (`metropolize_chains`,
`nmcmc_chains`): O(log K) rounds of tensor operations for K proposals per chain instead of a Python loop over
the proposals, bit for bit the sequential chain, and one host synchronisation per batch.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .flow import flow_batches
from .scan_cpu import steps_numpy

__all__ = ["ChainState", "NMCMCBatch", "NMCMCChainsBatch", "metropolize", "metropolize_chains", "nmcmc_batches",
           "nmcmc_chains"]

#: steps per block of the blocked scan (`_steps`): 2–6 tensor operations per step and level, depth log_8 K
BLOCK = 8
_INF = math.inf
_SERIAL = 16384  # numbers per tensor operation below torch's intra-op grain (32768)


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


def _blocks(x: torch.Tensor, nb: int, block: int, fill: float) -> torch.Tensor:
    """(K, C) time-major → (nb, block, C) (a view unless padded at the end with ``fill``)."""
    if nb * block != x.shape[0]:
        x = F.pad(x, (0, 0, 0, nb * block - x.shape[0]), value=fill)
    return x.view(nb, block, x.shape[1])


def _select(bits: torch.Tensor, new: torch.Tensor, take: torch.Tensor, scratch: torch.Tensor) -> None:
    """``bits`` ← ``new`` where ``take``, in place on the int64 bit patterns of float64 states: bit for bit, and
    without the data-dependent branches of `torch.where` (which mispredict on random decisions)."""
    bits.bitwise_xor_(torch.mul(torch.bitwise_xor(bits, new, out=scratch), take, out=scratch))


def _entries(v: torch.Tensor, tau: torch.Tensor, entry: torch.Tensor, block: int) -> torch.Tensor:
    """State before each step of the chains s ← v_t if s < τ_t, time-major (K, C), from ``entry`` (C,); in
    O(log_block K) rounds of tensor operations on at most K·C / block numbers each.

    With τ_t ≥ v_t, the chain from −∞ is the lowest and couples with any other at the first step both take.
    Run every block of ``block`` steps from −∞ (all at once): a block then acts on its entry s as one
    proposal, s ← v* if s < Θ, with v* its last state from −∞ and Θ = max τ over the block (every step after
    the block's last acceptance from −∞ has τ ≤ v* ≤ Θ). The blocks as proposals are the same problem,
    K/block steps long (recursion), which gives each block's entry e. Before step t of a block, the chain from e
    has taken a step of the block iff e < max τ over the block's earlier steps, and is then in the state of
    the run from −∞ (coupled); otherwise it is still in e.
    """
    k, c = v.shape
    out = torch.empty_like(v)
    if k <= block:
        outs = out.unbind(0)
        s = outs[0].copy_(entry)
        for v_t, tau_t, o in zip(v.unbind(0), tau.unbind(0), outs[1:]):
            s = torch.where(s < tau_t, v_t, s, out=o)
        return out
    nb = -(-k // block)
    v, tau = _blocks(v, nb, block, -_INF), _blocks(tau, nb, block, -_INF)
    low, seen = torch.empty_like(v), torch.empty_like(v)  # from −∞: the state, and the max of τ, before each step
    lows, seens, vs, taus = low.unbind(1), seen.unbind(1), v.unbind(1), tau.unbind(1)
    s, top = lows[0].fill_(-_INF), seens[0].fill_(-_INF)
    for v_t, tau_t, low_t, seen_t in zip(vs, taus, lows[1:], seens[1:]):
        s = torch.where(s < tau_t, v_t, s, out=low_t)
        top = torch.maximum(top, tau_t, out=seen_t)
    e = _entries(torch.where(s < taus[-1], vs[-1], s), torch.maximum(top, taus[-1]), entry, block).view(nb, 1, c)
    out = out.view(nb, block, c) if nb * block == k else torch.empty_like(v)
    return torch.where(e < seen, low, e, out=out).view(nb * block, c)[:k]


def _first_pass(lw: torch.Tensor, lu: torch.Tensor, sanitize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The chains s ← log w_t if s < τ_t = log w_t − log u_t along dim 1 of (N, B, C), from −∞ in every block,
    all N·C at once. Returns the last states and the max of τ (N, C). τ is NaN only where log w is NaN or both
    are −∞: with ``sanitize`` −∞, never taken; otherwise left to spoil the block's max, which the check in
    `_steps` then reports."""
    n, _, c = lw.shape
    s = lw.new_full((n, c), -_INF)
    top, tau = torch.empty_like(s), torch.empty_like(s)
    bits, scratch = s.view(torch.int64), torch.empty((n, c), dtype=torch.int64, device=s.device)
    take = torch.empty((n, c), dtype=torch.bool, device=s.device)
    for t, (lw_t, bits_t, lu_t) in enumerate(zip(lw.unbind(1), lw.view(torch.int64).unbind(1), lu.unbind(1))):
        tau_t = torch.sub(lw_t, lu_t, out=tau if t else top)
        if sanitize:
            torch.nan_to_num(tau_t, nan=-_INF, posinf=_INF, neginf=-_INF, out=tau_t)
        if t:
            torch.maximum(top, tau_t, out=top)
        _select(bits, bits_t, torch.lt(s, tau_t, out=take), scratch)
    return s, top


def _exact_pass(lw: torch.Tensor, lu: torch.Tensor, entry: torch.Tensor, fresh_rule: bool, accepted: torch.Tensor,
                index: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential chain's rule along dim 1 of (N, B, C) from ``entry`` (N, C): accept iff
    log u < log w' − log w (with ``fresh_rule`` also where log w = −∞ and log w' > −∞, which only matters
    where log u is NaN or +∞). Writes the decisions into ``accepted`` and, into ``index`` (N, B, C), the largest
    of ``ids`` (N, C, ≥ 1; + t at step t) over the steps taken so far in the block (0: none). Returns the state
    and that largest id after the last step (N, C)."""
    s = entry.expand(ids.shape).clone()
    bits, scratch = s.view(torch.int64), torch.empty(ids.shape, dtype=torch.int64, device=s.device)
    d, z, last = torch.empty_like(s), torch.empty_like(ids), torch.zeros_like(ids)
    for t, (lw_t, bits_t, lu_t, acc_t, index_t) in enumerate(zip(lw.unbind(1), lw.view(torch.int64).unbind(1),
                                                                 lu.unbind(1), accepted.unbind(1), index.unbind(1))):
        take = torch.lt(lu_t, torch.sub(lw_t, s, out=d), out=acc_t)
        if fresh_rule:
            torch.logical_or(take, (s == -_INF) & (lw_t > -_INF), out=acc_t)
        _select(bits, bits_t, take, scratch)
        last = torch.maximum(last, torch.mul(torch.add(ids, t, out=z), take, out=z), out=index_t)
    return s, last


def _steps(log_weight: torch.Tensor, log_u: torch.Tensor, current: torch.Tensor, current_run: torch.Tensor,
           block: int = BLOCK, fresh_rule: bool = False, sanitize: bool = False) -> tuple[torch.Tensor, ...]:
    """The accept/reject of C chains over K proposals each, time-major, without host synchronisation.

    ``log_weight``, ``log_u``: float64 (K, C), chain c takes row t's proposal at step t (log u < +∞ and not NaN
    unless ``fresh_rule``); ``current`` (C,): the chains' log-weights (−∞: fresh); ``current_run`` (C,): their
    rejection runs. Returns ``index`` (K, C) int32, the step whose proposal is the state after each step
    (negative: the state before the batch); ``accepted`` (K, C); the rejection run after the batch and the
    longest in it (C,); ``ok``, a 0-d bool tensor: True when this is the sequential chain's result (otherwise
    use `_steps_checked`). With K·C ≤ 16384 · ``block`` no tensor operation works on more than 16384 numbers
    (below torch's grain: no intra-op threads, which wait long for each other on a busy machine).

    Independent Metropolis–Hastings takes x' iff log u < log w(x') − log w(x). Each block's entry state comes
    from the blocked scan (`_entries`) on thresholds, s < τ' = log w' − log u, which can differ from the exact
    rule by rounding where log w' − log w − log u is within an ulp of 0. The blocks then run the exact rule from
    those entries (`_exact_pass`), and each block's last state must be the next block's entry, bit for bit: by
    induction over the blocks, the states and decisions are then the sequential chain's. The states are selected
    on their bit patterns (`_select`) and the index of each state is the running max of the ids of the steps
    taken, as integers ≥ 1 (step + 1 + the chain's current run), so the state before the batch is 0.
    """
    k, c = log_weight.shape
    dev = log_weight.device
    ok = torch.ones((), dtype=torch.bool, device=dev)
    run = current_run.to(torch.int32)
    if k == 0:
        return (torch.zeros((0, c), dtype=torch.int32, device=dev), torch.zeros((0, c), dtype=torch.bool, device=dev),
                run, torch.zeros_like(run), ok)
    nb = -(-k // block)
    block = k if nb == 1 else block
    lw, lu = _blocks(log_weight, nb, block, -_INF), _blocks(log_u, nb, block, 0.0)
    e = current.view(1, c)
    if nb > 1:
        e = _entries(*_first_pass(lw, lu, sanitize), current, block)
    off = run + 1  # step j is the integer j + off; the state before the batch (step −1 − run) is 0
    ids = torch.arange(0, nb * block, block, dtype=torch.int32, device=dev).view(nb, 1) + off
    accepted = torch.empty((nb, block, c), dtype=torch.bool, device=dev)
    index = torch.empty((nb, block, c), dtype=torch.int32, device=dev)
    last, last_id = _exact_pass(lw, lu, e, fresh_rule, accepted, index, ids)
    # before its first step taken a block is in the state of the last step taken before it (or before the batch)
    entry = torch.zeros_like(ids)
    if nb > 1:
        ok = (last[:-1].view(torch.int64) == e[1:].view(torch.int64)).all()
        entry[1:] = last_id[:-1].cummax(0).values
    steps = torch.arange(block, dtype=torch.int32, device=dev).view(block, 1)
    rows = max(1, _SERIAL // (block * c))
    longest, chunks = None, zip(index.split(rows), ids.view(nb, 1, c).split(rows), entry.view(nb, 1, c).split(rows))
    for i, (part, first, before) in enumerate(chunks):
        torch.maximum(part, before, out=part)
        step = first + steps
        if (i + 1) * rows >= nb and nb * block != k:  # padded steps count as the last one: no run grows there
            torch.minimum(step, off + (k - 1), out=step)
        run_part = torch.sub(step, part, out=step).amax((0, 1))
        longest = run_part if longest is None else torch.maximum(longest, run_part)
        part -= off
    index = index.view(nb * block, c)[:k]
    return index, accepted.view(nb * block, c)[:k], k - 1 - index[-1], longest, ok


def _block_size(k: int, c: int) -> int:
    """`BLOCK`, doubled until a step of all blocks (K·C / block numbers) stays below torch's intra-op grain."""
    block = BLOCK
    while block < k and k * c > _SERIAL * block:
        block *= 2
    return block


def _steps_checked(log_weight: torch.Tensor, log_u: torch.Tensor, current: torch.Tensor, current_run: torch.Tensor,
                   fresh_rule: bool = False) -> tuple[torch.Tensor, ...]:
    """`_steps` until its check holds: again with NaN thresholds sanitised, then step by step (one block of K),
    the exact rule throughout. Returns (index, accepted, run, longest); one host synchronisation per try."""
    k, c = log_weight.shape
    cpu = log_weight.device.type == "cpu"
    # on the CPU the numpy twin (the same scan, bit for bit, at a fraction of torch's cost per operation) with
    # blocks of `BLOCK`; elsewhere the tensor version with blocks below torch's intra-op grain
    block = BLOCK if cpu else _block_size(k, c)
    args = (log_weight.numpy(), log_u.numpy(), current.numpy(), current_run.numpy()) if cpu else None
    for b, sanitize in ((block, False), (block, True), (max(k, 1), False)):
        if cpu:
            *out, ok = steps_numpy(*args, b, fresh_rule, sanitize)
            out = [torch.from_numpy(np.ascontiguousarray(o)) for o in out]
        else:
            *out, ok = _steps(log_weight, log_u, current, current_run, b, fresh_rule, sanitize)
        if bool(ok):
            return tuple(out)
    raise AssertionError("unreachable: a single block is the sequential chain")


def metropolize_chains(log_weight: torch.Tensor, log_u: torch.Tensor, current_log_weight: torch.Tensor
                       ) -> torch.Tensor:
    """Index of each chain's state after each proposal (−1 = its state before the batch), all chains at once.

    ``log_weight``, ``log_u``: (C, K), chain c consumes ``log_weight[c]`` in order; ``current_log_weight``: (C,),
    −∞ for a fresh chain (its first proposal with log w' > −∞ is taken). Independent Metropolis–Hastings:
    proposal t is taken iff log u_t < log w_t − log w(current), w = e^{−S}/q, i.e. with probability
    min(1, w(x')/w(x)); NaN weights are never taken. Bit for bit the sequential chain on each row (decisions in
    float64 whatever the input dtype), on the inputs' device, with one host synchronisation.
    """
    lw = torch.as_tensor(log_weight).to(torch.float64)
    lu = torch.as_tensor(log_u).to(device=lw.device, dtype=torch.float64)
    if lw.dim() != 2 or lu.shape != lw.shape:
        raise ValueError(f"metropolize_chains: log_weight {tuple(lw.shape)} and log_u {tuple(lu.shape)} must be the "
                         f"same (C, K)")
    cur = torch.as_tensor(current_log_weight).to(device=lw.device, dtype=torch.float64).reshape(lw.shape[0])
    index = _steps_checked(lw.t().contiguous(), lu.t().contiguous(), cur, torch.zeros_like(cur, dtype=torch.int64),
                           fresh_rule=True)[0]
    return index.t().clamp_min(-1).long()


def metropolize(log_weight_proposals: np.ndarray, log_u: np.ndarray, current_log_weight: float) -> np.ndarray:
    """Index of the chain's state after each proposal (−1 = the state before the batch), one chain.

    Proposal i is accepted iff log u_i < log w_i − log w(current) (or the chain is fresh, log w = −∞, and
    log w_i > −∞): `metropolize_chains` with C = 1.
    """
    lw = torch.as_tensor(np.asarray(log_weight_proposals, dtype=np.float64)).reshape(1, -1)
    lu = torch.as_tensor(np.asarray(log_u, dtype=np.float64)).reshape(1, -1)
    cur = torch.tensor([float(current_log_weight)], dtype=torch.float64, device="cpu")
    return metropolize_chains(lw, lu, cur)[0].numpy()


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


@dataclass
class _Chains:
    """The K chains' current states as tensors on the proposals' device (``step`` on the host)."""

    x: torch.Tensor
    action: torch.Tensor
    log_q: torch.Tensor
    log_weight: torch.Tensor  # float64: the value the decisions use
    step: np.ndarray
    longest: torch.Tensor
    current: torch.Tensor

    @classmethod
    def of(cls, states: list[ChainState], proposals) -> _Chains:
        dev, dtype = proposals.x.device, proposals.action.dtype
        col = lambda attr, dt: torch.tensor([getattr(st, attr) for st in states], dtype=dt, device=dev)  # noqa: E731
        return cls(torch.stack([st.x for st in states]).to(dev), col("action", dtype), col("log_q", dtype),
                   col("log_weight", torch.float64), np.array([st.step for st in states], dtype=np.int64),
                   col("longest_rejection_run", torch.int64), col("current_rejection_run", torch.int64))

    @classmethod
    def fresh(cls, proposals, k: int) -> _Chains:
        """Every chain at its first proposal with log w = −∞, so that the proposal is taken (if its weight is)."""
        zeros = torch.zeros(k, dtype=torch.int64, device=proposals.x.device)
        return cls(proposals.x[:k], proposals.action[:k], proposals.log_q[:k],
                   torch.full((k,), -_INF, dtype=torch.float64, device=proposals.x.device), np.zeros(k, np.int64),
                   zeros, zeros)


def _log_uniforms(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """log u for ``n`` uniforms of ``generator`` (float64; on the CPU through numpy's log, as in earlier versions,
    so that seeded chains stay bit for bit the same; elsewhere on the device, without synchronisation)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64,
                   device=generator.device if generator is not None else "cpu")
    log_u = torch.from_numpy(np.log(u.numpy())) if u.device.type == "cpu" else u.log_()
    return log_u.to(device)


def _rows(proposals, chains: _Chains, index: torch.Tensor, run: torch.Tensor, longest: torch.Tensor, k: int):
    """The rows (x, S, log q, log w) of the chains after each step and their new states, on the device."""
    b = proposals.x.shape[0]
    lane = torch.arange(k, device=index.device)
    # row of each state in [proposals; states before the batch]
    src = torch.where(index >= 0, index.long() * k + lane, b + lane).view(b)
    x = torch.cat([proposals.x, chains.x]).index_select(0, src)
    s, lq, lw = (torch.cat([getattr(proposals, a), getattr(chains, a).to(getattr(proposals, a).dtype)])
                 .index_select(0, src) for a in ("action", "log_q", "log_weight"))
    new = _Chains(x[b - k:].clone(), s[b - k:], lq[b - k:], lw[b - k:].double(), chains.step + b // k,
                  torch.maximum(chains.longest, longest.long()), run.long())
    return (x, s, lq, lw), new


@torch.no_grad()
def nmcmc_chains(flow, action, n_sweeps: int, sweeps_per_batch: int, n_chains: int,
                 states: list[ChainState] | None = None, generator: torch.Generator | None = None
                 ) -> Iterator[tuple[NMCMCChainsBatch, list[ChainState]]]:
    """``n_chains`` independent NMCMC chains fed from one stream of flow proposals, ``n_sweeps`` steps each.

    Each batch holds ``sweeps_per_batch · n_chains`` proposals; proposal r goes to chain r mod K, so the
    flow's cost is that of one batch whatever K. Every proposal has its own uniform, so the chains are
    independent (i.i.d. proposals). Without ``states`` every chain starts from its first proposal
    (always accepted). Yields the rows and the K chain states after each batch. The accept/reject of all chains
    runs on the proposals' device (`_steps`), with one host transfer per batch (the host-side columns and the
    states).
    """
    k = n_chains
    if k < 1:
        raise ValueError(f"nmcmc needs n_chains >= 1, got {n_chains}")
    chains = None
    for proposals in flow_batches(flow, action, n_sweeps * k, sweeps_per_batch * k, generator=generator):
        b = proposals.x.shape[0]
        if b % k:
            raise ValueError(f"nmcmc: a batch of {b} proposals does not split into {k} chains")
        n_sw = b // k
        lw = proposals.log_weight.double()
        log_u = _log_uniforms(b, generator, lw.device)
        if chains is None:
            chains = _Chains.of(states, proposals) if states is not None else _Chains.fresh(proposals, k)
        args = (lw.view(n_sw, k), log_u.view(n_sw, k), chains.log_weight, chains.current)
        index, accepted, run, longest, ok = _steps(*args, block=_block_size(n_sw, k))
        for attempt in range(2):
            rows, new = _rows(proposals, chains, index, run, longest, k)
            host = torch.cat([ok.double().view(1), accepted.view(b).double(), lw, new.action.double(),
                              new.log_q.double(), new.log_weight, new.longest.double(), new.current.double()]).cpu()
            if host[0] or attempt:
                break
            index, accepted, run, longest = _steps_checked(*args)  # a threshold within an ulp: the exact way
        host = host.numpy()
        acc, plw, s_, lq_, lw_, longest_, current_ = np.split(host[1:], np.cumsum([b, b, k, k, k, k]))
        chains = new
        states = [ChainState(new.x[c], float(s_[c]), float(lq_[c]), float(lw_[c]), int(new.step[c]),
                             int(longest_[c]), int(current_[c])) for c in range(k)]
        mc_index = (chains.step[None, :] - n_sw + np.arange(n_sw)[:, None]).reshape(b)
        yield NMCMCChainsBatch(*rows, acc > 0.5, np.tile(np.arange(k), n_sw), mc_index, plw), states


def nmcmc_batches(flow, action, n_steps: int, batch_size: int, state: ChainState | None = None,
                  generator: torch.Generator | None = None) -> Iterator[tuple[NMCMCBatch, ChainState]]:
    """One chain (`nmcmc_chains` with K = 1): ``n_steps`` Metropolis steps, yielding each batch of chain
    rows and the chain state after it. Without ``state`` the chain starts from the first proposal (which
    is then always accepted: a flow sample is already a draw near equilibrium, no thermalisation is
    needed for an independence sampler)."""
    for batch, states in nmcmc_chains(flow, action, n_steps, batch_size, 1, None if state is None else [state],
                                      generator=generator):
        yield (NMCMCBatch(batch.x, batch.action, batch.log_q, batch.log_weight, batch.accepted, batch.mc_index),
               states[0])
