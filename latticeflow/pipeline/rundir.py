"""The run directory's ``config.yaml`` and the gate every writing command passes before its first write.

A command that writes into ``output.dir`` (``sample``, ``train``, ``run``) first holds the directory's lock
(`latticeflow.io.lock`), then runs every check that can refuse it read-only, then passes the gate
(`WriteGate.ready`): under MPI every rank learns whether any rank refused, so either all ranks write or none
does. ``config.yaml`` is part of the gate: an existing one that differs from this run's resolved config in a
key other than `MAY_DIFFER` (budgets and bookkeeping that a resume may legitimately change) is refused in one
line naming the first differing key; otherwise the new one is written atomically once the command's own file
has accepted the run (`WriteGate.accepted`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, config_from_dict, config_to_yaml
from ..config_yaml import ConfigFileError, parse_yaml
from ..distributed import World, collective_check
from ..io import write_text

__all__ = ["MAY_DIFFER", "config_difference", "config_problem", "WriteGate"]

#: keys of ``config.yaml`` a resume may change: budgets (raised to extend a run) and bookkeeping that changes
#: neither the physics nor the sampler or the training (``threads`` and ``progress``, where configs have them)
MAY_DIFFER = ("name", "output.dir", "sampler.n_samples", "sampler.reference_hmc", "sampler.reference_winding", "train.steps", "train.seconds",
              "train.log_every", "train.checkpoint_every", "threads", "progress")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree} if prefix else {"": tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _resolved(text: str) -> Any:
    """The parsed config with every default filled in (as the pipeline writes it), else as parsed."""
    tree = parse_yaml(text)  # the package's YAML (``1e-3`` is a number), as `load_config` reads config.yaml
    try:
        return parse_yaml(config_to_yaml(config_from_dict(tree)))
    except Exception:  # noqa: BLE001 — a config of another version or a foreign file: compare as it is
        return tree


def config_difference(old_text: str, new_text: str) -> tuple[str, Any, Any] | None:
    """(first differing key, old value, new value) between two config texts, ignoring `MAY_DIFFER`; or None."""
    old, new = _flatten(_resolved(old_text)), _flatten(_resolved(new_text))
    for key in [*new, *(k for k in old if k not in new)]:
        if key in MAY_DIFFER or key.split(".")[-1] in ("threads", "progress"):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            return key, old.get(key, "<absent>"), new.get(key, "<absent>")
    return None


def config_problem(out_dir: Path, config_text: str) -> str | None:
    """Why ``config_text`` must not replace ``<out_dir>/config.yaml`` (one line), or None."""
    path = Path(out_dir) / "config.yaml"
    if not config_text or not path.is_file():
        return None
    try:
        old = path.read_text()
        if not old.strip():  # written by an API call without config text: nothing to compare
            return None
        diff = config_difference(old, config_text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigFileError) as err:
        return f"{path} exists but cannot be read as a config ({type(err).__name__}); move it away or use another output.dir"
    if diff is None:
        return None
    key, was, now = diff
    return (f"{path} differs from this run's config at {key!r} ({was!r} there, {now!r} here): resume with the same "
            f"config (only {', '.join(MAY_DIFFER[2:6])} may change) or choose another output.dir")


class WriteGate:
    """Passed once by every rank after its read-only checks (`ready`), before its first write."""

    def __init__(self, out_dir: Path | None, config_text: str, world: World | None = None) -> None:
        self.out_dir, self.config_text, self.world = out_dir, config_text, world or World()

    def ready(self, error: BaseException | None = None) -> None:
        """Collective: raise on every rank if this rank's ``error``, another rank's, or ``config.yaml`` refuses.

        In a one-process run an ``error`` is left to the caller to raise as it is."""
        problem = None
        if error is not None:
            if not self.world.distributed:
                return
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        elif self.world.is_main and self.out_dir is not None:
            problem = config_problem(self.out_dir, self.config_text)
        collective_check(self.world, problem, ConfigError)

    def accepted(self) -> None:
        """Write ``config.yaml`` (rank 0, atomically) once the command's own file accepted the run."""
        if self.world.is_main and self.out_dir is not None and self.config_text:
            write_text(Path(self.out_dir) / "config.yaml", self.config_text)
