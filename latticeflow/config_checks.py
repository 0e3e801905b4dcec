"""The checks of a parsed :class:`~latticeflow.config_schema.Config` that span keys or need the machine: a plain
run name, the seed range, devices and dtypes, the ``train:`` settings, a lattice that fits in memory and a chain
sampler that can take the theory. Each failure is one :class:`ConfigError` naming the key and the value."""
from __future__ import annotations

import math

from .config_schema import SEED_MAX, Config, ConfigError, build_action

__all__ = ["validate"]


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


def _check_sizes(cfg: Config) -> None:
    """``train.sizes`` / ``train.size_seconds``: increasing extents ending at the config's hypercubic lattice, a
    ``train.seconds`` budget for the whole schedule and a positive share of it for every earlier stage."""
    t = cfg.train
    if t.sizes is None:
        if t.size_seconds is not None:
            raise ConfigError(f"train.size_seconds needs train.sizes, got size_seconds={t.size_seconds}")
        if t.size_batch_sizes is not None:
            raise ConfigError(f"train.size_batch_sizes needs train.sizes, got size_batch_sizes={t.size_batch_sizes}")
        return
    sizes, shape = t.sizes, list(cfg.action.shape)
    if not sizes or any(L < 2 for L in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"train.sizes must be increasing lattice extents >= 2, got {sizes}")
    if len(set(shape)) != 1 or sizes[-1] != shape[0]:
        raise ConfigError(f"train.sizes must end with the config's lattice extent (action.shape {shape}, "
                          f"all extents equal), got {sizes}")
    if len(sizes) > 1 and t.seconds is None:
        raise ConfigError("train.sizes needs train.seconds, the budget of the whole schedule")
    if t.size_seconds is not None:
        ok = isinstance(t.size_seconds, (list, tuple)) and len(t.size_seconds) == len(sizes) - 1 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in t.size_seconds)
        if not ok:
            raise ConfigError(f"train.size_seconds must be {len(sizes) - 1} positive number(s), one per stage before "
                              f"the last of train.sizes {sizes}, got {t.size_seconds!r}")
        if sum(t.size_seconds) >= t.seconds:
            raise ConfigError(f"train.size_seconds {list(t.size_seconds)} leave nothing of train.seconds = "
                              f"{t.seconds:g} for the last size")
    if t.size_batch_sizes is not None:
        ok = isinstance(t.size_batch_sizes, (list, tuple)) and len(t.size_batch_sizes) == len(sizes) - 1 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in t.size_batch_sizes)
        if not ok:
            raise ConfigError(f"train.size_batch_sizes must be {len(sizes) - 1} integer(s) >= 1, one per stage "
                              f"before the last of train.sizes {sizes}, got {t.size_batch_sizes!r}")


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


def validate(cfg: Config) -> None:
    """Every check of a whole config (called by `latticeflow.config.config_from_dict`)."""
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
    if s.reference_winding < 0:
        raise ConfigError(f"sampler.reference_winding must be >= 0, got {s.reference_winding}")
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
    _check_sizes(cfg)
    _check_memory(cfg)
    _check_sampler_fits(cfg)
