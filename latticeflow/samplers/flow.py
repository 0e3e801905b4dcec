"""Independent samples from a flow with their importance weights.

x ~ q_θ, log q_θ(x) exact, log-weight log w = −S(x) − log q_θ(x) (so that ⟨O⟩_p = E_q[w O]/E_q[w] and
Z = E_q[w]); produced in batches under ``torch.no_grad`` so memory stays bounded whatever the total.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["FlowBatch", "flow_batches", "sample_chunked"]

#: flow evaluations run in chunks of at most this many configurations: larger tensors fall out of the
#: CPU caches (measured on φ⁴ 16×8: 2.6k configurations/s at 1024–2048, 1.7k/s at 4096)
SAMPLE_CHUNK = 1024


@dataclass
class FlowBatch:
    """One batch of flow samples: ``x (B, …)``, ``log_q (B,)``, ``action (B,)``, ``log_weight (B,)``."""

    x: torch.Tensor
    log_q: torch.Tensor
    action: torch.Tensor
    log_weight: torch.Tensor


@torch.no_grad()
def sample_chunked(flow, n: int, generator: torch.Generator | None = None,
                   chunk: int = SAMPLE_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """``flow.sample(n)`` evaluated in chunks of ``chunk`` configurations (same distribution)."""
    if n <= chunk:
        return flow.sample(n, generator=generator)
    parts = [flow.sample(min(chunk, n - i), generator=generator) for i in range(0, n, chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def flow_batches(flow, action, n_samples: int, batch_size: int,
                 generator: torch.Generator | None = None) -> Iterator[FlowBatch]:
    """Yield ``ceil(n_samples / batch_size)`` batches whose sizes add up to ``n_samples``."""
    done = 0
    while done < n_samples:
        b = min(batch_size, n_samples - done)
        x, log_q = sample_chunked(flow, b, generator=generator)
        s = action.action(x)
        yield FlowBatch(x, log_q, s, -s - log_q)
        done += b
