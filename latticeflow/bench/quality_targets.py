"""Targets and flow families of `latticeflow bench quality`, and their validation (all before any training).

`TARGETS` (theory, lattice, couplings, default budget and batch), `FAMILIES` per target (flow config,
Trainer settings over `TRAIN_DEFAULTS`, optional β annealing), `select` (the --targets / --families
selection), and the checks that turn a bad entry into one line naming the target and family.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from actions import build_theory
from ._common import seeds as _parse_seeds

__all__ = ["Target", "TARGETS", "FAMILIES", "QUICK_FAMILIES", "QUICK_SECONDS", "SIZES", "JACKKNIFE_BLOCKS",
           "TRAIN_DEFAULTS", "select"]


@dataclass(frozen=True)
class Target:
    """One target density: theory, lattice, couplings, default budget (s) and batch size. ``sectors``: the
    HMC reference chains start in topological sectors allocated by the exact P(Q) (HMC barely changes Q);
    ``note``: a caveat on the reference, reported with it."""

    name: str
    theory: str
    shape: tuple[int, int]
    couplings: dict[str, float] = field(hash=False)
    seconds: float
    batch_size: int
    sectors: bool = False
    note: str | None = None

    def action(self, **couplings: float):
        """The target's action (``couplings`` override some, e.g. ``beta`` for an annealing stage)."""
        return build_theory(self.theory, self.shape, {**self.couplings, **couplings})


_FROZEN = ("approximate: HMC is frozen in topology at this beta, so the reference's charge distribution is the "
           "starting allocation (exact P(Q) rounded to whole chains, see checks of chi_t), not an equilibrium "
           "measurement; within a sector it is HMC")
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("free8", "phi4", (8, 8), {"kappa": 0.2, "lam": 0.0}, 10.0, 256),        # free field: exact ln Z
    Target("phi4_8", "phi4", (8, 8), {"kappa": 0.25, "lam": 0.5}, 300.0, 256),
    Target("phi4_16x8", "phi4", (16, 8), {"kappa": 0.3, "lam": 0.022}, 1800.0, 256),  # broken phase
    Target("u1_b2", "u1", (8, 8), {"beta": 2.0}, 300.0, 128, sectors=True),        # exact ln Z
    Target("u1_b6", "u1", (8, 8), {"beta": 6.0}, 600.0, 128, sectors=True, note=_FROZEN),  # frozen topology
)}

# Training settings every family starts from (an entry's "train" overrides any of them, and may add any
# other keyword of `latticeflow.training.Trainer`, e.g. "scheduler": "plateau" | "cosine", "lr_min").
# batch_size None = the target's.
TRAIN_DEFAULTS: dict[str, Any] = {"estimator": "fast_path", "batch_size": None, "lr": 1e-3, "grad_clip": 1.0}

# The families per target: label -> {"flow": config of `build_flow`, "train": {...}, optional "anneal"}.
# Plain data: a flow family that `build_flow` does not know fails when the benchmark starts (before any
# training), naming the target and label, not at import. Labels must not contain commas (--families).
_SPLINE_TRAIN = {"scheduler": "cosine", "warmup_steps": 20}  # warm-up keeps the exact free-field start
_PHI4_FAMILIES = {
    "z2nice (old default)": {"flow": {"family": "z2nice"}, "train": {}},
    "spline": {"flow": {"family": "spline"}, "train": _SPLINE_TRAIN},
    "z2affine": {"flow": {"family": "z2affine"}, "train": _SPLINE_TRAIN},
    "realnvp": {"flow": {"family": "realnvp"}, "train": {}},
}
_U1_FAMILIES = {
    "u1_ncp (old default)": {"flow": {"family": "u1_ncp"}, "train": {}},
    "u1 (marginal + spline)": {"flow": {"family": "u1"}, "train": _SPLINE_TRAIN},
    "u1 spline, no marginal": {"flow": {"family": "u1", "marginal": False}, "train": {}},
}
FAMILIES: dict[str, dict[str, dict[str, Any]]] = {
    "free8": dict(_PHI4_FAMILIES),
    "phi4_8": dict(_PHI4_FAMILIES),
    "phi4_16x8": {**_PHI4_FAMILIES,
                  "spline + zero mode": {"flow": {"family": "spline", "zero_mode": True}, "train": _SPLINE_TRAIN},
                  "spline, symmetric start": {"flow": {"family": "spline", "vacua": False}, "train": _SPLINE_TRAIN}},
    "u1_b2": dict(_U1_FAMILIES),
    "u1_b6": {**_U1_FAMILIES,
              "u1 spline, no marginal, annealed 2→4→6": {"flow": {"family": "u1", "marginal": False}, "train": {},
                                                          "anneal": [[2.0, 0.2], [4.0, 0.2], [6.0, 0.6]]}},
}

# --quick: two targets, two families each, one seed, 3 s budgets, small batches and reference.
QUICK_FAMILIES = {"free8": ("z2nice (old default)", "spline"), "u1_b2": ("u1_ncp (old default)", "u1 (marginal + spline)")}
QUICK_SECONDS = 3.0
SIZES = {"full": {"eval_batch": 2048, "final_batch": 8192, "n_chains": 16, "n_thermalize": 200,
                  "n_configurations": 4096, "every": 4},
         "quick": {"eval_batch": 256, "final_batch": 1024, "n_chains": 8, "n_thermalize": 60,
                   "n_configurations": 256, "every": 2}}
JACKKNIFE_BLOCKS = 32
_ENTRY_KEYS = {"flow", "train", "anneal"}


# -- selection and validation (all before any training) ------------------------------------------------
def _split(values: str | Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = values.split(",")
    out = [v.strip() for v in values if v.strip()]
    return out or None


def _seeds(seeds) -> list[int]:
    return _parse_seeds(seeds, "bench quality")


def select(targets=None, families=None, quick: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """{target: {label: entry}} for the given target names and family selectors (label, or flow family
    name such as ``u1`` or ``z2nice``); defaults: all (``quick``: `QUICK_FAMILIES`). Raises ValueError
    naming an unknown target or a selector that matches no family of the selected targets."""
    names = _split(targets) or (list(QUICK_FAMILIES) if quick else list(TARGETS))
    for name in names:
        if name not in TARGETS:
            raise ValueError(f"bench quality: unknown target {name!r} (known: {', '.join(TARGETS)})")
    selectors = _split(families)
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    used: set[str] = set()
    for name in dict.fromkeys(names):
        table = FAMILIES.get(name, {})
        if selectors is None:
            labels = list(QUICK_FAMILIES.get(name, ())) if quick and name in QUICK_FAMILIES else list(table)
        else:
            labels = []
            for label, entry in table.items():
                hits = {s for s in selectors if s == label or s == (entry.get("flow") or {}).get("family")}
                if hits:
                    labels.append(label)
                    used |= hits
        chosen[name] = {label: table[label] for label in labels}
    unknown = [s for s in (selectors or []) if s not in used]
    if unknown:
        known = sorted({label for n in names for label in FAMILIES.get(n, {})})
        raise ValueError(f"bench quality: family {unknown[0]!r} matches no family of target(s) {', '.join(names)} "
                         f"(labels: {'; '.join(known)}; or a flow family name)")
    return chosen


def _train_settings(target: Target, label: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's Trainer keywords over `TRAIN_DEFAULTS`; unknown keys are errors naming the family."""
    from ..training import Trainer

    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ValueError(f"bench quality: family {label!r} of target {target.name!r} has unknown key(s) "
                         f"{sorted(unknown)} (allowed: {sorted(_ENTRY_KEYS)})")
    settings = {**TRAIN_DEFAULTS, **(entry.get("train") or {})}
    if settings["batch_size"] is None:
        settings["batch_size"] = target.batch_size
    allowed = set(inspect.signature(Trainer).parameters) - {"flow", "action", "seed", "objective", "data", "world"}
    bad = sorted(set(settings) - allowed)
    if bad:
        raise ValueError(f"bench quality: family {label!r} of target {target.name!r}: train key {bad[0]!r} is not a "
                         f"Trainer setting here (objective is reverse_kl; allowed: {', '.join(sorted(allowed))})")
    return settings


def _anneal_stages(target: Target, label: str, entry: dict[str, Any]) -> list[tuple[float | None, float]]:
    """[(β or None for the target's action, fraction of the budget)]."""
    anneal = entry.get("anneal")
    if not anneal:
        return [(None, 1.0)]
    where = f"bench quality: family {label!r} of target {target.name!r}: anneal"
    if "beta" not in target.couplings:
        raise ValueError(f"{where} is a schedule in beta, and target {target.name!r} has no coupling beta")
    try:
        stages = [(float(b), float(f)) for b, f in anneal]
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a list of [beta, fraction] pairs, got {anneal!r}") from None
    if any(not (b > 0 and f > 0) for b, f in stages):
        raise ValueError(f"{where}: every beta and fraction must be > 0, got {anneal!r}")
    if abs(sum(f for _, f in stages) - 1) > 1e-6:
        raise ValueError(f"{where}: the fractions must sum to 1, got {sum(f for _, f in stages):g}")
    if stages[-1][0] != target.couplings["beta"]:
        raise ValueError(f"{where}: the last stage must be the target's beta = {target.couplings['beta']:g}, "
                         f"got {stages[-1][0]:g}")
    return stages


def _build(target: Target, label: str, entry: dict[str, Any], action, dtype, device):
    from ..flows import build_flow

    try:
        return build_flow(entry.get("flow") or {}, action).to(device=device, dtype=dtype)
    except ValueError as err:  # FlowError: unknown family or key; say which benchmark entry
        raise ValueError(f"bench quality: family {label!r} of target {target.name!r}: {err}") from None
