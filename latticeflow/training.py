"""Training loop for flows: reverse KL (self-sampling), forward KL (maximum likelihood on target
samples, e.g. an HMC ensemble) or a mixture, with any estimator of `latticeflow.gradients`.

Adam, an optional learning-rate schedule (plateau decay, or linear warm-up then cosine decay, see
:func:`cosine_lr`), grad-norm clipping, a non-finite guard (a step whose loss
or gradient is NaN/inf is skipped and counted; ``max_bad_steps`` in a row stop training with a clear
message), metrics per interval (KL up to log Z, reverse ESS, forward ESS when data are given, grad
norm, lr, steps/s, wall time) and atomic checkpoints holding everything needed for an exact resume
(flow, optimiser, scheduler, random-number generator, step).

Budgets: training stops after ``n_steps`` steps in total or, with ``seconds``, once the accumulated
training wall time (this process and every one before a resume) reaches ``seconds``, whichever comes
first; the last row and checkpoint are written at that step, so a resumed run does not redo it.

Transfer: :func:`transfer_state` loads the weights of a flow trained on another lattice (size,
coupling or β) into a flow of the same architecture: convolution weights do not depend on the
lattice and carry over; lattice-shaped tensors are adapted (see there).

Data parallel under MPI (``world`` of :mod:`latticeflow.distributed` with N ranks): ``batch_size`` is the
global batch B. Every rank draws the same B base samples (or data indices) from the shared generator and
keeps its contiguous slice of B/N, so the all-reduced mean of the per-rank gradients is the gradient of
the one-process loss on the same B samples; loss values and log-weights are gathered, so every metric
(KL, reverse and forward ESS) is that of the global batch, and every rank takes the same decisions
(skipped steps, clipping, learning rate). Only rank 0 writes metrics, checkpoints and progress.
"""
from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .analysis import forward_ess, reverse_ess
from .distributed import World, all_reduce_step, broadcast_module, init_torch_distributed
from .flows import SelfNormalizing, collect_reconstruction, self_normalized_training
from .gradients import forward_kl, reverse_kl

__all__ = ["Trainer", "TrainingError", "METRIC_FIELDS", "CosineSchedule", "cosine_lr", "transfer_state",
           "ArchitectureMismatch", "held_out_metrics", "best_checkpoint_path"]

METRIC_FIELDS = ("step", "loss", "reverse_kl", "forward_kl", "reverse_ess", "forward_ess", "grad_norm", "lr",
                 "steps_per_s", "wall_time", "n_skipped", "reconstruction", "val_nll", "val_forward_ess")


@torch.no_grad()
def held_out_metrics(flow, action, data: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """NLL = −⟨log q(x)⟩ and forward ESS (log w = −S(x) − log q(x)) on held-out target samples ``data``."""
    log_q, log_w = [], []
    for chunk in torch.split(data, batch):
        lq = flow.log_prob(chunk)
        log_q.append(lq.double())
        log_w.append((-action.action(chunk) - lq).double())
    lq, lw = torch.cat(log_q), torch.cat(log_w)
    return {"val_nll": float(-lq.mean()), "val_forward_ess": _safe(forward_ess, lw)}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses)."""


def _safe(ess, log_weight: torch.Tensor) -> float:
    """ESS of finite log-weights; NaN for a batch with NaN/inf (that step is skipped anyway)."""
    if not bool(torch.isfinite(log_weight).all()):
        return float("nan")
    return ess(log_weight)


@dataclass
class _Interval:
    n: int = 0
    n_good: int = 0
    loss: float = 0.0
    rev: float = 0.0
    fwd: float = 0.0
    n_rev: int = 0
    n_fwd: int = 0
    rev_ess: float = 0.0
    fwd_ess: float = 0.0
    grad_norm: float = 0.0
    rec: float = 0.0
    n_rec: int = 0


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
    (the warm-up is then the first W/steps of the budget, or less). The schedule length (``steps``,
    ``seconds``) is set by :meth:`Trainer.train`.

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
        if self.steps is None:
            raise ValueError("the cosine schedule needs its length: call Trainer.train(n_steps) (or set .steps)")
        p = (step + 1) / self.steps
        if self.seconds is not None:
            p = max(p, wall_time / self.seconds)
        return min(p, 1.0)

    def set_lr(self, step: int, wall_time: float) -> float:
        """Put the learning rate of the update of step ``step`` into every parameter group; returns it."""
        lr = cosine_lr(self.progress(step, wall_time), self.lr, self.lr_min, self.warmup_steps / self.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"name": "cosine", "lr": self.lr, "lr_min": self.lr_min, "warmup_steps": self.warmup_steps,
                "steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: the learning rate follows from step and wall time (see the class)."""


def _adam(flow, lr: float) -> torch.optim.Adam:
    """Adam; fused (one pass per parameter, 10× faster than the loop for the D × D matrices of
    self-normalizing flows) for flows with self-normalizing layers, where the device supports it.
    Other flows keep the loop implementation (same updates up to rounding, and reproducible runs)."""
    params = list(flow.parameters())
    if any(isinstance(m, SelfNormalizing) for m in flow.modules()):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr)


class Trainer:
    """Optimises ``flow`` towards e^{−S}/Z.

    ``objective``: ``reverse_kl``, ``forward_kl`` or ``mixed`` (loss = (1 − w) reverse + w forward with
    w = ``forward_weight``); forward KL needs ``data`` (target samples, ``(N, *field_shape)``).
    Self-normalizing layers (family ``snf``) add λ Σ_l ρ_l, their reconstruction losses, with
    λ = ``reconstruction_weight`` (reported as ``reconstruction``, not part of the KL).
    ``world`` (:class:`latticeflow.distributed.World`, default one process): data-parallel ranks;
    ``batch_size`` is then the global batch.
    ``scheduler``: None (constant ``lr``), ``plateau`` (``ReduceLROnPlateau`` with ``plateau_patience``,
    ``plateau_factor``) or ``cosine`` (:class:`CosineSchedule`: ``warmup_steps``, then decay to ``lr_min``
    over the steps and seconds given to :meth:`train`).
    """

    def __init__(self, flow, action, *, objective: str = "reverse_kl", estimator: str = "fast_path",
                 forward_estimator: str | None = None, batch_size: int = 256, lr: float = 1e-3,
                 grad_clip: float | None = 1.0, scheduler: str | None = None, plateau_patience: int = 500,
                 plateau_factor: float = 0.5, data: torch.Tensor | None = None, forward_weight: float = 0.5,
                 seed: int = 0, max_bad_steps: int = 10, reconstruction_weight: float = 10.0,
                 world: World | None = None, warmup_steps: int = 0, lr_min: float = 0.0,
                 validation: torch.Tensor | None = None, validate_every: int | None = None,
                 early_stopping: bool = False, patience: int | None = None) -> None:
        if objective not in ("reverse_kl", "forward_kl", "mixed"):
            raise ValueError(f"train.objective must be reverse_kl, forward_kl or mixed, got {objective!r}")
        if objective != "reverse_kl" and data is None:
            raise ValueError(f"train.objective {objective!r} needs target samples (train.data: an HDF5 ensemble)")
        if scheduler not in (None, "plateau", "cosine"):
            raise ValueError(f"train.scheduler must be null, 'plateau' or 'cosine', got {scheduler!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if not 0 <= lr_min <= lr:
            raise ValueError(f"train.lr_min must be in [0, train.lr = {lr:g}], got {lr_min!r}")
        self.flow, self.action = flow, action
        self.objective, self.estimator = objective, estimator
        if objective == "forward_kl":
            self.forward_estimator = estimator
        else:
            self.forward_estimator = forward_estimator or {"fast_path": "fast_path", "path_inverse": "gdreg"}.get(estimator, "standard")
        self.world = world or World()
        if batch_size % self.world.size:
            raise ValueError(f"train.batch_size {batch_size} is not divisible by the {self.world.size} MPI ranks "
                             f"(it is the global batch; each rank takes an equal share)")
        self.batch_size, self.grad_clip = batch_size, grad_clip
        local = batch_size // self.world.size
        self._shard = slice(self.world.rank * local, (self.world.rank + 1) * local)  # this rank's rows of a batch
        self.forward_weight = forward_weight
        self.reconstruction_weight = reconstruction_weight
        self.max_bad_steps = max_bad_steps
        self.optimizer = _adam(flow, lr)
        self.scheduler: Any = None
        if scheduler == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=plateau_factor,
                                                                        patience=plateau_patience)
        elif scheduler == "cosine":
            self.scheduler = CosineSchedule(self.optimizer, lr, lr_min, warmup_steps)
        ref = next(iter(flow.buffers()), None)
        self.device = ref.device if ref is not None else torch.device("cpu")
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        dtype = next(iter(flow.parameters()), torch.zeros(())).dtype  # e.g. float64 HMC samples, float32 flow
        self.data = None if data is None else torch.as_tensor(data).to(device=self.device, dtype=dtype)
        # held-out target samples: NLL and forward ESS every `validate_every` steps (default: every logged row)
        self.validation = None if validation is None else torch.as_tensor(validation).to(device=self.device, dtype=dtype)
        if validate_every is not None and (isinstance(validate_every, bool) or validate_every < 1):
            raise ValueError(f"train.validate_every must be an integer >= 1, got {validate_every!r}")
        if early_stopping and self.validation is None:
            raise ValueError("train.early_stopping needs held-out samples (train.validation)")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"train.patience must be an integer >= 1 or null, got {patience!r}")
        self.validate_every, self.early_stopping, self.patience = validate_every, bool(early_stopping), patience
        self.best: dict[str, Any] = {"val_nll": math.inf, "step": None, "flow": None}
        self.since_best = 0  # validations without a new best
        self.stopped_early = False
        init_torch_distributed(self.world, self.device)  # no-op with one rank or when already joined
        broadcast_module(flow, self.world)  # identical start on every rank, whatever the initialisation
        self.step_count = 0
        self.n_skipped = 0
        self.wall_time = 0.0  # training seconds before this process (from the checkpoint)
        self._elapsed = 0.0  # training seconds so far, all processes (the clock of budget and schedule)
        self.checkpoint_extra: dict[str, Any] = {}  # written into every checkpoint (e.g. the run's config)
        self._bad_in_row = 0

    # -- one optimisation step ----------------------------------------------------------------------
    def _terms(self) -> list[tuple[str, float, torch.Tensor]]:
        """(kind, weight, surrogate loss on this rank's slice of the global batch) per objective."""
        terms = []
        if self.objective in ("reverse_kl", "mixed"):
            z = self.flow.base.sample((self.batch_size,), generator=self.generator)[self._shard]
            rev = reverse_kl(self.flow, self.action, z, self.estimator)
            terms.append(("reverse", 1 - self.forward_weight if self.objective == "mixed" else 1.0, rev))
        if self.objective in ("forward_kl", "mixed"):
            idx = torch.randint(0, self.data.shape[0], (self.batch_size,), generator=self.generator, device=self.device)
            fwd = forward_kl(self.flow, self.action, self.data[idx[self._shard]], self.forward_estimator)
            terms.append(("forward", self.forward_weight if self.objective == "mixed" else 1.0, fwd))
        return terms

    @staticmethod
    def _metrics(values: torch.Tensor, rows: torch.Tensor, terms, has_rec: bool) -> tuple[float, dict[str, float]]:
        """Loss value, KL / ESS and reconstruction loss of the (global) batch from ``values`` =
        (loss, KL per term[, reconstruction]) and ``rows`` = log-weights, (ranks, terms × B/N)."""
        log_weights = rows.reshape(rows.shape[0], len(terms), -1) if terms else rows
        info: dict[str, float] = {}
        values_list = values.tolist()
        for i, ((kind, _, _), value) in enumerate(zip(terms, values_list[1:])):
            ess = reverse_ess if kind == "reverse" else forward_ess
            info[f"{kind}_kl"] = value
            info[f"{kind}_ess"] = _safe(ess, log_weights[:, i].reshape(-1))
        if has_rec:
            info["reconstruction"] = values_list[-1]
        return values_list[0], info

    def step(self) -> dict[str, float]:
        """One optimiser step; returns the step's metrics (``skipped`` = 1 if it was non-finite).

        Under MPI the step has one collective (:func:`latticeflow.distributed.all_reduce_step`): the
        gradients, loss values and log-weights of all ranks in one all-reduce; the skip decision is
        taken on the global loss, so every rank takes the same one.
        """
        if isinstance(self.scheduler, CosineSchedule):
            self.scheduler.set_lr(self.step_count, self._elapsed)
        self.optimizer.zero_grad(set_to_none=True)
        collect_reconstruction(self.flow)  # drop stale terms (none are made outside training steps)
        with self_normalized_training():
            terms = self._terms()
        loss = sum(w * t for _, w, t in terms)
        rec = collect_reconstruction(self.flow)  # a batch mean like the KL terms: averaged over ranks alike
        values = torch.stack([loss.detach(), *[t.detach() for _, _, t in terms],
                              *([] if rec is None else [rec.detach().to(loss.dtype)])])
        rows = torch.cat([t.log_weight.reshape(-1) for _, _, t in terms])
        if math.isfinite(float(values[0])):
            (loss if rec is None else loss + self.reconstruction_weight * rec).backward()
        params = [p for p in self.flow.parameters() if p.requires_grad]
        values, rows = all_reduce_step(params, values, rows, self.world)
        value, info = self._metrics(values, rows, terms, rec is not None)
        bad = not math.isfinite(value)  # the global KL loss
        grad_norm = float("nan")
        if not bad:
            params = [p for p in params if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else float("inf")))
            bad = not math.isfinite(grad_norm)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.n_skipped += 1
            self._bad_in_row += 1
            if self._bad_in_row >= self.max_bad_steps:
                raise TrainingError(f"{self._bad_in_row} non-finite losses or gradients in a row at step "
                                    f"{self.step_count} (loss {value}); lower train.lr or check the action")
        else:
            self._bad_in_row = 0
            self.optimizer.step()
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value)
        self.step_count += 1
        return {"loss": value, "grad_norm": grad_norm, "skipped": float(bad), **info}

    # -- loop, metrics, checkpoints -----------------------------------------------------------------
    def train(self, n_steps: int, *, seconds: float | None = None, log_every: int = 10,
              metrics_path: str | Path | None = None, checkpoint_path: str | Path | None = None,
              checkpoint_every: int = 100, progress: bool = True,
              callback: Callable[[dict], None] | None = None) -> list[dict[str, float]]:
        """Train until ``n_steps`` steps in total (so a resumed trainer finishes the same schedule) or,
        with ``seconds``, until the accumulated training wall time (``wall_time``, which includes the time
        before a resume) reaches ``seconds``, whichever comes first. The step that exhausts the budget
        writes a metrics row and a checkpoint, so a rerun finds the budget spent and returns at once.
        The cosine schedule runs over ``n_steps`` (and ``seconds``, if it binds first).

        Under MPI only rank 0 writes ``metrics_path`` and ``checkpoint_path`` and shows progress; the
        clock of the budget is rank 0's (broadcast every step), so every rank stops at the same step.
        """
        from tqdm.auto import tqdm

        from .io import save_checkpoint

        if seconds is not None and not seconds > 0:
            raise ValueError(f"train.seconds must be > 0, got {seconds!r}")
        if isinstance(self.scheduler, CosineSchedule):
            if self.scheduler.warmup_steps >= n_steps:
                raise ValueError(f"train.warmup_steps must be < train.steps ({n_steps}), "
                                 f"got {self.scheduler.warmup_steps}")
            self.scheduler.steps, self.scheduler.seconds = n_steps, seconds
        self._elapsed = self.wall_time
        if self.validate_every is not None and self.validate_every % log_every:
            raise ValueError(f"train.validate_every ({self.validate_every}) must be a multiple of train.log_every "
                             f"({log_every}): validation runs on logged rows")
        if self.stopped_early or (seconds is not None and self.wall_time >= seconds):
            return []  # the budget was spent before this process (its last step is in the checkpoint)
        if not self.world.is_main:
            metrics_path = checkpoint_path = None
            progress = False
        rows: list[dict[str, float]] = []
        writer = None
        fh = None
        if metrics_path is not None:
            metrics_path = Path(metrics_path)
            new = not metrics_path.exists()
            fh = open(metrics_path, "a", newline="")
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
        bar = tqdm(total=n_steps, initial=self.step_count, desc="train", unit="step", disable=not progress, mininterval=0.5)
        acc = _Interval()
        t_start = t_last = time.perf_counter()
        out_of_time = False
        try:
            while self.step_count < n_steps and not out_of_time:
                m = self.step()
                self._elapsed = self.wall_time + time.perf_counter() - t_start
                if seconds is not None:
                    if self.world.distributed:
                        self._elapsed = float(self.world.bcast(self._elapsed))  # rank 0's clock for all
                    out_of_time = self._elapsed >= seconds
                acc.n += 1
                if not m["skipped"]:
                    acc.n_good += 1
                    acc.loss += m["loss"]
                    acc.grad_norm += m["grad_norm"]
                if "reverse_kl" in m and math.isfinite(m["reverse_kl"]) and math.isfinite(m["reverse_ess"]):
                    acc.rev += m["reverse_kl"]; acc.rev_ess += m["reverse_ess"]; acc.n_rev += 1
                if "forward_kl" in m and math.isfinite(m["forward_kl"]) and math.isfinite(m["forward_ess"]):
                    acc.fwd += m["forward_kl"]; acc.fwd_ess += m["forward_ess"]; acc.n_fwd += 1
                if not m["skipped"] and math.isfinite(m.get("reconstruction", float("nan"))):
                    acc.rec += m["reconstruction"]; acc.n_rec += 1
                bar.update(1)
                last = self.step_count == n_steps or out_of_time
                if self.step_count % log_every == 0 or last:
                    now = time.perf_counter()
                    good = max(acc.n_good, 1)
                    row = {"step": self.step_count, "loss": acc.loss / good, "val_nll": float("nan"),
                           "val_forward_ess": float("nan"),
                           "reverse_kl": acc.rev / acc.n_rev if acc.n_rev else float("nan"),
                           "forward_kl": acc.fwd / acc.n_fwd if acc.n_fwd else float("nan"),
                           "reverse_ess": acc.rev_ess / acc.n_rev if acc.n_rev else float("nan"),
                           "forward_ess": acc.fwd_ess / acc.n_fwd if acc.n_fwd else float("nan"),
                           "grad_norm": acc.grad_norm / good, "lr": self.optimizer.param_groups[0]["lr"],
                           "steps_per_s": acc.n / max(now - t_last, 1e-9), "wall_time": self.wall_time + now - t_start,
                           "n_skipped": self.n_skipped,
                           "reconstruction": acc.rec / acc.n_rec if acc.n_rec else float("nan")}
                    if self.validation is not None:
                        every = self.validate_every or log_every
                        if self.step_count % every == 0 or last or self.best["step"] is None:
                            row.update(self._validate(checkpoint_path))
                            if self.world.distributed:  # one decision for all ranks (round-off may differ)
                                self.stopped_early = bool(self.world.bcast(self.stopped_early))
                            out_of_time = out_of_time or self.stopped_early
                            last = last or self.stopped_early
                    rows.append(row)
                    bar.set_postfix(kl=f"{row['loss']:.3f}", ess=f"{row['reverse_ess']:.3f}", refresh=False)
                    if writer is not None:
                        writer.writerow(row)
                        fh.flush()
                    if callback is not None:
                        callback(row)
                    acc, t_last = _Interval(), now
                if checkpoint_path is not None and (self.step_count % checkpoint_every == 0 or last):
                    elapsed = time.perf_counter() - t_start
                    self.wall_time += elapsed
                    save_checkpoint(checkpoint_path, self.state_dict())
                    self.wall_time -= elapsed
        finally:
            self.wall_time += time.perf_counter() - t_start
            self._elapsed = self.wall_time
            bar.close()
            if fh is not None:
                fh.close()
        return rows

    def _validate(self, checkpoint_path) -> dict[str, float]:
        """Held-out metrics; with early stopping, a new best flow is kept (and written to ``best.pt`` beside
        the checkpoint) and ``patience`` validations without one stop the training."""
        metrics = held_out_metrics(self.flow, self.action, self.validation)
        if metrics["val_nll"] < self.best["val_nll"]:
            self.best = {"val_nll": metrics["val_nll"], "step": self.step_count,
                         "flow": {k: v.detach().clone() for k, v in self.flow.state_dict().items()}}
            self.since_best = 0
            if self.early_stopping and checkpoint_path is not None:
                from .io import save_checkpoint

                save_checkpoint(best_checkpoint_path(checkpoint_path), self.state_dict())
        else:
            self.since_best += 1
            if self.early_stopping and self.patience is not None and self.since_best >= self.patience:
                self.stopped_early = True
        return metrics

    def restore_best(self) -> int | None:
        """Load the best flow by validation NLL into ``self.flow``; returns its step (None: no validation yet)."""
        if self.best["flow"] is not None:
            self.flow.load_state_dict(self.best["flow"])
        return self.best["step"]

    def state_dict(self) -> dict[str, Any]:
        return {"flow": self.flow.state_dict(), "optimizer": self.optimizer.state_dict(),
                "best": self.best, "since_best": self.since_best, "stopped_early": self.stopped_early,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "generator": self.generator.get_state(), "step": self.step_count, "n_skipped": self.n_skipped,
                "wall_time": self.wall_time,
                "objective": self.objective, "estimator": self.estimator, **self.checkpoint_extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flow.load_state_dict(state["flow"])
        self.optimizer.load_state_dict(state["optimizer"])
        saved = state.get("scheduler")
        cosine_saved = isinstance(saved, dict) and saved.get("name") == "cosine"
        if self.scheduler is not None and saved is not None and cosine_saved == isinstance(self.scheduler, CosineSchedule):
            self.scheduler.load_state_dict(saved)  # (a plateau scheduler resumed as cosine, or back, starts afresh)
        self.generator.set_state(state["generator"])
        self.step_count = int(state["step"])
        self.n_skipped = int(state.get("n_skipped", 0))
        self.wall_time = float(state.get("wall_time", 0.0))
        self._elapsed = self.wall_time
        self.best = state.get("best") or {"val_nll": math.inf, "step": None, "flow": None}
        self.since_best = int(state.get("since_best", 0))
        self.stopped_early = bool(state.get("stopped_early", False))


def best_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """``best.pt`` beside a checkpoint: the state with the lowest validation NLL (train.early_stopping)."""
    return Path(checkpoint_path).with_name("best.pt")


# -- transfer between lattices ------------------------------------------------------------------------------


from .transfer import ArchitectureMismatch, transfer_state  # noqa: E402  (re-exported: the API predates the split)
