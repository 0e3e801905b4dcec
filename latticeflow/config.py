"""Run configuration: YAML → validated, typed dataclasses (keys of architecture.md).

The sections are the dataclasses of :mod:`latticeflow.config_schema`, the checks that span keys are in
:mod:`latticeflow.config_checks`. Every section but ``action`` has defaults; unknown keys are errors with a "did you mean" hint;
every error names the key and the value (``ConfigError("action.beta must be > 0, got -1.0")``).
``--set key.sub=value`` overrides are applied to the YAML tree before validation; values are parsed
as YAML (``--set action.shape=[16,8]``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any

import yaml

from .config_checks import validate
from .config_schema import (SEED_MAX, ActionConfig, Config, ConfigError, OutputConfig, SamplerConfig, TrainConfig,
                            build_action)

__all__ = [
    "ConfigError", "ActionConfig", "SamplerConfig", "TrainConfig", "OutputConfig", "Config",
    "load_config", "config_from_dict", "apply_overrides", "config_to_yaml", "build_action",
]


_SECTIONS = {"train": TrainConfig, "output": OutputConfig}
_FREE_SECTIONS = ("flow",)
_TOP = {f.name for f in dataclasses.fields(Config)}


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
    kwargs.setdefault("sampler", _sampler_section({}))  # the default sampler with its registry options filled
    cfg = Config(**kwargs)
    if cfg.flow.get("family") == "snf":
        _snf_defaults(cfg, data.get("train") or {})
    validate(cfg)
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
