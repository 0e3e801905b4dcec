"""How noisy a gradient estimator is at the current parameters (the paper's "sticking the landing": at q = p
the path gradient of the reverse KL has zero variance, the standard one does not; Vaitl et al., ICLR 2024).

`gradient_variance` draws ``n_batches`` mini-batches of base samples (one generator seeded by ``seed``: the
same batches for every estimator and every call with that seed), takes one reverse-KL gradient per batch
and estimator (`latticeflow.gradients.reverse_kl`), and summarises each estimator's gradients by
`latticeflow.analysis.summary.trace_covariance`: tr Cov[g] (mean and lower median over batches) and |ḡ|².
`saved_tensors_mib` is a CPU proxy of the memory of a step's autograd graph.

`flow_quality`: the figures of a trained flow q against the target p = e^{−S}/Z, off the training clock, on
base samples z (x = T(z) ~ q) and on target samples (e.g. `training.data.hmc_reference`):

    loss = mean(log q + S) = KL(q‖p) − ln Z,   ESS/N = (Σw)² / (N Σw²),  log w = −S − log q    (reverse),
    forward ESS/N = 1 / (mean_p w · mean_p 1/w)                                              (Nicoli et al. 2021),

with delete-one-block jackknife errors (heavy-tailed weights make any such error an underestimate when the
ESS is small), KL = loss + ln Z where the exact ln Z is known, and the acceptance of an independence
Metropolis chain fed with the proposals (`latticeflow.samplers.nmcmc.metropolize`).
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..analysis import forward_ess
from ..analysis.diagnostics import reverse_ess_with_error
from ..analysis.summary import block_jackknife, trace_covariance
from ..gradients import log_weights, reverse_kl
from ..samplers.nmcmc import metropolize

__all__ = ["gradient_variance", "saved_tensors_mib", "log_q_plus_s", "flow_quality", "warm_up"]


def gradient_variance(flow, action, *, n_batches: int, batch_size: int, seed: int,
                      estimators: Sequence[str] = ("standard", "fast_path")) -> dict[str, dict[str, float]]:
    """{estimator: {"trace", "median", "mean_sq"}} over ``n_batches`` batches of ``batch_size`` (float64)."""
    params = [p for p in flow.parameters() if p.requires_grad]
    gen = torch.Generator(device=flow.base._ref.device).manual_seed(seed)
    grads: dict[str, list[torch.Tensor]] = {e: [] for e in estimators}
    for _ in range(n_batches):
        z = flow.base.sample((batch_size,), generator=gen)
        for e in estimators:
            g = torch.autograd.grad(reverse_kl(flow, action, z, e), params, allow_unused=True)
            grads[e].append(torch.cat([(torch.zeros_like(p) if d is None else d).reshape(-1)
                                       for p, d in zip(params, g)]).double())
    return {e: trace_covariance(torch.stack(gs)) for e, gs in grads.items()}


def saved_tensors_mib(fn: Callable[[], object]) -> float:
    """MiB of the distinct storages (deduplicated by address) that ``fn()`` saves for backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(RuntimeError):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def log_q_plus_s(flow, action, z: torch.Tensor) -> np.ndarray:
    """log q(x) + S(x) = −log w for x = T(z), ``z``: base samples; float64 numpy, chunks of 1024."""
    return -log_weights(flow, action, z, from_base=True, chunk=1024).log_weight.cpu().numpy()


def flow_quality(flow, action, z: torch.Tensor, *, x_target: torch.Tensor, target_chains: int, log_u: np.ndarray,
                 log_z: float | None = None, n_blocks: int = 32) -> dict[str, Any]:
    """{"ess", "ess_err", "loss", "kl", "kl_err", "forward_ess", "forward_ess_err", "nmcmc_acceptance"} of the
    module docstring. ``z``: base samples; ``x_target``: chain-major target samples of ``target_chains`` chains
    (the forward ESS's jackknife blocks, which also covers autocorrelation within a chain); ``log_u``: log of
    uniform randoms, one per proposal; ``log_z``: exact ln Z in the flow's measure (None: KL is None). The
    reverse figures and the acceptance are NaN where some log-weight is not finite."""
    a = log_q_plus_s(flow, action, z)
    finite = bool(np.all(np.isfinite(a)))
    ess, ess_err = reverse_ess_with_error(-a, n_blocks) if finite else (math.nan, math.nan)
    out: dict[str, Any] = {"ess": ess, "ess_err": ess_err, "loss": float(a.mean()),
                           "kl": float(a.mean() + log_z) if log_z is not None else None,
                           "kl_err": float(a.std(ddof=1) / math.sqrt(a.size)) if log_z is not None else None}
    lw = log_weights(flow, action, x_target.to(dtype=z.dtype, device=z.device), chunk=1024).log_weight.cpu().numpy()
    ok = bool(np.all(np.isfinite(lw)))
    out["forward_ess"] = forward_ess(lw) if ok else math.nan
    out["forward_ess_err"] = block_jackknife(forward_ess, lw, target_chains) if ok else math.nan
    idx = metropolize(-a, log_u, -math.inf) if finite else None
    out["nmcmc_acceptance"] = float(np.mean(idx[1:] != idx[:-1])) if idx is not None else math.nan
    return out


def warm_up(flow, action, **settings: Any) -> None:
    """One untimed `Trainer` step on a throwaway copy of ``flow`` (lazy initialisations, the allocator), so that
    a timed run measures the steady state."""
    from .trainer import Trainer

    Trainer(copy.deepcopy(flow), action, **settings).step()
