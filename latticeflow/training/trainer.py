"""`Trainer`: the optimisation step of a flow towards e^{−S}/Z (reverse KL, forward KL on target samples, or a
mixture, with any estimator of `latticeflow.gradients`), and `Trainer.train`, the loop of `Driver.run` with the
standard callbacks (budget, validation, CSV, progress, checkpoints)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..distributed import World, all_reduce_step, broadcast_module, init_torch_distributed
from ..flows import SelfNormalizing, collect_reconstruction, self_normalized_training
from ..gradients import forward_kl, reverse_kl
from .callbacks import Checkpoint, MetricsCSV, OnRow, Progress, Validation, WallTimeBudget
from .loop import Callback, Diverged, Driver
from .schedules import CosineSchedule, make_scheduler

__all__ = ["Trainer", "TrainingError", "TrainingDiverged", "check_settings", "LANDING_TOL"]

LANDING_TOL = 1e-3  # default r below which a flow counts as exact (train.landing_tol)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses)."""


class TrainingDiverged(TrainingError, Diverged):
    """``max_bad_steps`` non-finite steps in a row: a user error (a ``ValueError``: the CLI prints one line and
    exits 2), naming the likely cause (``train.lr``, ``train.grad_clip``); ``metrics`` is the failing step's."""


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_settings(*, objective: str, has_data: bool, scheduler: str | None, lr: float, lr_min: float,
                   warmup_steps: int, batch_size: int, n_ranks: int = 1, has_validation: bool = False,
                   validate_every: int | None = None, early_stopping: bool = False,
                   patience: int | None = None, landing_tol: float | None = None) -> None:
    """The checks of the `Trainer`'s settings, one ``ValueError`` naming the ``train.`` key and its value."""
    if objective not in ("reverse_kl", "forward_kl", "mixed"):
        raise ValueError(f"train.objective must be reverse_kl, forward_kl or mixed, got {objective!r}")
    if objective != "reverse_kl" and not has_data:
        raise ValueError(f"train.objective {objective!r} needs target samples (train.data: an HDF5 ensemble)")
    if scheduler not in (None, "plateau", "cosine"):
        raise ValueError(f"train.scheduler must be null, 'plateau' or 'cosine', got {scheduler!r}")
    if not _is_int(warmup_steps, 0):
        raise ValueError(f"train.warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if not 0 <= lr_min <= lr:
        raise ValueError(f"train.lr_min must be in [0, train.lr = {lr:g}], got {lr_min!r}")
    if batch_size % n_ranks:
        raise ValueError(f"train.batch_size {batch_size} is not divisible by the {n_ranks} MPI ranks "
                         f"(it is the global batch; each rank takes an equal share)")
    if validate_every is not None and not _is_int(validate_every, 1):
        raise ValueError(f"train.validate_every must be an integer >= 1, got {validate_every!r}")
    if early_stopping and not has_validation:
        raise ValueError("train.early_stopping needs held-out samples (train.validation)")
    if patience is not None and not _is_int(patience, 1):
        raise ValueError(f"train.patience must be an integer >= 1 or null, got {patience!r}")
    if landing_tol is not None and (isinstance(landing_tol, bool) or not isinstance(landing_tol, (int, float))
                                    or not 0 <= landing_tol < 1):
        raise ValueError(f"train.landing_tol must be a number in [0, 1) or null, got {landing_tol!r}")


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


def _ess_on_device(kind: str, log_weight: torch.Tensor) -> torch.Tensor:
    """ESS/N of log-weights as a float64 ``(1,)`` tensor on their device (no host sync): reverse
    (Σw)² / (N Σw²) for ``kind`` ``reverse``, forward 1 / (mean w · mean 1/w) otherwise (as
    `latticeflow.analysis.reverse_ess` / `forward_ess`); NaN where some log-weight is NaN or ±inf."""
    lw = log_weight.to(torch.float64).reshape(-1)
    log_n = math.log(max(lw.numel(), 1))
    if kind == "reverse":
        log_ess = 2.0 * torch.logsumexp(lw, 0) - torch.logsumexp(2.0 * lw, 0) - log_n
    else:
        log_ess = -((torch.logsumexp(lw, 0) - log_n) + (torch.logsumexp(-lw, 0) - log_n))
    ess = torch.exp(log_ess).clamp(max=1.0)
    return torch.where(torch.isfinite(lw).all(), ess, torch.full_like(ess, math.nan)).reshape(1)


class Trainer(Driver):
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
    ``validation``: held-out target samples, their NLL and forward ESS every ``validate_every`` steps (default
    every logged row); ``early_stopping`` keeps the best flow and stops after ``patience`` validations
    without a new best.
    A flow whose last layer draws its sites exactly from the target's conditional (decimated φ⁴ flows,
    `Flow.marginal`) is trained on the marginal of the other sites: the same reverse KL, half the cost; its
    reverse metrics (loss, ESS, landing) are those of the marginal pair, whose log weights miss only the last
    layer's grid noise (Var ≈ 10⁻⁶ per site, `flows.site_marginal`).

    ``landing_tol`` (sticking the landing, Roeder et al. 2017; Vaitl et al. 2024): with a path estimator the
    gradient is ⟨v, ∂x/∂θ⟩ with v = ∇ₓ(log q_θ + S), and v = 0 for *every* sample when q_θ = p. A step
    whose batch has r = (⟨|v|²⟩ / ⟨|∇S|²⟩)^{1/2} < ``landing_tol`` *and* reverse ESS/N > 1 − ``landing_tol``
    is *landed*: the flow is exact to that accuracy and the update is not made (counted in ``n_landed``; a landed step still counts as
    a step of the budget). Adam would otherwise normalise a round-off gradient to a step of size ``lr`` in
    every parameter (one step at lr = 1e-3 took an exact free-field flow on 16×8 from reverse ESS 1 to
    0.01). r ≈ 1e-6 for an exact float32 flow; r ≈ 0.15 √(1 − ESS) in training runs on φ⁴ 16×8, but r falls
    like 1/√V at fixed ESS (errors of a few long-wavelength modes against |∇S|² ∝ V: an inexact 64×64 flow
    at ESS 0.91 has r ≈ 1e-3), hence the intensive second condition on the ESS. Only the ``reverse_kl``
    objective is gated (a ``mixed`` objective's forward term exists to move a flow that looks exact on its
    own samples). None or 0: off.
    """

    def __init__(self, flow, action, *, objective: str = "reverse_kl", estimator: str = "fast_path",
                 forward_estimator: str | None = None, batch_size: int = 256, lr: float = 1e-3,
                 grad_clip: float | None = 1.0, scheduler: str | None = None, plateau_patience: int = 500,
                 plateau_factor: float = 0.5, data: torch.Tensor | None = None, forward_weight: float = 0.5,
                 seed: int = 0, max_bad_steps: int = 10, reconstruction_weight: float = 10.0,
                 world: World | None = None, warmup_steps: int = 0, lr_min: float = 0.0,
                 validation: torch.Tensor | None = None, validate_every: int | None = None,
                 early_stopping: bool = False, patience: int | None = None,
                 landing_tol: float | None = LANDING_TOL) -> None:
        self.world = world or World()
        check_settings(objective=objective, has_data=data is not None, scheduler=scheduler, lr=lr, lr_min=lr_min,
                       warmup_steps=warmup_steps, batch_size=batch_size, n_ranks=self.world.size,
                       has_validation=validation is not None, validate_every=validate_every,
                       early_stopping=early_stopping, patience=patience, landing_tol=landing_tol)
        self.flow, self.action = flow, action
        # reverse KL on the marginal where the flow's last layer is exact (`Flow.marginal`): same KL, cheaper
        self._reverse_pair = flow.marginal(action) if hasattr(flow, "marginal") else (flow, action)
        self.landing_tol = landing_tol or None
        self.lr = lr  # train.lr, named when training diverges
        self.objective, self.estimator = objective, estimator
        if objective == "forward_kl":
            self.forward_estimator = estimator
        else:
            self.forward_estimator = forward_estimator or {"fast_path": "fast_path", "path_inverse": "gdreg"}.get(estimator, "standard")
        self.batch_size, self.grad_clip = batch_size, grad_clip
        local = batch_size // self.world.size
        self._shard = slice(self.world.rank * local, (self.world.rank + 1) * local)  # this rank's rows of a batch
        self.forward_weight = forward_weight
        self.reconstruction_weight = reconstruction_weight
        self.max_bad_steps = max_bad_steps
        self.optimizer = _adam(flow, lr)
        self.scheduler: Any = make_scheduler(scheduler, self.optimizer, lr=lr, lr_min=lr_min, warmup_steps=warmup_steps,
                                             plateau_patience=plateau_patience, plateau_factor=plateau_factor)
        ref = next(iter(flow.buffers()), None)
        self.device = ref.device if ref is not None else torch.device("cpu")
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # e.g. float64 HMC samples for a float32 flow
        dtype = next(iter(flow.parameters()), torch.zeros((), device=self.device)).dtype
        self.data = None if data is None else torch.as_tensor(data, dtype=dtype, device=self.device)
        self.validation = (None if validation is None
                           else torch.as_tensor(validation, dtype=dtype, device=self.device))
        self.validate_every, self.early_stopping, self.patience = validate_every, bool(early_stopping), patience
        self.best: dict[str, Any] = {"val_nll": math.inf, "step": None, "flow": None}
        self.since_best = 0  # validations without a new best
        self.stopped_early = False
        init_torch_distributed(self.world, self.device)  # no-op with one rank or when already joined
        broadcast_module(flow, self.world)  # identical start on every rank, whatever the initialisation
        self.step_count = 0
        self.n_skipped = 0
        self.n_landed = 0  # steps not taken because the flow was exact (``landing_tol``)
        self.wall_time = 0.0  # training seconds so far, all processes (the clock of budget and schedule)
        self.checkpoint_extra: dict[str, Any] = {}  # written into every checkpoint (e.g. the run's config)
        self._bad_in_row = 0

    # -- one optimisation step ----------------------------------------------------------------------
    def _terms(self) -> list[tuple[str, float, torch.Tensor]]:
        """(kind, weight, surrogate loss on this rank's slice of the global batch) per objective."""
        terms = []
        if self.objective in ("reverse_kl", "mixed"):
            z = self.flow.base.sample((self.batch_size,), generator=self.generator)[self._shard]
            rev = reverse_kl(*self._reverse_pair, z, self.estimator)
            terms.append(("reverse", 1 - self.forward_weight if self.objective == "mixed" else 1.0, rev))
        if self.objective in ("forward_kl", "mixed"):
            idx = torch.randint(0, self.data.shape[0], (self.batch_size,), generator=self.generator, device=self.device)
            fwd = forward_kl(self.flow, self.action, self.data[idx[self._shard]], self.forward_estimator)
            terms.append(("forward", self.forward_weight if self.objective == "mixed" else 1.0, fwd))
        return terms

    @staticmethod
    def _residual(v2: float, f2: float) -> float:
        """r = (⟨|v|²⟩ / ⟨|∇S|²⟩)^{1/2} of a step (inf when undefined)."""
        return math.sqrt(v2 / f2) if f2 > 0 and math.isfinite(v2) else math.inf

    def _diverged(self, value: float) -> TrainingDiverged:
        first = self.step_count - self._bad_in_row + 1
        clip = "null" if not self.grad_clip else f"{self.grad_clip:g}"
        cause = ("lower train.lr or set train.grad_clip (e.g. 1.0)" if not self.grad_clip else
                 "lower train.lr (or train.grad_clip)")
        return TrainingDiverged(
            f"training diverged: {self._bad_in_row} non-finite losses or gradients in a row (steps {first}-"
            f"{self.step_count}, loss {value}; {self.n_skipped} skipped in all) with train.lr = {self.lr:g} and "
            f"train.grad_clip = {clip}: {cause}, or check the action (no checkpoint is written inside such a run)")

    def step(self) -> dict[str, float]:
        """One optimiser step; returns the step's metrics (``skipped`` = 1 if it was non-finite, ``landed`` =
        1 if the flow was exact to ``landing_tol`` and no update was made; ``stl_residual`` = r).

        Under MPI the step has one collective (:func:`latticeflow.distributed.all_reduce_step`): the
        gradients, loss values, landing residuals and log-weights of all ranks in one all-reduce; the skip
        and landing decisions are taken on the global values, so every rank takes the same one. A step whose
        loss or gradient is NaN/inf is skipped and counted; ``max_bad_steps`` in a row raise
        `TrainingDiverged` (counted as steps, with the failing step's metrics on the error).

        One host sync per step: the loss, KL, ESS, landing and gradient-norm figures are computed on the
        flow's device and read back together (one small copy) after the backward pass and the clipping,
        where the skip and landing decisions need them; everything before it is queued without a wait.
        """
        if isinstance(self.scheduler, CosineSchedule):
            self.scheduler.set_lr(self.step_count, self.wall_time)
        self.optimizer.zero_grad(set_to_none=True)
        collect_reconstruction(self.flow)  # drop stale terms (none are made outside training steps)
        with self_normalized_training():
            terms = self._terms()
        loss = sum(w * t for _, w, t in terms)
        rec = collect_reconstruction(self.flow)  # a batch mean like the KL terms: averaged over ranks alike
        landing = None
        if self.landing_tol and self.objective == "reverse_kl":
            landing = getattr(terms[0][2], "landing", None)  # the reverse term comes first
        extra = [] if landing is None else list(landing.to(loss.dtype))
        values = torch.stack([loss.detach(), *[t.detach() for _, _, t in terms],
                              *([] if rec is None else [rec.detach().to(loss.dtype)]), *extra])
        rows = torch.cat([t.log_weight.reshape(-1) for _, _, t in terms])
        # always a backward (no wait for the loss): a non-finite or landed step's gradient is dropped below
        (loss if rec is None else loss + self.reconstruction_weight * rec).backward()
        params = [p for p in self.flow.parameters() if p.requires_grad]
        values, rows = all_reduce_step(params, values, rows, self.world)
        params = [p for p in params if p.grad is not None]
        clip = self.grad_clip if self.grad_clip else float("inf")
        norm = (torch.nn.utils.clip_grad_norm_(params, clip) if params
                else torch.zeros((), dtype=values.dtype, device=values.device))
        log_weights = rows.reshape(rows.shape[0], len(terms), -1)
        ess = [_ess_on_device(kind, log_weights[:, i].reshape(-1)) for i, (kind, _, _) in enumerate(terms)]
        host = torch.cat([values.to(torch.float64), *ess, norm.to(torch.float64).reshape(1)]).tolist()  # the sync
        value, kls = host[0], host[1:1 + len(terms)]
        info: dict[str, float] = {f"{kind}_kl": kl for (kind, _, _), kl in zip(terms, kls)}
        info.update({f"{kind}_ess": e for (kind, _, _), e in zip(terms, host[-1 - len(terms):-1])})
        if rec is not None:
            info["reconstruction"] = host[1 + len(terms)]
        residual = math.nan if landing is None else self._residual(*host[-3 - len(terms):-1 - len(terms)])
        bad = not math.isfinite(value)  # the global KL loss
        landed = (not bad and landing is not None and residual < self.landing_tol
                  and 1.0 - info.get("reverse_ess", 0.0) < self.landing_tol)
        grad_norm = 0.0 if landed else math.nan  # a landed flow's path gradient is 0 up to round-off
        if not bad and not landed:
            grad_norm = host[-1]
            bad = not math.isfinite(grad_norm)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.n_skipped += 1
            self._bad_in_row += 1
        else:
            self._bad_in_row = 0
            if landed:
                self.optimizer.zero_grad(set_to_none=True)
                self.n_landed += 1
            else:
                self.optimizer.step()
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value)
        self.step_count += 1
        metrics = {"loss": value, "grad_norm": grad_norm, "skipped": float(bad), "landed": float(landed),
                   "stl_residual": residual, **info}
        if bad and self._bad_in_row >= self.max_bad_steps:
            err = self._diverged(value)
            err.metrics = metrics
            raise err
        return metrics

    @property
    def bad_in_row(self) -> int:
        """Non-finite steps since the last finite one (a checkpoint is not written inside such a run)."""
        return self._bad_in_row

    # -- the loop with the standard callbacks -------------------------------------------------------
    def train(self, n_steps: int | None, *, seconds: float | None = None, log_every: int = 10,
              metrics_path: str | Path | None = None, checkpoint_path: str | Path | None = None,
              checkpoint_every: int = 100, progress: bool = True, callback: Callable[[dict], None] | None = None,
              callbacks: Sequence[Callback] = ()) -> list[dict[str, float]]:
        """Train until ``n_steps`` steps in total (so a resumed trainer finishes the same schedule; None: no
        step budget) or, with ``seconds``, until the accumulated training wall time (``wall_time``, which
        includes the time before a resume) reaches ``seconds``, whichever comes first. The step that
        exhausts the budget writes a metrics row and a checkpoint, so a rerun finds the budget spent and
        returns at once. The cosine schedule runs over ``n_steps`` (and ``seconds``, if it binds first).
        ``callback(row)`` is called with every logged row; ``callbacks`` (e.g. `EvaluateEvery`) join the
        standard ones after the budget and the validation.

        Under MPI only rank 0 writes ``metrics_path`` and ``checkpoint_path`` and shows progress; the
        clock of the budget is rank 0's (broadcast every step), so every rank stops at the same step.
        """
        if seconds is not None and not seconds > 0:
            raise ValueError(f"train.seconds must be > 0, got {seconds!r}")
        if n_steps is None and seconds is None:
            raise ValueError("Trainer.train needs a budget: n_steps or seconds")
        if isinstance(self.scheduler, CosineSchedule):
            if n_steps is not None and self.scheduler.warmup_steps >= n_steps:
                raise ValueError(f"train.warmup_steps must be < train.steps ({n_steps}), "
                                 f"got {self.scheduler.warmup_steps}")
            self.scheduler.steps, self.scheduler.seconds = n_steps, seconds
        if self.validate_every is not None and self.validate_every % log_every:
            raise ValueError(f"train.validate_every ({self.validate_every}) must be a multiple of train.log_every "
                             f"({log_every}): validation runs on logged rows")
        main = self.world.is_main
        standard = [WallTimeBudget(seconds) if seconds is not None else None,
                    Validation(checkpoint_path if main else None) if self.validation is not None else None,
                    *callbacks,
                    MetricsCSV(metrics_path) if metrics_path is not None and main else None,
                    Progress(n_steps) if progress and main else None,
                    OnRow(callback) if callback is not None else None,
                    Checkpoint(checkpoint_path, checkpoint_every) if checkpoint_path is not None and main else None]
        return self.run(n_steps, log_every=log_every, callbacks=[c for c in standard if c is not None])

    def restore_best(self) -> int | None:
        """Load the best flow by validation NLL into ``self.flow``; returns its step (None: no validation yet)."""
        if self.best["flow"] is not None:
            self.flow.load_state_dict(self.best["flow"])
        return self.best["step"]

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"flow": self.flow.state_dict(), "optimizer": self.optimizer.state_dict(),
                "best": self.best, "since_best": self.since_best, "stopped_early": self.stopped_early,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "generator": self.generator.get_state(), "step": self.step_count, "n_skipped": self.n_skipped,
                "n_landed": self.n_landed, "wall_time": self.wall_time,
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
        self.n_landed = int(state.get("n_landed", 0))
        self.wall_time = float(state.get("wall_time", 0.0))
        self.best = state.get("best") or {"val_nll": math.inf, "step": None, "flow": None}
        self.since_best = int(state.get("since_best", 0))
        self.stopped_early = bool(state.get("stopped_early", False))
