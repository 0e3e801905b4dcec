"""Targets and flow families of `latticeflow bench quality`, their validation (all before any training), and
the HMC reference ensemble of a target (also the training data of `latticeflow bench forward`).
Contents: docs/benchmarks.md#targets-and-families-of-quality."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from actions import build_theory
from actions.exact import u1_charge_allocation
from actions.u1 import charge_configuration
from ..training import Trainer, anneal_stages, hmc_reference
from . import names

__all__ = ["Target", "TARGETS", "FAMILIES", "QUICK_FAMILIES", "QUICK_SECONDS", "SIZES", "JACKKNIFE_BLOCKS",
           "TRAIN_DEFAULTS", "select", "check_entry", "reference_ensemble"]


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

# --quick: two targets, two families each, one seed, 1.5 s budgets, small batches and reference.
QUICK_FAMILIES = {"free8": ("z2nice (old default)", "spline"), "u1_b2": ("u1_ncp (old default)", "u1 (marginal + spline)")}
QUICK_SECONDS = 1.5
SIZES = {"full": {"eval_batch": 2048, "final_batch": 8192, "n_chains": 16, "n_thermalize": 200,
                  "n_configurations": 4096, "every": 4},
         "quick": {"eval_batch": 256, "final_batch": 1024, "n_chains": 8, "n_thermalize": 60,
                   "n_configurations": 256, "every": 2}}
JACKKNIFE_BLOCKS = 32
_ENTRY_KEYS = {"flow", "train", "anneal"}


def select(targets=None, families=None, quick: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """{target: {label: entry}} for the given target names and family selectors (label, or flow family
    name such as ``u1`` or ``z2nice``; lists or comma-separated); defaults: all (``quick``: `QUICK_FAMILIES`).
    Raises ValueError naming an unknown target or a selector that matches no family of the selected targets."""
    chosen_names = names(targets) or (list(QUICK_FAMILIES) if quick else list(TARGETS))
    for name in chosen_names:
        if name not in TARGETS:
            raise ValueError(f"bench quality: unknown target {name!r} (known: {', '.join(TARGETS)})")
    selectors, chosen, used = names(families), {}, set()
    for name in dict.fromkeys(chosen_names):
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
        known = sorted({label for n in chosen_names for label in FAMILIES.get(n, {})})
        raise ValueError(f"bench quality: family {unknown[0]!r} matches no family of target(s) "
                         f"{', '.join(chosen_names)} (labels: {'; '.join(known)}; or a flow family name)")
    return chosen


def check_entry(target: Target, label: str, entry: dict[str, Any], dtype=torch.float32, device="cpu", build=True):
    """(Trainer settings over `TRAIN_DEFAULTS`, annealing stages [(β or None, fraction)], the built flow or
    None) of a family entry; a bad key, train setting, anneal schedule or flow config is one ValueError naming
    the target and family."""
    from ..flows import build_flow

    where = f"bench quality: family {label!r} of target {target.name!r}"
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {sorted(unknown)} (allowed: {sorted(_ENTRY_KEYS)})")
    settings = {**TRAIN_DEFAULTS, **(entry.get("train") or {})}
    settings["batch_size"] = settings["batch_size"] or target.batch_size
    allowed = set(inspect.signature(Trainer).parameters) - {"flow", "action", "seed", "objective", "data", "world"}
    bad = sorted(set(settings) - allowed)
    if bad:
        raise ValueError(f"{where}: train key {bad[0]!r} is not a Trainer setting here (objective is reverse_kl; "
                         f"allowed: {', '.join(sorted(allowed))})")
    try:
        stages = anneal_stages(entry.get("anneal"), target.couplings.get("beta"))
        flow = build_flow(entry.get("flow") or {}, target.action()).to(device=device, dtype=dtype) if build else None
        return settings, stages, flow
    except ValueError as err:  # a bad schedule, or FlowError: unknown family or key
        raise ValueError(f"{where}: {err}") from None


def reference_ensemble(target: Target, *, n_chains: int = 16, seed: int = 12345, device="cpu",
                       **sizes: int) -> dict[str, Any]:
    """HMC configurations of ``target`` (`latticeflow.training.hmc_reference`: chain-major, float64, each
    with an exact symmetry move x ↦ −x with probability ½) and their record, with the target's ``note``.
    With ``target.sectors`` the chains start in topological sectors allocated by the exact P(Q)
    (`actions.exact.u1_charge_allocation`, recorded as ``initial_charges``). ``sizes``: n_thermalize (200),
    n_configurations (4096), every (4)."""
    charges = u1_charge_allocation(target.couplings["beta"], target.action().volume, n_chains) if target.sectors else None
    start = None if charges is None else torch.stack([charge_configuration(target.shape, q) for q in charges])
    ref = hmc_reference(target.action(), n_chains, start=start, seed=seed, device=device, **sizes)
    ref["record"]["note"] = target.note
    if charges is not None:
        ref["record"]["initial_charges"] = charges
    return ref
