"""The typed sections of a run configuration (keys of architecture.md): ``action``, ``sampler``, ``train``,
``output`` and the whole :class:`Config`, with their defaults; :func:`build_action` turns an ``action:`` section
into its theory object. Parsing and validation are in :mod:`latticeflow.config`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "ActionConfig", "SamplerConfig", "TrainConfig", "OutputConfig", "Config", "SEED_MAX",
           "build_action"]

#: largest ``seed``: numpy's seed range; the samplers derive torch seeds from it (seed · 1000003 + rows)
SEED_MAX = 2**32 - 1


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key and the value."""


class _OpenKeys:
    """Keys a registry entry adds to a section (a theory's couplings, a sampler's options), read as attributes
    from the dict field named by ``_extra``."""

    _extra = ""

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get(self._extra, {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no key {name!r}")


@dataclass
class ActionConfig(_OpenKeys):
    """``action:`` — ``theory`` (any name in ``actions.THEORIES``), ``shape`` and the theory's couplings
    (``phi4``: ``kappa``, ``lam`` or ``m2``, ``lam4``; ``u1``: ``beta``), which the theory validates.
    Couplings read as attributes: ``cfg.action.beta``."""

    theory: str
    shape: list[int]
    couplings: dict[str, Any] = field(default_factory=dict)
    _extra = "couplings"


@dataclass
class SamplerConfig(_OpenKeys):
    """``sampler:`` — ``hmc`` (``n_samples`` counts configurations over all chains, rounded up to whole sweeps)."""

    name: str = "hmc"
    n_samples: int = 10000
    n_chains: int = 16
    n_thermalize: int = 200
    n_leapfrog: int = 10
    step_size: float = 0.1
    integrator: str = "leapfrog"
    target_acceptance: float = 0.8
    step_size_jitter: float = 0.2
    save_every: int = 1
    batch_size: int = 1024
    reference_hmc: int = 0
    reference_winding: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    _extra = "options"


@dataclass
class TrainConfig:
    """``train:`` — flow training (used by the flow trainers).

    Budget: ``steps`` and, optionally, ``seconds`` of accumulated training wall time (resumes included);
    training stops at whichever comes first. ``scheduler``: null | plateau | cosine (linear warm-up over
    ``warmup_steps``, then cosine decay to the absolute learning rate ``lr_min`` at the end of the budget).
    ``init``: a checkpoint (``latest.pt`` of ``latticeflow train``, or its run directory) whose flow weights
    start the training (same architecture, any lattice size, coupling or β); a resume takes precedence.
    ``validation`` (forward-KL / mixed training): a fraction in (0, 1) of ``data`` held out (the last
    configurations, so the held-out block is the latest stretch of Markov time), or a second ensemble file;
    its NLL −⟨log q⟩ and forward ESS go into metrics.csv every ``validate_every`` steps (a multiple of ``log_every``; default
    ``log_every``). ``early_stopping``: keep the flow with the lowest validation NLL (``best.pt``; sampling
    uses it) and, with ``patience``, stop after that many validations without a new best.
    ``sizes`` (``latticeflow train --sizes 16,32``): a schedule over lattice extents L, the last being the config's
    own (hypercubic) lattice; each stage trains the same flow and couplings on an L^d lattice from the previous
    stage's weights, for ``size_seconds`` (one per earlier stage; default a quarter of ``seconds`` shared
    equally) with ``size_batch_sizes`` configurations per step (one per earlier stage; default ``batch_size``,
    the last stage's), and ``seconds`` is the budget of the whole schedule (`latticeflow.pipeline.sizes`).
    """

    objective: str = "reverse_kl"
    estimator: str = "fast_path"
    forward_estimator: str | None = None
    steps: int = 1000
    seconds: float | None = None
    batch_size: int = 256
    lr: float = 1e-3
    grad_clip: float | None = 1.0
    scheduler: str | None = None
    plateau_patience: int = 500
    plateau_factor: float = 0.5
    warmup_steps: int = 0
    lr_min: float = 0.0
    init: str | None = None
    data: str | None = None
    validation: float | str | None = None
    validate_every: int | None = None
    early_stopping: bool = False
    patience: int | None = None
    forward_weight: float = 0.5
    reconstruction_weight: float = 10.0
    max_bad_steps: int = 10
    landing_tol: float | None = 1e-3
    checkpoint_every: int = 100
    log_every: int = 10
    sizes: list[int] | None = None
    size_seconds: list[float] | None = None
    size_batch_sizes: list[int] | None = None


@dataclass
class OutputConfig:
    """``output:`` — ``dir`` defaults to ``runs/<name>``."""

    dir: str | None = None


@dataclass
class Config:
    """A whole run: ``name`` (a plain directory name), ``seed`` (0 … 2³² − 1), ``device``, ``dtype``,
    ``threads`` (torch's compute threads; null: as many as available cores, at most torch's default) and
    the sections."""

    action: ActionConfig
    name: str = "latticeflow"
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    dtype: str = "float64"
    flow: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir if self.output.dir else os.path.join("runs", self.name))

    @property
    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "float64": torch.float64}[self.dtype]


def build_action(a: ActionConfig):
    """The theory object of an ``action:`` section (``actions.build_theory``; e.g. ``actions.Phi4``)."""
    from actions import build_theory

    try:
        return build_theory(a.theory, a.shape, a.couplings)
    except ValueError as err:
        raise ConfigError(f"action.{err}") from None
