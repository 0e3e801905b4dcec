"""`latticeflow bench scaling`: weak scaling of MPI runs, 1 and 2 ranks (one torch thread per rank): training,
flow sampling and HMC throughput per rank. Protocol: docs/benchmarks.md#scaling."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..analysis import text_table
from ..distributed import find_mpiexec, launch_env
from ..io import dumps_json

__all__ = ["run_scaling_bench", "format_scaling_table"]

_TAG = "LATTICEFLOW_SCALING "


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughputs of one world size from the median wall (and CPU) seconds of every run of each phase."""
    first = runs[0]
    wall = {ph: statistics.median(t for r in runs for t in r["wall"][ph]) for ph in first["wall"]}
    cpu = {ph: statistics.median(t for r in runs for t in r["cpu"][ph]) for ph in first["cpu"]}
    n, w = first["ranks"], first["work"]
    return {"ranks": n, "train_steps_per_s": w["train_steps"] / wall["train"],
            "train_configs_per_s": w["train_steps"] * w["train_batch"] * n / wall["train"],
            "flow_configs_per_s": w["flow"] * n / wall["flow"], "hmc_configs_per_s": w["hmc"] * n / wall["hmc"],
            "seconds": wall, "cpu_seconds": cpu, "n_runs": len(runs) * len(first["wall"]["train"])}


def run_scaling_bench(ranks: tuple[int, ...] = (1, 2), *, steps: int = 40, batch: int = 128, samples: int = 8192,
                      repeats: int = 3, rounds: int = 2, dtype: str = "float32", quick: bool = False,
                      timeout: float = 900.0) -> dict[str, Any]:
    """Time the workers at every size in ``ranks``, the sizes interleaved for ``rounds`` rounds of
    ``repeats`` runs of every phase; throughputs from the median times; returns per-size numbers and
    the efficiencies."""
    if quick:
        steps, samples, repeats, rounds = 5, 512, 1, 1
    mpiexec = find_mpiexec()
    raw: dict[int, list[dict[str, Any]]] = {n: [] for n in ranks}
    for n in [n for _ in range(rounds) for n in ranks]:
        args = json.dumps({"steps": steps, "batch": batch, "samples": samples, "dtype": dtype, "repeats": repeats})
        cmd = [mpiexec, "-n", str(n), sys.executable, "-m", "latticeflow.bench.scaling", args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch_env())
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_TAG)]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"bench scaling: 'mpiexec -n {n}' worker failed (status {proc.returncode}): {tail}")
        raw[n].append(json.loads(lines[-1][len(_TAG):]))
    results = {n: _summarise(r) for n, r in raw.items()}
    out: dict[str, Any] = {"benchmark": "scaling", "mpiexec": mpiexec, "threads_per_rank": 1, "dtype": dtype,
                           "per_rank_batch": batch, "per_rank_samples": samples, "train_steps": steps, "repeats": repeats,
                           "rounds": rounds, "load_average": list(os.getloadavg()),
                           "ranks": {str(n): r for n, r in results.items()}}
    if 1 in results:
        base = results[1]
        out["efficiency"] = {str(n): {k: r[k] / n / base[k] for k in ("train_configs_per_s", "flow_configs_per_s",
                                                                      "hmc_configs_per_s")}
                             for n, r in results.items() if n != 1}
        # diagnostic: the same ratio from the busiest rank's CPU seconds; near 1 while the wall-clock
        # efficiency is low means the cores were busy with something else, not MPI overhead
        out["cpu_efficiency"] = {str(n): {k: base["cpu_seconds"][k] / r["cpu_seconds"][k] for k in base["cpu_seconds"]}
                                 for n, r in results.items() if n != 1}
    return out


def format_scaling_table(result: dict[str, Any]) -> str:
    """One row per world size: throughputs, then the weak-scaling efficiencies."""
    return text_table([("ranks", ">5"), ("train steps/s", "14.2f"), ("train cfg/s", "12.0f"), ("flow cfg/s", "11.0f"),
                       ("hmc cfg/s", "10.0f")],
                      [[n, r["train_steps_per_s"], r["train_configs_per_s"], r["flow_configs_per_s"], r["hmc_configs_per_s"]]
                       for n, r in result["ranks"].items()],
                      title=f"weak scaling, 1 torch thread per rank, {result['per_rank_batch']} configurations per rank and "
                            f"step (load average {result['load_average'][0]:.2f})",
                      notes=[f"efficiency at {n} ranks: " + ", ".join(f"{k.split('_')[0]} {v:.0%}" for k, v in eff.items())
                             for n, eff in result.get("efficiency", {}).items()])


def _timed(world, fn, repeats: int) -> tuple[list[float], list[float]]:
    """Per run of ``fn(i)``: wall seconds of the slowest rank and CPU seconds of the busiest rank."""
    walls, cpus = [], []
    for i in range(repeats):
        world.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        fn(i)
        c1 = time.process_time()
        world.barrier()
        walls.append(time.perf_counter() - t0)
        cpus.append(max(world.allgather(c1 - c0)))
    return walls, cpus


def _worker(params: dict[str, Any]) -> None:
    import torch

    from ..config import config_from_dict
    from ..distributed import get_world, shutdown
    from ..io import save_checkpoint
    from ..pipeline import build_trainer, sample

    torch.set_num_threads(1)
    world = get_world()
    tmp = Path(world.bcast(tempfile.mkdtemp(prefix="latticeflow-scaling-") if world.is_main else None))
    try:
        cfg = config_from_dict({
            "name": "scaling", "seed": 1, "dtype": params["dtype"],
            "action": {"theory": "phi4", "shape": [8, 8], "kappa": 0.3, "lam": 0.022},
            "flow": {"family": "z2nice"}, "output": {"dir": str(tmp)},
            "train": {"batch_size": params["batch"] * world.size, "steps": params["steps"]},
            "sampler": {"name": "flow", "n_samples": params["samples"], "batch_size": 1024, "n_chains": 16,
                        "n_thermalize": 20}})
        _, flow, trainer = build_trainer(cfg, world)
        trainer.train(3, progress=False)  # warm-up
        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        reps, steps = params["repeats"], params["steps"]
        wall["train"], cpu["train"] = _timed(
            world, lambda i: trainer.train(trainer.step_count + steps, log_every=steps, progress=False), reps)
        if world.is_main:
            (tmp / "checkpoints").mkdir()
            save_checkpoint(tmp / "checkpoints" / "latest.pt", {"flow": flow.state_dict()})
        world.barrier()
        wall["flow"], cpu["flow"] = _timed(world, lambda i: sample(cfg, "", progress=False, world=world,
                                                             path=tmp / f"flow{i}.h5"), reps)
        n_hmc = params["samples"] * 4  # HMC on 8x8 is ~4x faster per configuration than the flow
        hmc = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, name="hmc", n_samples=n_hmc))
        wall["hmc"], cpu["hmc"] = _timed(world, lambda i: sample(hmc, "", progress=False, world=world,
                                                           path=tmp / f"hmc{i}.h5"), reps)
        result = {"ranks": world.size, "wall": wall, "cpu": cpu,
                  "work": {"train_steps": params["steps"], "train_batch": params["batch"], "flow": params["samples"],
                           "hmc": n_hmc}}
        if world.is_main:
            print(_TAG + dumps_json(result, indent=None), flush=True)
    finally:
        world.barrier()
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        shutdown(world)


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
