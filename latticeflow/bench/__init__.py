"""Benchmarks printed by ``latticeflow bench NAME [--json]``: `BENCHES` maps a name to its module, its run
function, the command-line flags passed to it and its text table. A new benchmark is its module plus one
line here; nothing else compares benchmark names."""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["Bench", "BENCHES", "names"]


def names(values: str | Iterable[str] | None) -> list[str] | None:
    """A list of names from a comma-separated string or an iterable (blanks dropped); None for none."""
    out = [v.strip() for v in (values.split(",") if isinstance(values, str) else values or ()) if v.strip()]
    return out or None


class Bench(NamedTuple):
    """``latticeflow.bench.<module>.<run>(**flags)``: each flag of ``flags`` (space-separated) that is not None on
    the command line (validated there; ``--threads`` is set there for all) is passed by its name, or as
    ``"flag:keyword"`` by another; ``progress`` is passed unless --json when the module has ``progress_line(row)
    -> str``. Printed: ``table(result)`` (a function of the module; None: JSON), or strict JSON with --json."""

    module: str
    run: str
    flags: str
    table: str | None
    about: str


BENCHES: dict[str, Bench] = {b.module: b for b in (
    Bench("gradients", "run_gradient_bench", "quick objective repeats dtype device", "format_gradient_table",
          "estimator step-time ratios"),
    Bench("training", "run_training_seeds", "seconds seeds plot sequential dtype device",
          "format_training_table", "ESS against wall time"),
    Bench("sampling", "run_sampling_bench", "quick dtype", "format_sampling_table", "configurations/s and the HDF5 share"),
    Bench("snf", "run_snf_bench", "quick repeats dtype", "format_snf_table",
          "self-normalizing vs exact-gradient step time and NLL"),
    Bench("scaling", "run_scaling_bench", "quick dtype", "format_scaling_table", "MPI weak scaling at 1 and 2 ranks"),
    Bench("quality", "run_quality_bench", "targets families seeds seconds quick dtype device plot_dir",
          "format_quality_table", "flow families on a grid of targets: ESS, KL, acceptance against wall time"),
    Bench("verdict", "run_verdict_bench", "quick", "format_verdict_bench", "calibration of the trust verdict"),
    Bench("efficiency", "run_efficiency_bench", "quick seconds plot theory sizes", "format_efficiency_table",
          "HMC, winding HMC and neural MCMC for 2D U(1) (or --theory schwinger) against beta"),
    Bench("forward", "run_forward_bench", "quick seconds seeds targets:cases dtype plot lr", "format_forward_table",
          "forward-KL estimators on a finite training set: test NLL against wall time"),
    Bench("cluster", "run_cluster_bench", "seconds quick", "format_cluster_table",
          "HMC vs the Brower-Tamayo cluster sampler for phi4: CPU time per independent chi2 sample"),
    Bench("main_job", "run_main_job_bench", "seeds quick", "format_main_job_bench",
          "the README's main job over seeds: verdicts of run and analyze"),
    Bench("landing", "run_landing_bench", "quick seeds dtype", "format_landing_table",
          "training from an exact start (free field 16x8) with and without the sticking-the-landing gate"),
    Bench("criticality", "run_criticality_bench", "sizes seconds train_seconds quick dtype device plot flow runs", "format_criticality_table",
          "critical phi4 on xi ~ L/4, L = 16 ... 128: HMC, cluster and flow NMCMC, cost of 1e4 independent chi2 vs L"),
    Bench("neumc", "run_neumc_bench", "seconds quick seeds targets:contenders", "format_neumc_table",
          "our Schwinger flow vs NeuMC's (8x8, beta 1, kappa 0.276) at equal wall time; needs NeuMC on PYTHONPATH"),
)}
