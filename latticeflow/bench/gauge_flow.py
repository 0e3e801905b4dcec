"""The flow of the gauge-theory efficiency benchmarks: the default `u1` flow trained by reverse KL (fast path,
float32) at one β, starting from the previous β's weights (β-annealed transfer; the plaquette-marginal layer
restarts from the new β's exact single-plaquette marginal)."""
from __future__ import annotations

import torch

from ..flows import build_flow
from ..flows.u1_plaquette import PlaquetteMarginal
from ..training import Trainer, transfer_state

__all__ = ["anneal_from", "train_gauge_flow"]


def anneal_from(flow, previous, lattice: tuple[int, ...]) -> None:
    """Load ``previous``'s weights into ``flow`` (same architecture, another β), except the plaquette-
    marginal layer, which keeps ``flow``'s own exact single-plaquette initialisation at the new β."""
    transfer_state(flow, previous.state_dict(), lattice=lattice, keep=(PlaquetteMarginal,))


def train_gauge_flow(theory, previous, batch_size: int, seconds: float, seed: int) -> Trainer:
    """Train the `u1` flow on ``theory`` (pure U(1) or the Schwinger model: its action is the target) for
    ``seconds`` of wall time, from ``previous`` (a flow at another β) where given; returns the trainer."""
    torch.manual_seed(seed)
    flow = build_flow({"family": "u1"}, theory).to(torch.float32)
    if previous is not None:
        anneal_from(flow, previous, tuple(theory.shape))
    trainer = Trainer(flow, theory, objective="reverse_kl", estimator="fast_path", batch_size=batch_size, lr=1e-3,
                      scheduler="cosine", warmup_steps=10, seed=seed)
    trainer.train(10 ** 6, seconds=seconds, log_every=10 ** 6, progress=False)
    return trainer
