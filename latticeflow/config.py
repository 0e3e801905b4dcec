"""Run configuration: YAML → validated, typed dataclasses (keys of architecture.md).

Every section but ``action`` has defaults; unknown keys are errors with a "did you mean" hint;
every error names the key and the value (``ConfigError("action.beta must be > 0, got -1.0")``).
``--set key.sub=value`` overrides are applied to the YAML tree before validation; values are parsed
as YAML (``--set action.shape=[16,8]``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError", "ActionConfig", "SamplerConfig", "TrainConfig", "OutputConfig", "Config",
    "load_config", "config_from_dict", "apply_overrides", "config_to_yaml", "build_action",
]


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


_SECTIONS = {"train": TrainConfig, "output": OutputConfig}
_FREE_SECTIONS = ("flow",)
_TOP = {f.name for f in dataclasses.fields(Config)}
#: largest ``seed``: numpy's seed range; the samplers derive torch seeds from it (seed · 1000003 + rows)
SEED_MAX = 2**32 - 1


def _unknown(key: str, allowed: set[str], prefix: str) -> ConfigError:
    hint = difflib.get_close_matches(key, sorted(allowed), n=1)
    extra = f" (did you mean '{prefix}{hint[0]}'?)" if hint else f" (allowed: {', '.join(sorted(allowed))})"
    return ConfigError(f"unknown config key '{prefix}{key}'{extra}")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/convert one scalar against its annotated type (a string such as 'int | None')."""
    t = str(typ)
    if value is None:
        if "None" in t:
            return None
        raise ConfigError(f"{key} must be set, got null")
    if t.startswith("list[int]"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of integers, got {value!r}")
        return list(value)
    if t.startswith("int"):
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:  # 1e5 or 2.0
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if t.startswith("float | str"):
        if isinstance(value, str):
            return value
        return _coerce(value, "float", key)
    if t.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        return float(value)
    if t.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def _section(cls, data: Any, name: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise _unknown(str(key), set(fields), f"{name}.")
    kwargs = {}
    for key, f in fields.items():
        if key in data:
            kwargs[key] = _coerce(data[key], f.type, f"{name}.{key}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{name}.{key} is required")
    return cls(**kwargs)


def _action_section(data: Any) -> ActionConfig:
    """``action:`` → `ActionConfig`; the theory (from the registry ``actions.THEORIES``) validates its couplings."""
    from actions import THEORIES, build_theory

    if not isinstance(data, dict):
        raise ConfigError(f"action must be a mapping of keys, got {data!r}")
    theory = data.get("theory")
    if theory not in THEORIES:
        raise ConfigError(f"action.theory must be one of {', '.join(THEORIES)}, got {theory!r}")
    if "shape" not in data:
        raise ConfigError("action.shape is required")
    shape = _coerce(data["shape"], "list[int]", "action.shape")
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"action.shape must be positive lattice extents, got {shape}")
    allowed = set(THEORIES[theory].coupling_keys)
    couplings = {}
    for key, value in data.items():
        if key in ("theory", "shape"):
            continue
        if key not in allowed:
            raise _unknown(str(key), allowed | {"theory", "shape"}, "action.")
        couplings[key] = _coerce(value, "float | None", f"action.{key}")
    a = ActionConfig(theory=theory, shape=shape, couplings=couplings)
    try:
        build_theory(theory, shape, couplings)
    except ValueError as err:
        raise ConfigError(f"action.{err}") from None
    return a


def _sampler_section(data: Any) -> SamplerConfig:
    """``sampler:`` → `SamplerConfig`: the common keys and the options of the sampler named (registry
    ``latticeflow.samplers.SAMPLERS``)."""
    from .samplers import SAMPLERS

    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"sampler must be a mapping of keys, got {data!r}")
    name = data.get("name", SamplerConfig.name)
    if name not in SAMPLERS:
        raise ConfigError(f"sampler.name must be one of {', '.join(SAMPLERS)}, got {name!r}")
    extra = dict(SAMPLERS[name].options)
    common = {k: v for k, v in data.items() if k not in extra}
    if "options" in common:
        raise _unknown("options", {f.name for f in dataclasses.fields(SamplerConfig)} - {"options"} | set(extra),
                       "sampler.")
    try:
        s = _section(SamplerConfig, common, "sampler")
    except ConfigError as err:
        if "unknown config key" in str(err) and extra:
            raise ConfigError(f"{err} (sampler {name} also takes: {', '.join(extra)})") from None
        raise
    for key, default in extra.items():
        if key in data:
            extra[key] = _coerce(data[key], type(default).__name__, f"sampler.{key}")
    s.options = extra
    return s


def _check_sampler_fits(cfg: Config) -> None:
    """A chain sampler that cannot take the theory (the cluster sampler on U(1), or at κ <= 0) is refused at
    load time, before anything is written."""
    from .samplers import SAMPLERS

    entry = SAMPLERS[cfg.sampler.name]
    if entry.make is None:
        return
    try:
        entry.make(build_action(cfg.action), cfg.sampler, None)
    except ValueError as err:
        msg = str(err)
        raise ConfigError(msg if msg.startswith(("action.", "sampler.")) else f"sampler.name {cfg.sampler.name!r}: {msg}") from None


def _check_memory(cfg: Config) -> None:
    """Refuse, before anything is allocated or written, a lattice whose largest batch of configurations (the
    chains of HMC, the batches of flow sampling and training) alone is larger than this machine's memory."""
    from .resources import memory_problem
    from .samplers import SAMPLERS

    s = cfg.sampler
    batches = [(s.n_chains, "sampler.n_chains")]
    if SAMPLERS[s.name].needs_flow:
        batches += [(s.batch_size, "sampler.batch_size"), (cfg.train.batch_size, "train.batch_size")]
    problem = memory_problem(math.prod(build_action(cfg.action).field_shape), cfg.dtype, *max(batches))
    if problem:
        raise ConfigError(f"action.shape {list(cfg.action.shape)} does not fit in memory: {problem}")


def _validate(cfg: Config) -> None:
    if not cfg.name or cfg.name in (".", "..") or any(c in cfg.name for c in "/\\\0"):
        raise ConfigError(f"name must be a plain directory name (not empty, '.' or '..', no '/'), got {cfg.name!r}")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise ConfigError(f"seed must be an integer in [0, {SEED_MAX}], got {cfg.seed!r}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be an integer >= 1 or null, got {cfg.threads!r}")
    if cfg.dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype must be 'float32' or 'float64', got {cfg.dtype!r}")
    if not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {cfg.device!r}")
    s = cfg.sampler
    for key in ("n_samples", "n_chains", "n_leapfrog", "save_every", "batch_size"):
        if getattr(s, key) < 1:
            raise ConfigError(f"sampler.{key} must be >= 1, got {getattr(s, key)}")
    if not 0 <= s.step_size_jitter < 1:
        raise ConfigError(f"sampler.step_size_jitter must be in [0, 1), got {s.step_size_jitter}")
    if s.reference_hmc < 0:
        raise ConfigError(f"sampler.reference_hmc must be >= 0, got {s.reference_hmc}")
    if s.n_thermalize < 0:
        raise ConfigError(f"sampler.n_thermalize must be >= 0, got {s.n_thermalize}")
    if not s.step_size > 0:
        raise ConfigError(f"sampler.step_size must be > 0, got {s.step_size}")
    if s.integrator not in ("leapfrog", "omelyan"):
        raise ConfigError(f"sampler.integrator must be 'leapfrog' or 'omelyan', got {s.integrator!r}")
    if not 0 < s.target_acceptance < 1:
        raise ConfigError(f"sampler.target_acceptance must be in (0, 1), got {s.target_acceptance}")
    t = cfg.train
    if t.objective not in ("reverse_kl", "forward_kl", "mixed"):
        raise ConfigError(f"train.objective must be 'reverse_kl', 'forward_kl' or 'mixed', got {t.objective!r}")
    allowed = ("standard", "path_inverse", "fast_path") if t.objective in ("reverse_kl", "mixed") else ("standard", "gdreg", "fast_path")
    if t.estimator not in allowed:
        raise ConfigError(f"train.estimator must be one of {', '.join(allowed)} for {t.objective}, got {t.estimator!r}")
    if t.forward_estimator not in (None, "standard", "gdreg", "fast_path"):
        raise ConfigError(f"train.forward_estimator must be one of standard, gdreg, fast_path, got {t.forward_estimator!r}")
    if t.objective != "reverse_kl" and not t.data:
        raise ConfigError(f"train.data (an HDF5 ensemble of target samples, or 'reference' for the run's HMC "
                          f"reference ensemble) is required for objective {t.objective}")
    if t.data == "reference" and cfg.sampler.reference_hmc < 1:
        raise ConfigError("train.data is 'reference' but sampler.reference_hmc is 0 (no HMC reference ensemble)")
    if t.scheduler not in (None, "plateau", "cosine"):
        raise ConfigError(f"train.scheduler must be null, 'plateau' or 'cosine', got {t.scheduler!r}")
    if t.seconds is not None and not t.seconds > 0:
        raise ConfigError(f"train.seconds must be > 0, got {t.seconds}")
    if t.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    if t.warmup_steps and t.scheduler != "cosine":
        raise ConfigError(f"train.warmup_steps applies to train.scheduler 'cosine' only, got warmup_steps="
                          f"{t.warmup_steps} with scheduler {t.scheduler!r}")
    if isinstance(t.validation, float) and not 0 < t.validation < 1:
        raise ConfigError(f"train.validation must be a fraction in (0, 1) of train.data or an ensemble file, "
                          f"got {t.validation}")
    if isinstance(t.validation, str) and not t.validation.strip():
        raise ConfigError(f"train.validation must be a fraction in (0, 1) or an ensemble file, got {t.validation!r}")
    if t.validation is not None and t.objective == "reverse_kl":
        raise ConfigError("train.validation needs target samples: it applies to objective forward_kl or mixed")
    if not isinstance(t.early_stopping, bool):
        raise ConfigError(f"train.early_stopping must be true or false, got {t.early_stopping!r}")
    if t.early_stopping and t.validation is None:
        raise ConfigError("train.early_stopping needs train.validation (a held-out fraction or file)")
    if t.validate_every is not None and t.log_every >= 1 and t.validate_every % t.log_every:
        raise ConfigError(f"train.validate_every must be a multiple of train.log_every ({t.log_every}), "
                          f"got {t.validate_every}")
    for key in ("validate_every", "patience"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1 or null, got {getattr(t, key)}")
    if t.init is not None and not t.init.strip():
        raise ConfigError(f"train.init must be a checkpoint path or null, got {t.init!r}")
    if not 0 <= t.forward_weight <= 1:
        raise ConfigError(f"train.forward_weight must be in [0, 1], got {t.forward_weight}")
    if not t.reconstruction_weight >= 0:
        raise ConfigError(f"train.reconstruction_weight must be >= 0, got {t.reconstruction_weight}")
    for key in ("steps", "batch_size", "checkpoint_every", "log_every", "max_bad_steps", "plateau_patience"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    if t.landing_tol is not None and not 0 <= t.landing_tol < 1:
        raise ConfigError(f"train.landing_tol must be a number in [0, 1) or null, got {t.landing_tol}")
    if not 0 < t.lr <= 1:
        raise ConfigError(f"train.lr must be in (0, 1] (an Adam step size), got {t.lr:g}")
    if not 0 <= t.lr_min <= t.lr:
        raise ConfigError(f"train.lr_min must be in [0, train.lr = {t.lr:g}], got {t.lr_min}")
    if t.scheduler == "cosine" and t.warmup_steps >= t.steps:
        raise ConfigError(f"train.warmup_steps must be < train.steps ({t.steps}), got {t.warmup_steps}")
    _check_memory(cfg)
    _check_sampler_fits(cfg)


def config_from_dict(data: Any) -> Config:
    """Validate a parsed YAML tree and return a :class:`Config`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    for key in data:
        if key not in _TOP:
            raise _unknown(str(key), _TOP, "")
    if "action" not in data:
        raise ConfigError("config needs an 'action' section (theory, shape and couplings)")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "action":
            kwargs[key] = _action_section(value)
        elif key == "sampler":
            kwargs[key] = _sampler_section(value)
        elif key in _SECTIONS:
            kwargs[key] = _section(_SECTIONS[key], value, key)
        elif key in _FREE_SECTIONS:  # validated by their owner (flow: the family table)
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping of keys, got {value!r}")
            kwargs[key] = dict(value or {})
        else:
            typ = {f.name: f.type for f in dataclasses.fields(Config)}[key]
            if key == "seed" and isinstance(value, (int, float)) and not isinstance(value, bool) and \
                    not 0 <= value <= SEED_MAX:
                raise ConfigError(f"seed must be an integer in [0, {SEED_MAX}], got {value!r}")
            kwargs[key] = _coerce(value, typ, key)
    cfg = Config(**kwargs)
    if cfg.flow.get("family") == "snf":
        _snf_defaults(cfg, data.get("train") or {})
    _validate(cfg)
    return cfg


def _snf_defaults(cfg: Config, raw_train: dict) -> None:
    """Self-normalizing flows train with autograd estimators (standard by default; path_inverse and gdreg work
    too, fast_path needs score hooks the linear layers do not have), and by default accelerate the direction
    the objective differentiates (forward for reverse KL, else inverse)."""
    t = cfg.train
    if "estimator" not in raw_train:
        t.estimator = "standard"
    for key in ("estimator", "forward_estimator"):
        value = getattr(t, key)
        if value == "fast_path" or (key == "forward_estimator" and value is None and t.estimator == "fast_path"):
            raise ConfigError(f"train.{key} 'fast_path' needs score hooks that flow.family 'snf' does not have; "
                              f"use train.{key}: standard")
    if "direction" not in cfg.flow:
        cfg.flow["direction"] = "forward" if t.objective == "reverse_kl" else "inverse"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML, ``1e-3`` a number) to a nested dict, in place."""
    from .config_yaml import ConfigFileError, DuplicateKeyError, parse_yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key.sub=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw, f"--set {key}")
        except DuplicateKeyError as err:
            raise ConfigError(str(err)) from None
        except ConfigFileError:
            value = raw
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set expects key.sub=value, got {item!r}")
        for part in parts[:-1]:
            if node.get(part) is None:  # a missing or empty section
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> tuple[Config, str]:
    """Read, override and validate a YAML config; returns ``(config, resolved_yaml_text)``."""
    from .config_yaml import ConfigFileError, read_config_file

    try:
        data = read_config_file(path)
    except ConfigFileError as err:
        raise ConfigError(str(err)) from None
    data = apply_overrides(data, overrides or [])
    cfg = config_from_dict(data)
    return cfg, config_to_yaml(cfg)


def config_to_yaml(cfg: Config) -> str:
    """The resolved config (every default filled in) as YAML text."""
    data = dataclasses.asdict(cfg)
    data["action"] = {"theory": cfg.action.theory, "shape": list(cfg.action.shape),
                      **{k: v for k, v in cfg.action.couplings.items() if v is not None}}
    data["sampler"].update(data["sampler"].pop("options"))
    return yaml.safe_dump(data, sort_keys=False)


def build_action(a: ActionConfig):
    """The theory object of an ``action:`` section (``actions.build_theory``; e.g. ``actions.Phi4``)."""
    from actions import build_theory

    try:
        return build_theory(a.theory, a.shape, a.couplings)
    except ValueError as err:
        raise ConfigError(f"action.{err}") from None
