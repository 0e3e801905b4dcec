"""Callbacks of the training loop (`latticeflow.training.loop`), each one job:

- `WallTimeBudget`: stop once the training clock (resumes included) reaches ``seconds``; under MPI rank 0's
  clock, broadcast every step, so every rank stops at the same step;
- `Validation`: held-out NLL = −⟨log q(x)⟩ and forward ESS (log w = −S(x) − log q(x)) in the metrics rows;
  with early stopping the best flow is kept (``best.pt``) and ``patience`` validations without one stop;
- `MetricsCSV`: append every row to a CSV file (`METRIC_FIELDS`);
- `Progress`: a tqdm bar with the KL and reverse ESS of the last row;
- `OnRow`: call a function with every row;
- `Checkpoint`: atomic checkpoints every ``every`` steps and at the last step (exact resume);
- `EvaluateEvery`: evaluation off the clock: a function every so many seconds of training time or steps,
  with the training clock paused, so that benchmarks measure during training without counting it.
"""
from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..analysis import forward_ess
from ..gradients import log_weights
from .loop import METRIC_FIELDS, Callback, Loop

__all__ = ["WallTimeBudget", "Validation", "MetricsCSV", "Progress", "OnRow", "Checkpoint", "EvaluateEvery",
           "held_out_metrics", "best_checkpoint_path"]


def _safe_ess(ess, log_weight: torch.Tensor) -> float:
    """ESS of finite log-weights; NaN for a batch with NaN/inf (that step is skipped anyway)."""
    return ess(log_weight) if bool(torch.isfinite(log_weight).all()) else float("nan")


def held_out_metrics(flow, action, data: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """NLL = −⟨log q(x)⟩ and forward ESS (log w = −S(x) − log q(x)) on held-out target samples ``data``."""
    weights = log_weights(flow, action, data, chunk=batch)
    return {"val_nll": float(-weights.log_q.mean()), "val_forward_ess": _safe_ess(forward_ess, weights.log_weight)}


def best_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """``best.pt`` beside a checkpoint: the state with the lowest validation NLL (train.early_stopping)."""
    return Path(checkpoint_path).with_name("best.pt")


class WallTimeBudget(Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_start(self, loop: Loop) -> None:
        if loop.driver.wall_time >= self.seconds:
            loop.stop = "seconds"  # spent before this process (its last step is in the checkpoint)

    def on_step(self, loop: Loop, metrics: dict[str, float]) -> None:
        driver = loop.driver
        if driver.world.distributed:
            driver.wall_time = float(driver.world.bcast(driver.wall_time))  # rank 0's clock for all
        if driver.wall_time >= self.seconds:
            loop.stop = "seconds"


class Validation(Callback):
    """Held-out metrics on the logged rows every ``trainer.validate_every`` steps (default every row), at the
    last step and at the first row; the best flow by validation NLL is kept in ``trainer.best`` (and, with
    early stopping, written to ``best.pt`` beside ``checkpoint_path``)."""

    def __init__(self, checkpoint_path: str | Path | None = None) -> None:
        self.checkpoint_path = checkpoint_path

    def on_start(self, loop: Loop) -> None:
        if loop.driver.stopped_early:
            loop.stop = "early_stopping"

    def on_row(self, loop: Loop, row: dict[str, float]) -> None:
        trainer = loop.driver
        every = trainer.validate_every or loop.log_every
        if not (trainer.step_count % every == 0 or loop.last or trainer.best["step"] is None):
            return
        metrics = held_out_metrics(trainer.flow, trainer.action, trainer.validation)
        row.update(metrics)
        if metrics["val_nll"] < trainer.best["val_nll"]:
            trainer.best = {"val_nll": metrics["val_nll"], "step": trainer.step_count,
                            "flow": {k: v.detach().clone() for k, v in trainer.flow.state_dict().items()}}
            trainer.since_best = 0
            if trainer.early_stopping and self.checkpoint_path is not None:
                from ..io import save_checkpoint

                save_checkpoint(best_checkpoint_path(self.checkpoint_path), trainer.state_dict())
        else:
            trainer.since_best += 1
            if trainer.early_stopping and trainer.patience is not None and trainer.since_best >= trainer.patience:
                trainer.stopped_early = True
        if trainer.world.distributed:  # one decision for all ranks (round-off may differ)
            trainer.stopped_early = bool(trainer.world.bcast(trainer.stopped_early))
        if trainer.stopped_early:
            loop.stop = "early_stopping"


class MetricsCSV(Callback):
    """Append every row to ``path`` (header first if the file is new)."""

    def __init__(self, path: str | Path) -> None:
        self.path, self.fh, self.writer = Path(path), None, None

    def on_start(self, loop: Loop) -> None:
        if loop.stop is None:
            new = not self.path.exists()
            self.fh = open(self.path, "a", newline="")
            self.writer = csv.DictWriter(self.fh, fieldnames=METRIC_FIELDS)
            if new:
                self.writer.writeheader()

    def on_row(self, loop: Loop, row: dict[str, float]) -> None:
        self.writer.writerow(row)
        self.fh.flush()

    def on_end(self, loop: Loop) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class Progress(Callback):
    def __init__(self, total: int | None) -> None:
        self.total, self.bar = total, None

    def on_start(self, loop: Loop) -> None:
        from tqdm.auto import tqdm

        if loop.stop is None:
            self.bar = tqdm(total=self.total, initial=loop.driver.step_count, desc="train", unit="step",
                            mininterval=0.5)

    def on_step(self, loop: Loop, metrics: dict[str, float]) -> None:
        self.bar.update(1)

    def on_row(self, loop: Loop, row: dict[str, float]) -> None:
        self.bar.set_postfix(kl=f"{row['loss']:.3f}", ess=f"{row['reverse_ess']:.3f}", refresh=False)

    def on_end(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()


class OnRow(Callback):
    def __init__(self, fn: Callable[[dict], None]) -> None:
        self.fn = fn

    def on_row(self, loop: Loop, row: dict[str, float]) -> None:
        self.fn(row)


class Checkpoint(Callback):
    """``save_checkpoint(path, driver.state_dict())`` every ``every`` steps and at the last step, with the
    training clock as it stands (``wall_time``). Not inside a run of non-finite steps (the weights that made
    them are no good state to resume from): such a checkpoint is written after the next finite step, and a
    diverged run (`Diverged`) keeps the last checkpoint before the run."""

    def __init__(self, path: str | Path, every: int) -> None:
        self.path, self.every, self.pending = path, every, False

    def after_step(self, loop: Loop) -> None:
        from ..io import save_checkpoint

        due = self.pending or loop.driver.step_count % self.every == 0 or loop.last
        self.pending = due and bool(getattr(loop.driver, "bad_in_row", 0)) and not loop.last
        if due and not self.pending:
            save_checkpoint(self.path, {**loop.driver.state_dict(), "wall_time": loop.clock.elapsed})


class EvaluateEvery(Callback):
    """Evaluation off the clock: ``fn(wall_time, step)`` at the first step at or past every multiple of
    ``seconds`` of training time (or of ``steps`` steps), with the training clock paused. ``final``: True
    also evaluates at the loop's last step, False never there, None as the marks say. ``offset`` =
    (seconds, steps) is added to the driver's clock and step count (several drivers on one axis, e.g. the
    stages of an annealed run). What ``fn`` returns (unless None) is appended to ``history``; ``seconds``
    sums the time spent in ``fn``. `evaluate` evaluates at once (e.g. before and after training).

    Example (an ESS curve against training time, its evaluation not counted):
        ``ev = EvaluateEvery(lambda t, step: {"wall_time": t, "ess": ess_now()}, seconds=5.0)``,
        ``trainer.train(None, seconds=60.0, callbacks=[ev])``; then ``ev.history``.
    """

    def __init__(self, fn: Callable[[float, int], Any], *, seconds: float | None = None, steps: int | None = None,
                 final: bool | None = None, history: list | None = None) -> None:
        if (seconds is None) == (steps is None) or not (seconds or steps) > 0:
            raise ValueError(f"EvaluateEvery needs seconds > 0 or steps > 0, got seconds={seconds}, steps={steps}")
        self.fn, self.every, self.by_time, self.final = fn, seconds or steps, seconds is not None, final
        self.next, self.offset = self.every, (0.0, 0)
        self.history = [] if history is None else history
        self.seconds = 0.0

    def evaluate(self, driver=None) -> Any:
        wall_time = self.offset[0] + (driver.wall_time if driver is not None else 0.0)
        step = self.offset[1] + (driver.step_count if driver is not None else 0)
        t0 = time.perf_counter()
        out = self.fn(wall_time, step)
        self.seconds += time.perf_counter() - t0
        if out is not None:
            self.history.append(out)
        return out

    def on_step(self, loop: Loop, metrics: dict[str, float]) -> None:
        now = (self.offset[0] + loop.driver.wall_time) if self.by_time else (self.offset[1] + loop.driver.step_count)
        due = now >= self.next
        while self.next <= now:
            self.next += self.every
        if loop.last and self.final is not None:
            due = self.final
        if due:
            with loop.clock.paused():
                self.evaluate(loop.driver)
