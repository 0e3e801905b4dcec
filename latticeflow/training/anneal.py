"""β annealing: a flow trained at a sequence of couplings β_1, β_2, …, β_target, the stages one after the other
on one training-time axis, as in the annealed training of U(1) flows where HMC freezes (Kanwar et al., PRL
125, 121601 (2020)).

`anneal_stages` checks a schedule ``[[β_1, f_1], [β_2, f_2], …]`` (f_i: the fraction of the budget spent at
β_i); `train_annealed` trains stage i on its action for f_i of the budget by a fresh `Trainer` (fresh Adam
state, seed ``seed + i``), the last stage for what is left of it, and stops at the first stage that ends on
repeated non-finite steps (`TrainingError`). An `EvaluateEvery` sees one time axis across the stages.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .callbacks import EvaluateEvery
from .trainer import Trainer, TrainingError

__all__ = ["anneal_stages", "train_annealed"]


def anneal_stages(anneal, beta: float | None) -> list[tuple[float | None, float]]:
    """A β-annealing schedule ``[[β_1, f_1], [β_2, f_2], …]`` as [(β_i, f_i)], checked: every β and f > 0,
    Σ f = 1, the last β the target's ``beta``. None or empty: [(None, 1.0)], one stage at the target's action.

    Example:
        >>> anneal_stages([[2, 0.25], [6, 0.75]], 6.0)
        [(2.0, 0.25), (6.0, 0.75)]
    """
    if not anneal:
        return [(None, 1.0)]
    if beta is None:
        raise ValueError("anneal is a schedule in beta, and the target has no coupling beta")
    try:
        stages = [(float(b), float(f)) for b, f in anneal]
    except (TypeError, ValueError):
        raise ValueError(f"anneal must be a list of [beta, fraction] pairs, got {anneal!r}") from None
    if any(not (b > 0 and f > 0) for b, f in stages):
        raise ValueError(f"anneal: every beta and fraction must be > 0, got {anneal!r}")
    if abs(sum(f for _, f in stages) - 1) > 1e-6:
        raise ValueError(f"anneal: the fractions must sum to 1, got {sum(f for _, f in stages):g}")
    if stages[-1][0] != beta:
        raise ValueError(f"anneal: the last stage must be the target's beta = {beta:g}, got {stages[-1][0]:g}")
    return stages


def train_annealed(flow, stages: Sequence[tuple[Any, float]], *, seconds: float, seed: int,
                   evaluation: EvaluateEvery | None = None, on_stage: Callable[[int], None] | None = None,
                   **settings: Any) -> dict[str, Any]:
    """Train ``flow`` for ``seconds`` of training time over ``stages`` = [(action, fraction)] (module doc);
    ``settings`` go to every `Trainer`; ``on_stage(i)`` before stage i. ``evaluation`` is a callback of every
    stage, offset by the time and steps of the stages before it (it does not evaluate at the end of a stage
    but the last; afterwards its offset is the total). Returns {"seconds", "steps", "n_skipped", "error"}
    (``error``: the message of the `TrainingError` that stopped training, or None)."""
    out: dict[str, Any] = {"seconds": 0.0, "steps": 0, "n_skipped": 0, "error": None}
    for i, (action, fraction) in enumerate(stages):
        if on_stage is not None:
            on_stage(i)
        trainer = Trainer(flow, action, seed=seed + i, **settings)
        last = i == len(stages) - 1
        budget = seconds - out["seconds"] if last else fraction * seconds
        if evaluation is not None:
            evaluation.offset, evaluation.final = (out["seconds"], out["steps"]), (False if last else None)
        try:
            if budget > 0:
                trainer.train(None, seconds=budget, log_every=10**9, progress=False,
                              callbacks=[evaluation] if evaluation is not None else [])
        except TrainingError as err:
            out["error"] = str(err)
        out["seconds"] += trainer.wall_time
        out["steps"] += trainer.step_count
        out["n_skipped"] += trainer.n_skipped
        if out["error"]:
            break
    if evaluation is not None:
        evaluation.offset = (out["seconds"], out["steps"])
    return out
