"""The training loop, as in netket's drivers: a `Driver` writes only its optimisation ``step()``; the base
owns `Driver.run`, which repeats it until a budget and calls `Callback` objects on the way (metrics, CSV,
progress, checkpoints, validation, the wall-time budget, evaluation off the clock: see `.callbacks`).

Per step, in this order: ``step()``; the driver's clock (`Clock`: training seconds, this process and every
one before a resume, less the time a callback paused it) is read into ``driver.wall_time``; every
callback's ``on_step``; on a logged step (every ``log_every`` steps and the last one) a metrics row
(means over the steps since the last row) goes through every callback's ``on_row``; then every
``after_step``. A callback ends training after the current step by setting ``loop.stop`` to a reason.
A step that raises `Diverged` (training cannot go on) still has its row logged (``on_row``, with the
counts of that step, so metrics.csv and the message agree), but no ``after_step``: no checkpoint of it.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["Clock", "Callback", "Loop", "Driver", "Diverged", "METRIC_FIELDS"]

METRIC_FIELDS = ("step", "loss", "reverse_kl", "forward_kl", "reverse_ess", "forward_ess", "grad_norm", "lr",
                 "steps_per_s", "wall_time", "n_skipped", "reconstruction", "val_nll", "val_forward_ess")


class Diverged(ValueError):
    """Raised by a driver's ``step()`` when training cannot go on (a user error: the CLI prints its one line and
    exits 2). ``metrics``: the failing step's metrics (the step is counted), logged as the last row."""

    metrics: dict[str, float] | None = None


class Clock:
    """Training seconds: ``start`` (earlier processes) + the time since creation − the time spent paused."""

    def __init__(self, start: float = 0.0) -> None:
        self.start, self._t0, self._paused = float(start), time.perf_counter(), 0.0

    @property
    def elapsed(self) -> float:
        return self.start + time.perf_counter() - self._t0 - self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time inside this block does not count (evaluation off the clock)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t0


class Callback:
    """Hooks of `Driver.run`; each default does nothing. Set ``loop.stop`` to end training after this step."""

    def on_start(self, loop: Loop) -> None:
        """Before the first step (``loop.stop`` set here: nothing to do, `run` returns [])."""

    def on_step(self, loop: Loop, metrics: dict[str, float]) -> None:
        """After every step, with the step's metrics (``skipped`` = 1 for a non-finite step)."""

    def on_row(self, loop: Loop, row: dict[str, float]) -> None:
        """Every logged row (it may be completed here, e.g. with validation metrics)."""

    def after_step(self, loop: Loop) -> None:
        """After the row of the step (checkpoints)."""

    def on_end(self, loop: Loop) -> None:
        """Always, also after an exception."""


class _Interval:
    """Means over the steps of one metrics row (a KL or ESS only over steps where it is finite)."""

    def __init__(self, clock: Clock) -> None:
        self.t0, self.n, self.n_good, self.sums, self.counts = clock.elapsed, 0, 0, {}, {}

    def add(self, m: dict[str, float]) -> None:
        self.n += 1
        good = not m["skipped"]
        self.n_good += good
        for key, paired, ok in (("loss", None, good), ("grad_norm", None, good), ("reverse_kl", "reverse_ess", True),
                                ("forward_kl", "forward_ess", True), ("reconstruction", None, good)):
            if ok and key in m and math.isfinite(m[key]) and (paired is None or math.isfinite(m[paired])):
                for k in (key, paired) if paired else (key,):
                    self.sums[k] = self.sums.get(k, 0.0) + m[k]
                    self.counts[k] = self.counts.get(k, 0) + 1

    def mean(self, key: str, n: int | None = None) -> float:
        n = n or self.counts.get(key, 0)
        return self.sums.get(key, 0.0) / n if n else float("nan")

    def row(self, driver: Driver, now: float) -> dict[str, float]:
        good = self.n_good or None  # no finite step since the last row: loss and grad norm NaN, not 0
        return {"step": driver.step_count, "loss": self.mean("loss", good), "val_nll": float("nan"),
                "val_forward_ess": float("nan"), "reverse_kl": self.mean("reverse_kl"),
                "forward_kl": self.mean("forward_kl"), "reverse_ess": self.mean("reverse_ess"),
                "forward_ess": self.mean("forward_ess"), "grad_norm": self.mean("grad_norm", good),
                "lr": driver.optimizer.param_groups[0]["lr"], "steps_per_s": self.n / max(now - self.t0, 1e-9),
                "wall_time": now, "n_skipped": driver.n_skipped, "reconstruction": self.mean("reconstruction")}


class Loop:
    """One call of `Driver.run`: the driver, its clock, the step budget, the callbacks and the rows so far."""

    def __init__(self, driver: Driver, n_steps: int | None, log_every: int, callbacks: Sequence[Callback]) -> None:
        self.driver, self.n_steps, self.log_every, self.callbacks = driver, n_steps, log_every, list(callbacks)
        self.clock = Clock(driver.wall_time)
        self.stop: str | None = None  # why training ends after this step ("seconds", "early_stopping", …)
        self.rows: list[dict[str, float]] = []

    @property
    def last(self) -> bool:
        """Is the current step the last one (the step budget reached, or a callback stopped training)?"""
        return self.stop is not None or (self.n_steps is not None and self.driver.step_count >= self.n_steps)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


class Driver:
    """Base of the training drivers: a subclass writes ``step() -> metrics`` (one optimiser update) and has
    ``optimizer``; the base owns the loop (`run`), the step counter, the skipped steps and the clock."""

    step_count: int = 0
    n_skipped: int = 0
    wall_time: float = 0.0  # training seconds so far (every process), the clock of budget and schedule
    optimizer: Any

    def step(self) -> dict[str, float]:
        raise NotImplementedError

    def run(self, n_steps: int | None, *, log_every: int = 10, callbacks: Sequence[Callback] = ()) -> list[dict]:
        """Step until ``step_count`` reaches ``n_steps`` (None: until a callback stops) and return the rows."""
        loop = Loop(self, n_steps, log_every, callbacks)
        stepped = False
        try:
            loop._call("on_start")
            interval = _Interval(loop.clock)
            while not loop.last:  # (a stop set by on_start: nothing to do)
                stepped = True
                try:
                    metrics = self.step()
                except Diverged as err:
                    if err.metrics is not None:  # the last row: the counts of the failing step
                        self.wall_time = loop.clock.elapsed
                        interval.add(err.metrics)
                        loop.stop = "diverged"
                        row = interval.row(self, loop.clock.elapsed)
                        loop.rows.append(row)
                        with contextlib.suppress(Exception):  # best effort: the divergence is the error
                            loop._call("on_row", row)
                    raise
                self.wall_time = loop.clock.elapsed
                interval.add(metrics)
                loop._call("on_step", metrics)
                if self.step_count % log_every == 0 or loop.last:
                    now = loop.clock.elapsed
                    row = interval.row(self, now)
                    loop.rows.append(row)
                    loop._call("on_row", row)
                    interval = _Interval(loop.clock)
                loop._call("after_step")
        finally:
            if stepped:
                self.wall_time = loop.clock.elapsed
            loop._call("on_end")
        return loop.rows
