"""NMCMC's blocked accept/reject scan on the CPU, in numpy: the same algorithm as the tensor version in
`latticeflow.samplers.nmcmc` (`_steps`), bit for bit, with numpy's lower cost per operation.

The scan is a few hundred operations on arrays of a few thousand numbers, so on the CPU its time is the
per-operation overhead: about 1 µs in numpy against 3–8 µs for a torch operator call. `nmcmc._steps_checked`
runs this twin for CPU tensors (zero-copy through ``Tensor.numpy()``) and the tensor version on any other
device, where it has no host synchronisation.

Example:
    >>> import numpy as np
    >>> lw = np.array([[0.0], [-1.0], [2.0]]); lu = np.log(np.array([[0.5], [0.9], [0.1]]))
    >>> index, accepted, run, longest, ok = steps_numpy(lw, lu, np.array([-np.inf]), np.zeros(1, np.int64))
    >>> index[:, 0].tolist(), accepted[:, 0].tolist(), ok
    ([0, 0, 2], [True, False, True], True)
"""
from __future__ import annotations

import numpy as np

__all__ = ["steps_numpy"]

_INF = np.inf


def _blocks(x: np.ndarray, nb: int, block: int, fill: float) -> np.ndarray:
    """(K, C) time-major → (block, nb, C) block-major, contiguous (padded at the end with ``fill``): step t of
    every block is then the contiguous slice ``[t]``, three times faster to work on than a strided one."""
    k, c = x.shape
    out = np.empty((block, nb, c), x.dtype)
    full = k // block
    np.copyto(out[:, :full], x[:full * block].reshape(full, block, c).transpose(1, 0, 2))
    if full < nb:  # the last block, padded
        out[:, full:] = fill
        out[:k - full * block, full] = x[full * block:]
    return out


def _time_major(x: np.ndarray, k: int) -> np.ndarray:
    """(block, nb, C) block-major → (K, C) time-major (the first K steps)."""
    b, nb, c = x.shape
    return np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(nb * b, c)[:k]


def _entries(v: np.ndarray, tau: np.ndarray, entry: np.ndarray, block: int) -> np.ndarray:
    """State before each step of the chains s ← v_t if s < τ_t (time-major (K, C)) from ``entry`` (C,):
    `nmcmc._entries`, the recursion of the blocked scan."""
    k, c = v.shape
    if k <= block:
        out = np.empty_like(v)
        out[0] = entry
        for t in range(1, k):
            out[t] = np.where(out[t - 1] < tau[t - 1], v[t - 1], out[t - 1])
        return out
    nb = -(-k // block)
    v, tau = _blocks(v, nb, block, -_INF), _blocks(tau, nb, block, -_INF)
    low, seen = np.empty_like(v), np.empty_like(v)  # from −∞: the state, and the max of τ, before each step
    low[0], seen[0] = -_INF, -_INF
    for t in range(1, block):
        low[t] = np.where(low[t - 1] < tau[t - 1], v[t - 1], low[t - 1])
        np.maximum(seen[t - 1], tau[t - 1], out=seen[t])
    s = np.where(low[-1] < tau[-1], v[-1], low[-1])
    e = _entries(s, np.maximum(seen[-1], tau[-1]), entry, block)  # (nb, C)
    return _time_major(np.where(e < seen, low, e), k)


def _first_pass(lw: np.ndarray, lu: np.ndarray, sanitize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every block from −∞ along dim 0 of (B, N, C): the last states and the max of τ = log w − log u."""
    s = np.full(lw.shape[1:], -_INF)
    top, tau = np.empty_like(s), np.empty_like(s)
    take = np.empty(lw.shape[1:], dtype=bool)
    for t, (lw_t, lu_t) in enumerate(zip(lw, lu)):
        tau_t = np.subtract(lw_t, lu_t, out=tau if t else top)
        if sanitize:
            np.nan_to_num(tau_t, copy=False, nan=-_INF, posinf=_INF, neginf=-_INF)
        if t:
            np.maximum(top, tau_t, out=top)
        s = np.where(np.less(s, tau_t, out=take), lw_t, s)
    return s, top


def _exact_pass(lw: np.ndarray, lu: np.ndarray, entry: np.ndarray, fresh_rule: bool, accepted: np.ndarray,
                steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sequential rule log u < log w' − log w along dim 0 of (B, N, C) from ``entry``: `nmcmc._exact_pass`.
    Writes the decisions into ``accepted``; returns the last states (N, C) and ``index`` (B, N, C), the
    largest of ``steps`` (the steps' ids, ≥ 1) taken so far in the block (0: none)."""
    s = np.broadcast_to(entry, lw.shape[1:])
    d = np.empty(lw.shape[1:])
    for lw_t, lu_t, acc_t in zip(lw, lu, accepted):
        take = np.less(lu_t, np.subtract(lw_t, s, out=d), out=acc_t)
        if fresh_rule:
            np.logical_or(take, (s == -_INF) & (lw_t > -_INF), out=take)
        s = np.where(take, lw_t, s)
    index = np.multiply(steps, accepted)
    for t in range(1, len(index)):  # a running max along dim 0 (numpy's accumulate is slow along it)
        np.maximum(index[t - 1], index[t], out=index[t])
    return s, index


def steps_numpy(log_weight: np.ndarray, log_u: np.ndarray, current: np.ndarray, current_run: np.ndarray,
                block: int = 8, fresh_rule: bool = False, sanitize: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """`nmcmc._steps` on numpy arrays: float64 (K, C) log-weights and log-uniforms, the chains' current
    log-weights (C,) and rejection runs (C,). Returns (index (K, C) int32, accepted (K, C), run after the batch,
    longest run in it, ok), identical to the tensor version."""
    k, c = log_weight.shape
    run = current_run.astype(np.int32)
    if k == 0:
        return np.zeros((0, c), np.int32), np.zeros((0, c), bool), run, np.zeros_like(run), True
    nb = -(-k // block)
    block = k if nb == 1 else block
    with np.errstate(invalid="ignore"):
        lw, lu = _blocks(log_weight, nb, block, -_INF), _blocks(log_u, nb, block, 0.0)
        e = current.reshape(1, c)
        if nb > 1:
            e = _entries(*_first_pass(lw, lu, sanitize), current, block)
        off = run + 1  # step j is the integer j + off; the state before the batch (step −1 − run) is 0
        steps = (np.arange(0, nb * block, block, dtype=np.int32).reshape(nb, 1) + off
                 + np.arange(block, dtype=np.int32).reshape(block, 1, 1))
        accepted = np.empty((block, nb, c), dtype=bool)
        last, index = _exact_pass(lw, lu, e, fresh_rule, accepted, steps)
    ok = True
    if nb > 1:
        ok = bool(np.array_equal(last[:-1].view(np.int64), e[1:].view(np.int64)))
        # before its first step taken a block is in the state of the last step taken before it (or before the batch)
        np.maximum(index[:, 1:], np.maximum.accumulate(index[-1, :-1], axis=0), out=index[:, 1:])
    if nb * block != k:  # padded steps count as the last one: no run grows there
        np.minimum(steps, off + (k - 1), out=steps)
    runs = np.subtract(steps, index, out=steps)  # the rejection run at each step
    for t in range(1, block):
        np.maximum(runs[0], runs[t], out=runs[0])
    longest = runs[0].max(axis=0)
    index -= off
    index = _time_major(index, k)
    accepted = np.equal(index, np.arange(k, dtype=np.int32).reshape(k, 1))  # the state is this step's proposal
    return index, accepted, (k - 1 - index[-1]).astype(np.int32), longest, ok
