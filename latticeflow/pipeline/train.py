"""`latticeflow train`: build the flow of a config, train it, and keep a resumable run directory.

``<output.dir>/checkpoints/latest.pt`` (atomic; flow, optimiser, scheduler, RNG, step),
``metrics.csv`` (one row per ``train.log_every`` steps), ``plots/training.png``, ``train_summary.json``.
Rerunning the same command resumes from the checkpoint and ends exactly where an uninterrupted
run would have ended. ``train.seconds`` caps the accumulated training wall time beside ``train.steps``.

``train.init`` (a checkpoint, or a run directory meaning ``<dir>/checkpoints/latest.pt``) starts a new run
from the flow weights of another run of the same architecture, possibly at another lattice size,
coupling or β (:func:`latticeflow.training.transfer_state`; optimiser, step and RNG start afresh). It
applies only when the output directory has no checkpoint yet: a resume takes precedence. The summary
records it as ``init_from``. ``train.sizes`` (``--sizes 16,32``) trains over a schedule of lattice sizes, each
from the previous one's weights, every second counted in ``train.seconds`` (:mod:`latticeflow.pipeline.sizes`).

The output directory is locked for the whole call (a second ``train`` or ``sample`` there is refused, see
:mod:`latticeflow.io.lock`); every check that can refuse the run (``train.init``, the checkpoint to resume,
``config.yaml``, :mod:`latticeflow.pipeline.rundir`) runs before the first write, and a checkpoint that cannot
be written (full disk, EIO) ends the run with one line while the last complete checkpoint stays loadable.

Under ``mpiexec -n N`` the training is data parallel (see :mod:`latticeflow.training`): every rank
builds the same flow, ``train.batch_size`` is the global batch, and rank 0 alone writes the run
directory; every rank resumes from the same checkpoint.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config, ConfigError, build_action
from ..distributed import World, get_world, init_torch_distributed
from ..flows import build_flow
from ..flows.u1_plaquette import PlaquetteMarginal
from ..io import EnsembleMismatchError, load_checkpoint, open_ensemble, write_json, write_text
from ..io.lock import directory_lock
from ..training import METRIC_FIELDS, ArchitectureMismatch, Trainer, transfer_state
from .common import resolve_device
from .rundir import WriteGate
from .sizes import train_over_sizes


__all__ = ["train", "build_trainer", "load_target_samples", "init_flow_from", "checkpoint_file"]


def load_target_samples(path: str, action, dtype, device) -> torch.Tensor:
    """All configurations of an ensemble file of the same theory, couplings and shape as ``action``."""
    if not Path(path).is_file():
        raise ConfigError(f"train.data: ensemble file not found: {path!r}")
    with open_ensemble(path) as ens:
        if ens.theory != action.theory:
            raise EnsembleMismatchError(f"train.data {path} holds theory {ens.theory!r}, the config trains {action.theory!r}")
        if tuple(ens.shape) != tuple(action.shape):
            raise EnsembleMismatchError(f"train.data {path} has shape {list(ens.shape)}, the config has {list(action.shape)}")
        for k, v in action.couplings.items():
            fv = ens.couplings.get(k)
            if fv is None or abs(fv - v) > 1e-12 * max(1.0, abs(v)):
                raise EnsembleMismatchError(f"train.data {path} has {k}={fv}, the config has {k}={v}")
        samples = np.asarray(ens["samples"])
    return torch.as_tensor(samples, dtype=dtype, device=device)


def build_trainer(cfg: Config, world: World | None = None):
    """(action, flow, trainer) of a config, on its device and dtype (this rank's device under MPI)."""
    world = world or World()
    action = build_action(cfg.action)
    device, dtype = world.device(str(resolve_device(cfg.device))), cfg.torch_dtype
    init_torch_distributed(world, device)
    torch.manual_seed(cfg.seed)
    flow = build_flow(cfg.flow, action).to(device=device, dtype=dtype)
    t = cfg.train
    data_path = str(cfg.output_dir / "ensemble_hmc.h5") if t.data == "reference" else t.data
    if t.data == "reference" and not Path(data_path).is_file():
        raise ConfigError(f"train.data is 'reference' but {data_path} does not exist yet: 'latticeflow run' makes it "
                          f"first when sampler.reference_hmc > 0")
    data = load_target_samples(data_path, action, dtype, device) if t.data else None
    validation = None
    if isinstance(t.validation, float):
        n_val = int(round(t.validation * data.shape[0]))
        if not 1 <= n_val < data.shape[0]:
            raise ConfigError(f"train.validation {t.validation} of {data.shape[0]} configurations leaves no "
                              f"training or no validation samples")
        data, validation = data[:-n_val], data[-n_val:]  # the latest stretch of Markov time is held out
    elif isinstance(t.validation, str):
        validation = load_target_samples(t.validation, action, dtype, device)
    trainer = Trainer(flow, action, objective=t.objective, estimator=t.estimator, forward_estimator=t.forward_estimator,
                      batch_size=t.batch_size, lr=t.lr, grad_clip=t.grad_clip, scheduler=t.scheduler,
                      plateau_patience=t.plateau_patience, plateau_factor=t.plateau_factor, data=data,
                      forward_weight=t.forward_weight, seed=cfg.seed, max_bad_steps=t.max_bad_steps,
                      reconstruction_weight=t.reconstruction_weight, world=world, warmup_steps=t.warmup_steps,
                      lr_min=t.lr_min, validation=validation, validate_every=t.validate_every,
                      early_stopping=t.early_stopping, patience=t.patience, landing_tol=t.landing_tol)
    return action, flow, trainer


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself if it is not a directory, else the run directory's ``<path>/checkpoints/latest.pt``."""
    target = Path(path)
    return target / "checkpoints" / "latest.pt" if target.is_dir() else target


def _source_lattice(state: dict) -> list[int] | None:
    """The lattice extents a checkpoint was trained on (from the config text it carries), if known."""
    import yaml

    try:
        shape = (yaml.safe_load(state.get("config") or "") or {}).get("action", {}).get("shape")
    except (yaml.YAMLError, AttributeError):
        return None
    return list(shape) if isinstance(shape, list) and all(isinstance(v, int) for v in shape) else None


def _source_couplings(state: dict) -> dict[str, float] | None:
    """The couplings a checkpoint was trained at (from the config text it carries), if known."""
    import yaml

    try:
        act = (yaml.safe_load(state.get("config") or "") or {}).get("action", {})
    except (yaml.YAMLError, AttributeError):
        return None
    if not isinstance(act, dict):
        return None
    out = {k: float(act[k]) for k in ("beta", "kappa", "lam") if isinstance(act.get(k), (int, float))}
    return out or None


def _source_init(state: dict, action) -> dict | None:
    """The state dict of the checkpoint's flow freshly built on its own lattice and couplings (so that `transfer_state`
    carries the learned part of momentum-space parameters to another lattice size), or None where the checkpoint
    does not say them or they do not build."""
    lattice, couplings, flow_config = _source_lattice(state), _source_couplings(state), state.get("config_flow")
    if lattice is None or couplings is None or not isinstance(flow_config, dict) or list(lattice) == list(action.shape):
        return None
    from actions import build_theory

    try:
        with torch.random.fork_rng(devices=[]):  # the fresh flow's random weights are not used: leave the RNG as it was
            return build_flow(dict(flow_config), build_theory(action.theory, lattice, couplings)).state_dict()
    except Exception:  # noqa: BLE001 - an old or foreign checkpoint: the momentum parameters start afresh
        return None


def init_flow_from(flow, path: str, action, map_location="cpu") -> tuple[str, list[str]]:
    """Load the flow weights of the checkpoint ``path`` (``train.init``; a run directory means its
    ``checkpoints/latest.pt``) into ``flow``, adapting lattice-dependent tensors (`transfer_state`). A
    U(1) plaquette-marginal layer keeps its own initialisation (the exact marginal at this β) when the
    checkpoint was trained at another coupling.

    Returns (the checkpoint file, the keys not copied as they were). Errors are one-line
    :class:`ConfigError` naming ``train.init`` and the path.
    """
    file = checkpoint_file(path)
    if not file.is_file():
        raise ConfigError(f"train.init: checkpoint not found: {str(file)!r}")
    try:
        state = load_checkpoint(file, map_location=map_location)
    except Exception as err:  # a truncated or foreign file
        raise ConfigError(f"train.init {file}: not a readable checkpoint ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state.get("flow"), dict):
        raise ConfigError(f"train.init {file}: not a checkpoint of 'latticeflow train' (no flow weights)")
    theory = state.get("theory")
    if theory is not None and theory != action.theory:
        raise ConfigError(f"train.init {file}: written for theory {theory!r}, this config trains {action.theory!r}")
    keep = (PlaquetteMarginal,) if _source_couplings(state) not in (None, dict(action.couplings)) else ()
    try:
        adapted = transfer_state(flow, state["flow"], lattice=tuple(action.shape), source_lattice=_source_lattice(state),
                                 keep=keep, source_init=_source_init(state, action))
    except ArchitectureMismatch as err:
        raise ConfigError(f"train.init {file}: {err}") from None
    return str(file), adapted


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be logged again); atomic."""
    if not path.exists():
        return
    import io

    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("step") not in (None, "") and int(float(r["step"])) <= step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _last_row(path: Path) -> dict[str, float]:
    """The last metrics row of ``path`` as numbers (empty if there is none)."""
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    num = lambda v: float(v) if v not in (None, "") else float("nan")  # noqa: E731  (older files: no val columns)
    return {k: int(num(v)) if k in ("step", "n_skipped") else num(v) for k, v in rows[-1].items()
            if k is not None} if rows else {}


def _plot(metrics_path: Path, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    col = {k: np.array([float(r.get(k) or "nan") for r in rows]) for k in METRIC_FIELDS}
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.5))
    a1.plot(col["step"], col["loss"]); a1.set_xlabel("step"); a1.set_ylabel("KL up to log Z")
    if np.isfinite(col["val_nll"]).any():
        ok = np.isfinite(col["val_nll"])
        a1b = a1.twinx()
        a1b.plot(col["step"][ok], col["val_nll"][ok], color="C3", label="held-out NLL")
        a1b.set_ylabel("held-out NLL −⟨log q⟩"); a1b.legend(loc="upper right")
    for key, label in (("reverse_ess", "reverse ESS/N"), ("forward_ess", "forward ESS/N"),
                       ("val_forward_ess", "held-out forward ESS/N")):
        if np.isfinite(col[key]).any():
            ok = np.isfinite(col[key])
            a2.plot(col["step"][ok], col[key][ok], label=label)
            a3.plot(col["wall_time"][ok], col[key][ok], label=label)
    a2.set_xlabel("step"); a3.set_xlabel("wall time [s]")
    for a in (a2, a3):
        a.set_ylabel("ESS / N"); a.set_ylim(0, 1); a.legend()
    fig.tight_layout()
    path = out / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train(cfg: Config, config_text: str = "", *, progress: bool = True, world: World | None = None,
          command: str | None = None) -> dict:
    """Train (or resume training) the flow of ``cfg``; returns the summary written to ``summary.json``.

    ``world`` defaults to the MPI world of the process (one rank without ``mpiexec``). The output directory is
    locked for the call (`latticeflow.io.lock`); every check that can refuse the run (the lock, ``train.init``,
    the checkpoint to resume, ``config.yaml``) runs before anything is written.
    """
    world = world or get_world()
    with directory_lock(cfg.output_dir, command, world):
        if cfg.train.sizes is not None and len(cfg.train.sizes) > 1:  # a schedule over lattice sizes
            return train_over_sizes(cfg, config_text, _train, progress=progress, world=world)
        return _train(cfg, config_text, progress=progress, world=world)


def load_resume_checkpoint(ckpt: Path, cfg: Config, action, map_location="cpu") -> dict:
    """The checkpoint a resumed ``train`` continues from, refused in one line (`ConfigError`) if it cannot be read
    or was written for another flow or theory. Read-only."""
    try:
        state = load_checkpoint(ckpt, map_location=map_location)
    except ValueError as err:
        raise ConfigError(f"{err}; move it away to start afresh") from None
    if state.get("config_flow") != cfg.flow or state.get("theory") != action.theory:
        raise ConfigError(f"{ckpt} was written for another flow or theory; use another output.dir")
    return state


def _train(cfg: Config, config_text: str, *, progress: bool, world: World) -> dict:
    action, flow, trainer = build_trainer(cfg, world)
    out = cfg.output_dir
    ckpt = out / "checkpoints" / "latest.pt"
    metrics = out / "metrics.csv"
    resumed_from = 0
    init_from = None
    found = world.bcast(ckpt.exists())  # every rank resumes, or none
    world.barrier()  # nobody looks before every rank has looked: rank 0 writes the directory next
    gate = WriteGate(out, config_text, world)
    try:  # every refusal before the first write
        if not found and cfg.train.init:  # a new run from another run's weights
            init_from, _ = init_flow_from(flow, cfg.train.init, action, map_location=trainer.device)
        if found:
            state = load_resume_checkpoint(ckpt, cfg, action, map_location=trainer.device)
            try:
                trainer.load_state_dict(state)
            except (KeyError, RuntimeError, TypeError, ValueError) as err:
                detail = (str(err).splitlines() or [type(err).__name__])[0][:200]
                raise ConfigError(f"{ckpt} cannot be resumed by this config ({type(err).__name__}: {detail}); "
                                  f"use another output.dir") from None
            resumed_from = trainer.step_count
            init_from = state.get("init_from")
    except Exception as err:
        gate.ready(err)
        raise
    gate.ready()
    if world.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "plots").mkdir(exist_ok=True)
        if found:
            _truncate_metrics(metrics, resumed_from)
        elif metrics.exists():  # metrics of a run whose first checkpoint never came: they restart with it
            _truncate_metrics(metrics, 0)
    gate.accepted()
    t0 = time.perf_counter()
    trainer.checkpoint_extra = {"config_flow": cfg.flow, "theory": action.theory, "config": config_text,
                                "init_from": init_from}
    rows = trainer.train(cfg.train.steps, seconds=cfg.train.seconds, log_every=cfg.train.log_every,
                         metrics_path=metrics, checkpoint_path=ckpt, checkpoint_every=cfg.train.checkpoint_every,
                         progress=progress)
    last = rows[-1] if rows else _last_row(metrics)  # nothing left to do: the row of the last step
    stopped_by = ("early_stopping" if trainer.stopped_early else
                  "seconds" if trainer.step_count < cfg.train.steps else "steps")
    summary = {"steps": trainer.step_count, "resumed_from": resumed_from, "seconds": time.perf_counter() - t0,
               "wall_time": trainer.wall_time, "stopped_by": stopped_by, "init_from": init_from,
               "n_skipped": trainer.n_skipped, "final": last, "checkpoint": str(ckpt), "metrics": str(metrics),
               "ranks": world.size}
    world.barrier()  # the checkpoint is on disk before any rank moves on (e.g. to sampling)
    if not world.is_main:
        return summary
    plot = _plot(metrics, out / "plots")
    if plot is not None:
        summary["plot"] = str(plot)
    if trainer.validation is not None:
        summary["validation"] = {"n": int(trainer.validation.shape[0]), "best_step": trainer.best["step"],
                                 "best_val_nll": trainer.best["val_nll"], "stopped_early": trainer.stopped_early,
                                 "best_checkpoint": str(ckpt.with_name("best.pt")) if cfg.train.early_stopping else None}
    write_json(out / "train_summary.json", summary)
    return summary
