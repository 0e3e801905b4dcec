"""YAML for run configs: reading a config file, and the loader that parses it and ``--set`` values.

The loader is PyYAML's safe loader with two changes:

* numbers in exponent notation without a dot (``1e-3``, ``5E4``) are floats, as in YAML 1.2 and Python
  (YAML 1.1, which PyYAML implements, reads them as strings); ``1.0e-3``, ``0.001`` and integers are
  unchanged;
* a key given twice in one mapping is an error naming the key and both lines (PyYAML keeps the last
  one silently).

Every error is a one-line :class:`ConfigFileError` that names the file (:mod:`latticeflow.config` raises it
again as a ``ConfigError``; this module does not import it, so that ``config`` can import this one).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigFileError", "ConfigLoader", "DuplicateKeyError", "parse_yaml", "read_config_file"]


class ConfigFileError(ValueError):
    """A config file or ``--set`` value cannot be read as a YAML mapping; the message names it."""


class DuplicateKeyError(ConfigFileError):
    """A mapping of a config names the same key twice."""


class ConfigLoader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 exponent floats and refused duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:  # the keys written here; '<<' merged keys may be overridden
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    break
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise DuplicateKeyError(f"duplicate key {key!r} on line {line} (first on line {first})")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text with :class:`ConfigLoader`; errors name ``source``."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 — a SafeLoader subclass
    except DuplicateKeyError as err:
        raise DuplicateKeyError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())[:300]
        raise ConfigFileError(f"{source} is not valid YAML: {first}") from None


def read_config_file(path: str | os.PathLike) -> dict:
    """The top-level mapping of a YAML config file. A missing file, a directory, an unreadable or binary
    file, invalid YAML, duplicate keys and a top level that is not a mapping are one-line ConfigFileErrors."""
    p = Path(path)
    name = f"config file {str(path)!r}"
    if p.is_dir():
        raise ConfigFileError(f"{name} is a directory, not a YAML file")
    if not p.exists():
        raise ConfigFileError(f"config file not found: {str(path)!r}")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ConfigFileError(f"{name} cannot be read: {err.strerror or err}") from None
    try:
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"{name} is not a text (UTF-8 YAML) file: binary byte at offset {err.start}") from None
    data = parse_yaml(text, name)
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string"}.get(type(data), f"a {type(data).__name__}")
        raise ConfigFileError(f"{name} must be a YAML mapping of sections (action:, sampler:, …), got {kind}: "
                          f"{_short(data)}")
    return data


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"
