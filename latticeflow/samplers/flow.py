"""Independent samples from a flow with their importance weights.

x ~ q_θ, log q_θ(x) exact, log-weight log w = −S(x) − log q_θ(x) (so that ⟨O⟩_p = E_q[w O]/E_q[w] and
Z = E_q[w]); produced in batches under ``torch.no_grad`` so memory stays bounded whatever the total.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["FlowBatch", "flow_batches"]


@dataclass
class FlowBatch:
    """One batch of flow samples: ``x (B, …)``, ``log_q (B,)``, ``action (B,)``, ``log_weight (B,)``."""

    x: torch.Tensor
    log_q: torch.Tensor
    action: torch.Tensor
    log_weight: torch.Tensor


@torch.no_grad()
def flow_batches(flow, action, n_samples: int, batch_size: int,
                 generator: torch.Generator | None = None) -> Iterator[FlowBatch]:
    """Yield ``ceil(n_samples / batch_size)`` batches whose sizes add up to ``n_samples``."""
    done = 0
    while done < n_samples:
        b = min(batch_size, n_samples - done)
        x, log_q = flow.sample(b, generator=generator)
        s = action.action(x)
        yield FlowBatch(x, log_q, s, -s - log_q)
        done += b
