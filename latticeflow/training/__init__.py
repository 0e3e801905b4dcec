"""Training of flows: a step and a loop with callbacks (as netket's drivers).

- `Trainer` (`.trainer`): the step — reverse KL (self-sampling), forward KL (maximum likelihood on target
  samples, e.g. an HMC ensemble) or a mixture, with any estimator of `latticeflow.gradients`; Adam, an
  optional learning-rate schedule (`.schedules`: plateau decay, or linear warm-up then cosine decay,
  :func:`cosine_lr`), grad-norm clipping and a non-finite guard (a step whose loss or gradient is NaN/inf is
  skipped and counted; ``max_bad_steps`` in a row stop training with one line, `TrainingDiverged`, a
  ``ValueError`` naming train.lr and train.grad_clip), and the sticking-the-landing gate (``landing_tol``:
  no update when the path gradient's integrand ∇ₓ(log q + S) vanishes to that relative accuracy, so an
  exact flow, e.g. the default φ⁴ flow on the free field, is not made worse by Adam's first steps).
- `Driver.run` (`.loop`): the loop, which calls `Callback` objects (`.callbacks`): `WallTimeBudget`,
  `Validation` (held-out NLL and forward ESS, early stopping, ``best.pt``), `MetricsCSV`, `Progress`,
  `OnRow`, `Checkpoint` (atomic, everything for an exact resume: flow, optimiser, scheduler, random-number
  generator, step, wall time) and `EvaluateEvery` (evaluation off the clock). `Trainer.train` is the loop
  with the standard callbacks; benchmarks add their own (``callbacks=[EvaluateEvery(...)]``).

Metrics per logged row: KL up to log Z, reverse ESS, forward ESS when data are given, grad norm, lr,
steps/s, wall time (`METRIC_FIELDS`).

Budgets: training stops after ``n_steps`` steps in total or, with ``seconds``, once the accumulated
training wall time (this process and every one before a resume) reaches ``seconds``, whichever comes
first; the last row and checkpoint are written at that step, so a resumed run does not redo it.

Data parallel under MPI (``world`` of :mod:`latticeflow.distributed` with N ranks): ``batch_size`` is the
global batch B. Every rank draws the same B base samples (or data indices) from the shared generator and
keeps its contiguous slice of B/N, so the all-reduced mean of the per-rank gradients is the gradient of
the one-process loss on the same B samples; loss values and log-weights are gathered, so every metric
(KL, reverse and forward ESS) is that of the global batch, and every rank takes the same decisions
(skipped steps, clipping, learning rate). Only rank 0 writes metrics, checkpoints and progress.

Helpers of benchmarks and studies: `hmc_ensemble` and `hmc_reference` (`.data`: HMC target samples to train
on or judge against); `gradient_variance`, `saved_tensors_mib`, `flow_quality` and `warm_up` (`.diagnostics`: tr Cov of
each estimator's mini-batch gradients, the memory of a step's autograd graph, the figures of a trained flow,
an untimed first step);
`anneal_stages` and `train_annealed` (`.anneal`: a checked β-annealing schedule, and training along it).

Transfer: :func:`transfer_state` (`latticeflow.transfer`) loads the weights of a flow trained on another
lattice (size, coupling or β) into a flow of the same architecture.
"""
from ..transfer import ArchitectureMismatch, transfer_state
from .anneal import anneal_stages, train_annealed
from .callbacks import (Checkpoint, EvaluateEvery, MetricsCSV, OnRow, Progress, Validation, WallTimeBudget,
                        best_checkpoint_path, held_out_metrics)
from .data import hmc_ensemble, hmc_reference
from .diagnostics import flow_quality, gradient_variance, saved_tensors_mib, warm_up
from .loop import METRIC_FIELDS, Callback, Clock, Diverged, Driver, Loop
from .schedules import CosineSchedule, cosine_lr, make_scheduler
from .trainer import LANDING_TOL, Trainer, TrainingDiverged, TrainingError, check_settings

__all__ = ["Trainer", "TrainingError", "TrainingDiverged", "Diverged", "LANDING_TOL", "METRIC_FIELDS",
           "CosineSchedule", "cosine_lr", "transfer_state", "ArchitectureMismatch", "held_out_metrics",
           "best_checkpoint_path", "check_settings", "make_scheduler",
           "Driver", "Loop", "Clock", "Callback", "WallTimeBudget", "Validation", "MetricsCSV", "Progress", "OnRow",
           "Checkpoint", "EvaluateEvery", "hmc_ensemble", "hmc_reference", "gradient_variance", "saved_tensors_mib",
           "flow_quality", "warm_up", "anneal_stages", "train_annealed"]
