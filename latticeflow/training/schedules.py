"""Learning-rate schedules of the `Trainer`: plateau decay (``ReduceLROnPlateau``) or linear warm-up then
cosine decay (:func:`cosine_lr`, :class:`CosineSchedule`) over a budget in steps and/or seconds."""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["cosine_lr", "CosineSchedule", "make_scheduler"]


def cosine_lr(progress: float, lr: float, lr_min: float = 0.0, warmup: float = 0.0) -> float:
    """Learning rate at schedule progress p ∈ [0, 1] (values beyond are clipped) with warm-up fraction w:

        η(p) = η · p / w                                          for p < w   (linear warm-up from 0),
        η(p) = η_min + ½ (η − η_min) (1 + cos(π (p − w) / (1 − w)))   for w ≤ p ≤ 1   (cosine decay),

    so η(w) = η (``lr``) and η(1) = η_min (``lr_min``, an absolute learning rate).

    Example:
        >>> cosine_lr(0.05, 1e-3, warmup=0.1), cosine_lr(0.1, 1e-3, warmup=0.1), cosine_lr(1.0, 1e-3, 1e-5)
        (0.0005, 0.001, 1e-05)
    """
    p = min(max(float(progress), 0.0), 1.0)
    if p < warmup:
        return lr * p / warmup
    q = (p - warmup) / (1 - warmup) if warmup < 1 else 0.0
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * q))


class CosineSchedule:
    """Linear warm-up over ``warmup_steps`` steps, then cosine decay to ``lr_min`` (:func:`cosine_lr`).

    The update of step k (0-based) uses η(p) at p = max((k + 1)/steps, t/seconds), t the accumulated
    training wall time before the step: with a step budget only, the first update has η/W (W =
    ``warmup_steps``), update W has η and the last η_min; when a wall-time budget ``seconds`` binds
    first, the schedule follows the elapsed fraction of it, so a time-budgeted run also ends annealed
    (the warm-up is then the first W/steps of the budget, or less). With a budget in seconds only
    (``steps`` None) the decay follows t/seconds and the warm-up counts steps:
    η = cosine_lr(t/seconds) · min(1, (k + 1)/W). The schedule length (``steps``, ``seconds``) is set by
    :meth:`Trainer.train`.

    The learning rate is a pure function of the step and the wall time, both in every checkpoint, so the
    schedule has no state of its own: a resumed step-budgeted run follows the same learning rates
    bitwise (a time-budgeted one cannot be bitwise reproducible anyway). ``state_dict`` records the
    settings for the reader of a checkpoint.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, lr_min: float = 0.0, warmup_steps: int = 0,
                 steps: int | None = None, seconds: float | None = None) -> None:
        self.optimizer, self.lr, self.lr_min, self.warmup_steps = optimizer, lr, lr_min, warmup_steps
        self.steps, self.seconds = steps, seconds

    def progress(self, step: int, wall_time: float) -> float:
        """p = max((step + 1)/steps, wall_time/seconds), at most 1, for the update of step ``step``."""
        if self.steps is None and self.seconds is None:
            raise ValueError("the cosine schedule needs its length: call Trainer.train(n_steps) (or set .steps)")
        p = 0.0 if self.steps is None else (step + 1) / self.steps
        if self.seconds is not None:
            p = max(p, wall_time / self.seconds)
        return min(p, 1.0)

    def set_lr(self, step: int, wall_time: float) -> float:
        """Put the learning rate of the update of step ``step`` into every parameter group; returns it."""
        p = self.progress(step, wall_time)
        if self.steps is None:  # a budget in seconds only: warm-up in steps, decay in time
            lr = cosine_lr(p, self.lr, self.lr_min) * min(1.0, (step + 1) / max(self.warmup_steps, 1))
        else:
            lr = cosine_lr(p, self.lr, self.lr_min, self.warmup_steps / self.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"name": "cosine", "lr": self.lr, "lr_min": self.lr_min, "warmup_steps": self.warmup_steps,
                "steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: the learning rate follows from step and wall time (see the class)."""


def make_scheduler(name: str | None, optimizer: torch.optim.Optimizer, *, lr: float, lr_min: float = 0.0,
                   warmup_steps: int = 0, plateau_patience: int = 500, plateau_factor: float = 0.5):
    """None (constant ``lr``), ``plateau`` (``ReduceLROnPlateau``) or ``cosine`` (:class:`CosineSchedule`)."""
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=plateau_factor, patience=plateau_patience)
    if name == "cosine":
        return CosineSchedule(optimizer, lr, lr_min, warmup_steps)
    return None
