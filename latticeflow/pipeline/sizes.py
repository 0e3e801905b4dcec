"""Training over lattice sizes: ``train.sizes`` (``latticeflow train --sizes 16,32 CONFIG``).

A flow of translation-equivariant layers (convolutional couplings, the Fourier layer) has the same weights on
every lattice size, so it can learn the local physics where a step is cheap and fine-tune where it is dear. The
schedule trains the config's flow and couplings on L^d lattices for L in ``train.sizes`` (increasing; the last
is the config's own lattice), each stage starting from the previous stage's weights (`transfer_state`, as
``train.init`` does: convolution weights carry over, the Fourier layer starts from the new lattice's Gaussian
physics). Stage L < last trains for its ``train.size_seconds`` in ``<output.dir>/sizes/L<L>/`` (a run directory
of its own: checkpoints, metrics.csv); the last stage trains in ``<output.dir>`` itself for what is left of
``train.seconds``, which is the budget of the whole schedule: every second of every stage counts.

A rerun resumes: finished stages return at once (their budgets are spent) and the stage in progress continues
from its checkpoint. The summary lists the stages (L, steps, seconds, seconds per step) beside the last stage's
own entries; ``wall_time_total`` is the schedule's training time.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config, config_to_yaml
from ..io import write_json

__all__ = ["size_stages", "train_over_sizes", "stage_seconds", "training_chain_seconds"]

#: the share of ``train.seconds`` the stages before the last get by default (together, split equally)
EARLIER_SHARE = 0.25


def stage_seconds(cfg: Config) -> list[float]:
    """Seconds of each stage but the last: ``train.size_seconds`` or ``EARLIER_SHARE`` of ``train.seconds`` split
    equally.

    Example:
        >>> from latticeflow.config import config_from_dict
        >>> cfg = config_from_dict({"action": {"theory": "phi4", "shape": [8, 8], "kappa": 0.3, "lam": 0.5},
        ...                         "train": {"sizes": [4, 8], "seconds": 100}})
        >>> stage_seconds(cfg)
        [25.0]
    """
    t = cfg.train
    earlier = len(t.sizes or []) - 1
    if earlier <= 0:
        return []
    if t.size_seconds is not None:
        return [float(s) for s in t.size_seconds]
    return [EARLIER_SHARE * float(t.seconds) / earlier] * earlier


def size_stages(cfg: Config) -> list[tuple[int, Config]]:
    """(L, config) of each stage before the last: the same config on an L^d lattice, in ``sizes/L<L>/`` of the
    output directory, with the stage's seconds and batch size (``train.size_batch_sizes``) and no schedule of
    its own; each starts from the previous one
    (the first from ``train.init``, if any)."""
    out, d = cfg.output_dir, len(cfg.action.shape)
    stages: list[tuple[int, Config]] = []
    init = cfg.train.init
    earlier = len(cfg.train.sizes) - 1
    batches = cfg.train.size_batch_sizes or [cfg.train.batch_size] * earlier
    for L, seconds, batch in zip(cfg.train.sizes[:-1], stage_seconds(cfg), batches):
        stage_dir = out / "sizes" / f"L{L}"
        stage = dataclasses.replace(
            cfg, action=dataclasses.replace(cfg.action, shape=[L] * d),
            output=dataclasses.replace(cfg.output, dir=str(stage_dir)),
            train=dataclasses.replace(cfg.train, seconds=seconds, init=init, batch_size=int(batch), sizes=None,
                                      size_seconds=None, size_batch_sizes=None))
        stages.append((L, stage))
        init = str(stage_dir)
    return stages


def train_over_sizes(cfg: Config, config_text: str, train_one: Callable[..., dict], **kwargs: Any) -> dict:
    """Run the schedule with ``train_one(config, config_text, **kwargs)`` (one run directory each); returns the last
    stage's summary with ``sizes`` (one entry per stage) and ``wall_time_total`` added."""
    entries: list[dict[str, Any]] = []
    spent = 0.0
    for L, stage in size_stages(cfg):
        summary = train_one(stage, config_to_yaml(stage), **kwargs)
        spent += float(summary["wall_time"])
        entries.append(_entry(L, summary, stage.output_dir, stage.train.batch_size))
    last_init = str(cfg.output_dir / "sizes" / f"L{cfg.train.sizes[-2]}")
    # the last stage's budget: what the earlier stages left (each may run over its share by its last step),
    # decided once and kept (a rerun reads the earlier stages' wall time back from their checkpoints, which can
    # differ from the first run's by a hair, and must not buy the last stage another step)
    budget_file = cfg.output_dir / "sizes" / "last_stage_seconds.json"
    budget = max(float(cfg.train.seconds) - spent, 1e-3)
    try:
        kept = json.loads(budget_file.read_text())
        if float(kept["train_seconds"]) != float(cfg.train.seconds):  # the budget was changed: decide again
            raise ValueError("train.seconds changed")
        budget = float(kept["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        world = kwargs.get("world")
        if world is None or world.is_main:
            write_json(budget_file, {"seconds": budget, "train_seconds": float(cfg.train.seconds)})
    final = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seconds=budget, init=last_init))
    summary = train_one(final, config_text, **kwargs)
    entries.append(_entry(cfg.train.sizes[-1], summary, cfg.output_dir, cfg.train.batch_size))
    summary["sizes"] = entries
    summary["wall_time_total"] = spent + float(summary["wall_time"])
    world = kwargs.get("world")
    if world is None or world.is_main:
        write_json(cfg.output_dir / "train_summary.json", summary)
    return summary


def _entry(L: int, summary: dict, directory: Path, batch_size: int) -> dict[str, Any]:
    steps, wall = int(summary["steps"]), float(summary["wall_time"])
    return {"L": L, "dir": str(directory), "steps": steps, "batch_size": batch_size, "wall_time": wall,
            "seconds_per_step": wall / steps if steps else None,
            "reverse_ess": summary.get("final", {}).get("reverse_ess")}


def training_chain_seconds(run_dir: str | Path) -> float:
    """Every second of training behind the flow of the run directory ``run_dir``: its ``train_summary.json``'s
    ``wall_time_total`` (a schedule over sizes, every stage) or ``wall_time``, plus, recursively, that of the run
    its ``config.yaml``'s ``train.init`` started from (a checkpoint file or a run directory). Raises `ValueError`
    naming the file when a summary is missing or unreadable, or the chain loops.

    Example:
        >>> import json, pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name, init, seconds in (("a", None, 900.0), ("b", "a", 1800.0)):
        ...     (root / name).mkdir()
        ...     _ = (root / name / "train_summary.json").write_text(json.dumps({"wall_time": seconds}))
        ...     _ = (root / name / "config.yaml").write_text(
        ...         "train: {init: %s}" % (json.dumps(str(root / init)) if init else "null"))
        >>> training_chain_seconds(root / "b")
        2700.0
    """
    import yaml

    total, seen, directory = 0.0, set(), Path(run_dir)
    while directory is not None:
        key = directory.resolve()
        if key in seen:
            raise ValueError(f"the train.init chain of {str(run_dir)!r} loops at {str(directory)!r}")
        seen.add(key)
        path = directory / "train_summary.json"
        try:
            summary = json.loads(path.read_text())
            total += float(summary.get("wall_time_total", summary["wall_time"]))
            config = yaml.safe_load((directory / "config.yaml").read_text()) or {}
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
            raise ValueError(f"no training record in {str(directory)!r} ({type(err).__name__}: {err})") from None
        if not isinstance(config, dict) or not isinstance(config.get("train") or {}, dict):
            raise ValueError(f"{str(directory / 'config.yaml')!r} is not a run config (a mapping with a train section)")
        init = (config.get("train") or {}).get("init")
        if not init:
            break
        init = Path(init)
        directory = init.parent.parent if init.suffix == ".pt" else init  # <run>/checkpoints/<name>.pt
    return total

