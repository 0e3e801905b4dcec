"""What every theory offers the machinery: the `Theory` base and the `TableRow` of the analysis table.

A theory is one file in `actions/` and one line in `actions.THEORIES`. Everything outside `actions/`
asks the theory object, never its name:

- ``from_couplings(shape, couplings)``: build from the YAML ``action:`` section (validation lives here;
  a ``ValueError`` starts with the coupling's name, e.g. ``"beta must be > 0, got -1.0"``);
- ``action(x) -> (B,)``, ``force(x)``, ``update(x, p, eps)`` (the HMC position update on the field
  space: additive for φ⁴, on the circle for U(1)), ``project(x)``, ``hot_start(n, …)``;
- ``symmetry(x)``, ``observables(x) -> {name: (B, …)}`` (normalisations in each theory's docstring);
- ``table_rows()``: the rows of the analysis table with their exact values where known; rows marked
  ``main`` enter the trust verdict;
- ``scan_rows()`` and ``crossing_observable``: the rows a coupling scan (`latticeflow scan`) plots against the
  scanned coupling, and the one whose curves for successive lattice sizes cross at the critical coupling;
- ``extra_analysis(observables)``: theory-specific plain-numpy extras (a charge histogram, say);
- ``log_z_exact()``: the exact ln Z (Lebesgue measure on the field space) where known.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["TableRow", "Theory", "check_coupling_keys"]


@dataclass(frozen=True)
class TableRow:
    """One row of the analysis table.

    ``inputs`` name per-configuration observables (keys of ``observables``), optionally with a component
    index ``(key, (t, 0))`` for array observables. Without ``func`` the row is the mean of
    ``factor * inputs[0]`` (a primary observable); with ``func`` it is ``func(*means)`` (derived, errors by
    linear propagation). ``exact`` is the exact value where known; ``main`` rows enter the verdict.
    """

    name: str
    inputs: tuple[Any, ...]
    func: Callable[..., float] | None = None
    factor: float = 1.0
    exact: float | None = None
    main: bool = False


def check_coupling_keys(couplings: Mapping[str, Any], allowed: Sequence[str], theory: str) -> None:
    """Raise ``ValueError`` naming the first coupling that ``theory`` does not have."""
    import difflib

    for key in couplings:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), list(allowed), n=1)
            extra = f"(did you mean '{hint[0]}'?)" if hint else f"(allowed: {', '.join(allowed)})"
            raise ValueError(f"{key} is not a coupling of theory {theory} {extra}")


class Theory:
    """Defaults shared by the theories; a subclass sets ``theory`` and ``coupling_keys``."""

    theory: str = ""
    coupling_keys: tuple[str, ...] = ()
    #: the per-configuration observable whose histogram the report plots
    histogram_observable: str | None = None
    #: the observable whose τ_int the run compares between samplers (cost of an independent sample)
    cost_observable: str | None = None
    #: the table row reported beside it (with its pull against the exact value)
    cost_estimate: str | None = None
    #: the table rows a coupling scan plots against the scanned coupling (None: the ``main`` rows)
    scan_observables: tuple[str, ...] | None = None
    #: the scan row whose curves for successive lattice sizes cross at the critical coupling (a Binder
    #: cumulant, say); None: the theory has no such crossing
    crossing_observable: str | None = None
    shape: tuple[int, ...]

    @classmethod
    def from_couplings(cls, shape: Sequence[int], couplings: Mapping[str, Any]) -> "Theory":
        """Build from a lattice shape and the couplings of an ``action:`` section (``None`` = not given);
        a missing coupling is a ``ValueError`` naming it."""
        import inspect

        check_coupling_keys(couplings, cls.coupling_keys, cls.theory)
        given = {k: v for k, v in couplings.items() if v is not None}
        for name, p in list(inspect.signature(cls.__init__).parameters.items())[2:]:
            if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) \
                    and name not in given:
                raise ValueError(f"{name} is required for theory {cls.theory}")
        return cls(shape, **given)

    @property
    def field_shape(self) -> tuple[int, ...]:
        return tuple(self.shape)

    @property
    def volume(self) -> int:
        return math.prod(self.shape)

    def hot_start(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` random configurations (N(0, 1) per degree of freedom)."""
        return torch.randn((n, *self.field_shape), generator=generator, dtype=dtype, device=device)

    def update(self, x: torch.Tensor, p: torch.Tensor, eps: float) -> torch.Tensor:
        """HMC position update x ← exp(ε p) x on the field space; flat space: x + ε p."""
        return x + eps * p

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Bring a field back to its documented range (identity on flat space)."""
        return x

    def table_rows(self) -> list[TableRow]:
        return []

    def scan_rows(self) -> tuple[str, ...]:
        """Names of the table rows a coupling scan plots: ``scan_observables``, else the ``main`` rows."""
        if self.scan_observables is not None:
            return tuple(self.scan_observables)
        return tuple(r.name for r in self.table_rows() if r.main)

    def extra_analysis(self, observables: Mapping[str, Any], weights: Any = None) -> dict[str, Any]:
        return {}

    def log_z_exact(self) -> float | None:
        return None
