"""What the benchmarks share: the result header and its strict-JSON copy, dtype and thread settings, the
untimed warm-up step, the tuned and timed HMC protocol, name lists, text tables and the figure boilerplate."""
from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..io import dumps_json

__all__ = ["torch_dtype", "header", "strict_result", "threads", "warm_up", "names", "tuned_run", "fmt", "table",
           "figure"]


def torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` for ``"float32"`` (the CLI offers float32 and float64); a torch dtype as it is."""
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)


def header(name: str, **fields: Any) -> dict[str, Any]:
    """benchmark, date, torch version, threads and the load average at the start, then ``fields``."""
    return {"benchmark": name, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_avg": {"start": list(os.getloadavg())}, **fields}


def strict_result(result: Any) -> Any:
    """``result`` as it reads back from strict JSON (`latticeflow.io.dumps_json`: NaN/inf → null), which is
    what every benchmark returns."""
    return json.loads(dumps_json(result, indent=None))


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (nothing for None), restored after."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def warm_up(flow, action, **settings: Any) -> None:
    """One untimed `Trainer` step on a throwaway copy of ``flow`` (lazy initialisations, the allocator)."""
    from ..training import Trainer

    Trainer(copy.deepcopy(flow), action, **settings).step()


def names(values: str | Iterable[str] | None) -> list[str] | None:
    """A list of names from a comma-separated string or an iterable (blanks dropped); None for none."""
    if values is None:
        return None
    out = [v.strip() for v in (values.split(",") if isinstance(values, str) else values) if v.strip()]
    return out or None


def tuned_run(sampler, x: torch.Tensor, *, n_thermalize: int, seconds: float, measure: Callable[[torch.Tensor], Any],
              trajectory_length: float = 1.0, min_sweeps: int = 16) -> dict[str, Any]:
    """The benchmarks' fair HMC protocol for ``sampler`` (`HMC` or one with its ``step``/``thermalize``): the
    step size tuned to the target acceptance (``n_thermalize`` trajectories, `HMC.thermalize`), then the
    number of leapfrog steps set so that ε·n_lf ≈ ``trajectory_length`` and the step size re-tuned
    (max(20, n_thermalize // 3) trajectories); then the chains run (`hmc_chains`) for ``seconds`` of wall
    time, at least ``min_sweeps`` sweeps, ``measure(x)`` after every one. Returns {"measurements",
    "acceptance" (per sweep, mean over chains), "thermalize_seconds", "wall_seconds", "cpu_seconds"}."""
    from ..samplers.hmc import hmc_chains

    t0 = time.perf_counter()
    x = sampler.thermalize(x, n_thermalize)
    sampler.n_leapfrog = max(1, round(trajectory_length / sampler.step_size))
    x = sampler.thermalize(x, max(20, n_thermalize // 3))
    out: dict[str, Any] = {"measurements": [], "acceptance": [], "thermalize_seconds": time.perf_counter() - t0}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for sweep in hmc_chains(sampler, x):
        out["measurements"].append(measure(sweep.x))
        out["acceptance"].append(float(sweep.accepted.double().mean()))
        if len(out["measurements"]) >= min_sweeps and time.perf_counter() - wall0 >= seconds:
            break
    out.update(wall_seconds=time.perf_counter() - wall0, cpu_seconds=time.process_time() - cpu0)
    return out


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or an em dash (right-aligned to the spec's width) for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = re.match(r"[<>^]?[+\- ]?(\d*)", spec).group(1)
        return format("—", f">{width}") if width else "—"
    return format(value, spec)


def table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence | str], *, title: str | Sequence[str] = (),
          notes: Sequence[str] = ()) -> str:
    """A text table: the ``title`` line(s), a header of ``columns`` ((name, format spec) pairs; each name
    aligned and padded as its spec), a rule, one line per row (a sequence of cells, ``fmt(cell, spec)``
    joined by blanks; a string row is printed as it is), then the ``notes`` lines."""
    def aligned(name: str, spec: str) -> str:
        align, width = re.match(r"([<>^]?)[+\- ]?(\d*)", spec).groups()
        return format(name, (align or (">" if re.search(r"[defgn%]$", spec) else "<")) + width)

    head = " ".join(aligned(name, spec) for name, spec in columns)
    lines = [title] if isinstance(title, str) else list(title)
    lines += [head, "-" * len(head)]
    lines += [row if isinstance(row, str) else " ".join(fmt(c, s) for c, (_, s) in zip(row, columns)) for row in rows]
    return "\n".join(line.rstrip() for line in lines + list(notes))


@contextlib.contextmanager
def figure(path: str, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> Iterator[tuple[Any, np.ndarray]]:
    """A matplotlib figure (Agg) with an (nrows, ncols) array of axes, saved to ``path`` after the block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, squeeze=False, **kwargs)
    try:
        yield fig, axes
        for ax in axes.flat:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
