"""Command line: ``latticeflow sample|train|run CONFIG [--set key.sub=value …]``, ``latticeflow analyze FILE [--json]``.

User errors (bad config keys or values, missing files, an ensemble of another theory) print one line
``latticeflow: error: …`` and exit with status 2; there is no traceback unless ``LATTICEFLOW_DEBUG=1``.

Under ``mpiexec -n N`` (see :mod:`latticeflow.distributed`) only rank 0 prints results; an error on any
rank prints ``latticeflow: error on rank r of N: …`` and ends the whole job with ``MPI_Abort`` (status 2
for user errors, 1 otherwise), so no rank is left waiting in a collective.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latticeflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("sample", "generate (or resume) an ensemble into <output.dir>/ensemble.h5"),
                            ("train", "train the flow of a config (resumable run directory)"),
                            ("run", "sample, then analyse: table, summary.json and plots in <output.dir>")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", help="YAML run config")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set action.beta=2.0 (repeatable)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name in ("sample", "run"):
            p.add_argument("--checkpoint", default=None, help="trained flow (default <output.dir>/checkpoints/latest.pt)")
        if name == "run":
            _verdict_options(p)
    p = sub.add_parser("analyze", help="observables of an ensemble with Gamma-method errors and exact values")
    p.add_argument("file", help="HDF5 ensemble written by latticeflow")
    _verdict_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--S", type=float, default=2.0, help="Gamma-method window parameter S (Wolff 2004)")
    p.add_argument("--pyerrors", metavar="PATH", default=None,
                   help="also export the scalar per-configuration observables (chains as replicas 'name|r01', …) "
                        "as a pyerrors json.gz file")
    p = sub.add_parser("bench", help="benchmarks: gradients (estimator step-time ratios), training (ESS against "
                                     "wall time), sampling (configurations/s and the HDF5 share), snf "
                                     "(self-normalizing vs exact-gradient step time and NLL), scaling (MPI "
                                     "weak scaling at 1 and 2 ranks), quality (flow families on a grid of "
                                     "targets: ESS, KL, acceptance against wall time), verdict (calibration of the "
                                     "trust verdict), efficiency (HMC vs neural MCMC for 2D U(1) against beta), forward "
                                     "(forward-KL estimators on a finite training set: test NLL against wall time)")
    p.add_argument("name", choices=["gradients", "training", "sampling", "snf", "scaling", "quality", "verdict",
                                    "efficiency", "forward"],
                   help="which benchmark")
    p.add_argument("--seconds", type=float, default=None,
                   help="training: wall-time budget per estimator and theory (60); quality: overrides every "
                        "target's budget; efficiency: HMC seconds per point (60); forward: training seconds per run (60; gmm_paper 300)")
    p.add_argument("--targets", default=None, help="quality: comma-separated targets (default all); forward: cases "
                                                   "(gmm, phi4_1000, phi4_4000; also gmm_realnvp: RealNVP on the same data, and gmm_paper: "
                                                   "RealNVP with the paper's 6 × 500 conditioners, 300 s)")
    p.add_argument("--families", default=None,
                   help="quality: comma-separated family labels or flow family names (default all)")
    p.add_argument("--seeds", default=None, help="quality: comma-separated seeds (default 0,1,2); training: one run per seed (default 0)")
    p.add_argument("--plot-dir", default="bench_quality", help="quality: directory for one PNG per target")
    p.add_argument("--plot", default=None, help="training: PNG of ESS and gradient variance vs time "
                                                "(bench_training.png); efficiency: PNG of tau_int(Q) and cost vs beta "
                                                "(bench_efficiency.png); forward: PNG of test NLL vs time (bench_forward.png)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--sequential", action="store_true",
                   help="training: run the estimators one after the other instead of interleaved slices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quick", action="store_true", help="a reduced grid (smoke test)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved timed repetitions after warm-up (gradients: 10, snf: 3)")
    p.add_argument("--lr", type=float, default=None, help="forward: Adam learning rate of every case (default: each case's own)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--objective", choices=["reverse_kl", "forward_kl", "both"], default="both")
    return parser


def _verdict_options(p: argparse.ArgumentParser) -> None:
    from .analysis.verdict import DEFAULT_THRESHOLDS as T

    p.add_argument("--rhat-max", type=float, default=T["rhat_max"], help=f"verdict: max split-R̂ ({T['rhat_max']:g})")
    p.add_argument("--khat-max", type=float, default=T["khat_max"], help=f"verdict: max Pareto k̂ ({T['khat_max']:g})")
    p.add_argument("--min-tau", type=float, default=T["min_tau_per_chain"],
                   help=f"verdict: min chain length in units of τ_int ({T['min_tau_per_chain']:g})")
    p.add_argument("--max-stuck", type=float, default=T["max_stuck_fraction"],
                   help=f"verdict: max longest rejection run / chain length of NMCMC ({T['max_stuck_fraction']:g})")
    p.add_argument("--pull-max", type=float, default=T["pull_max"],
                   help=f"verdict: max |pull| against exact values or the HMC reference ({T['pull_max']:g})")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when a verdict is unreliable")


def _thresholds(args) -> dict[str, float]:
    return {"rhat_max": args.rhat_max, "khat_max": args.khat_max, "min_tau_per_chain": args.min_tau,
            "max_stuck_fraction": args.max_stuck, "pull_max": args.pull_max}


def _cmd_sample(args, then_analyze: bool) -> int:
    from .config import load_config
    from .pipeline import run, sample

    cfg, text = load_config(args.config, args.overrides)
    command = " ".join(shlex.quote(a) for a in ["latticeflow", *sys.argv[1:]])
    if then_analyze:
        summary = run(cfg, text, command=command, progress=not args.no_progress, checkpoint=args.checkpoint,
                      thresholds=_thresholds(args))
        if "training" in summary:
            t = summary["training"]
            if t["steps"] == t["resumed_from"]:
                print(f"flow already trained for {t['steps']} steps ({t['checkpoint']})")
            else:
                print(f"trained {t['steps']} steps (resumed from {t['resumed_from']}); final KL up to log Z "
                      f"{t['final'].get('loss', float('nan')):.4f}, reverse ESS/N {t['final'].get('reverse_ess', float('nan')):.3f}")
        _print_sampled(summary["ensemble"])
        if "forward_ess" in summary:
            print(f"forward ESS/N of the flow on the HMC ensemble: {summary['forward_ess']:.3f}")
        for table in summary["tables"]:
            print(table)
            print()
        print("wrote " + ", ".join(summary["files"]))
        unreliable = [n for n, v in summary.get("ensembles", {}).items()
                      if not v["verdict"]["reliable"]]
        return 3 if args.strict and unreliable else 0
    _print_sampled(sample(cfg, text, command=command, progress=not args.no_progress, checkpoint=args.checkpoint).as_dict())
    return 0


def _print_sampled(s: dict) -> None:
    if s["n_new"] == 0:
        print(f"{s['path']} already holds {s['n_rows']} configurations")
        return
    verb = "resumed" if s["resumed"] else "wrote"
    extra = f"acceptance {s['acceptance']:.3f}" if s["acceptance"] == s["acceptance"] else "i.i.d. flow samples"
    if s["exp_minus_delta_h"] == s["exp_minus_delta_h"]:  # HMC
        extra += f", <exp(-dH)> {s['exp_minus_delta_h']:.4f}, step size {s['step_size']:.4g}"
    print(f"{verb} {s['path']}: {s['n_rows']} configurations ({s['n_new']} new) in {s['seconds']:.1f} s; {extra}")


def _cmd_train(args) -> int:
    from .config import load_config
    from .pipeline import train

    cfg, text = load_config(args.config, args.overrides)
    summary = train(cfg, text, progress=not args.no_progress)
    final = summary["final"]
    print(f"trained {summary['steps']} steps (resumed from {summary['resumed_from']}) in {summary['seconds']:.1f} s: "
          f"KL up to log Z {final.get('loss', float('nan')):.4f}, reverse ESS/N {final.get('reverse_ess', float('nan')):.3f}, "
          f"{summary['n_skipped']} skipped steps; checkpoint {summary['checkpoint']}")
    return 0


def _cmd_analyze(args) -> int:
    from .pipeline import analyze

    if not Path(args.file).is_file():
        raise FileNotFoundError(f"ensemble file not found: {args.file!r}")
    result = analyze(args.file, S=args.S, thresholds=_thresholds(args))
    if args.pyerrors:
        from .pipeline.analyze import export_pyerrors

        print(f"wrote {export_pyerrors(args.file, args.pyerrors)}", file=sys.stderr)
    if args.json:
        from .io import dumps_json

        print(dumps_json(result.as_dict()))
    else:
        print(result.table())
    return 3 if args.strict and not result.extra["verdict"]["reliable"] else 0


def _cmd_bench(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.name == "sampling":
        from .bench.sampling import format_sampling_table, run_sampling_bench

        results = run_sampling_bench(quick=args.quick, dtype={"float32": torch.float32, "float64": torch.float64}[args.dtype])
        print(json.dumps({"benchmark": "sampling", "results": results}, indent=2) if args.json else format_sampling_table(results))
        return 0
    if args.name == "scaling":
        from .bench.scaling import format_scaling_table, run_scaling_bench

        result = run_scaling_bench(quick=args.quick, dtype=args.dtype)
        print(json.dumps(result, indent=2) if args.json else format_scaling_table(result))
        return 0
    if args.name == "snf":
        from .bench.snf import format_snf_table, run_snf_bench

        log = (lambda r: print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
                               file=sys.stderr, flush=True))
        result = run_snf_bench(quick=args.quick, repeats=args.repeats or 3,
                               dtype={"float32": torch.float32, "float64": torch.float64}[args.dtype],
                               progress=None if args.json else log)
        print(json.dumps(result, indent=2) if args.json else format_snf_table(result))
        return 0
    if args.name == "verdict":
        from .bench.verdict import format_verdict_bench, run_verdict_bench

        log = (lambda r: print(f"  {r['theory']} {r.get('couplings', r.get('name'))} {r['family']} {r['steps']} steps: "
                               f"max|pull| {r['max_abs_pull']}, reliable {r['verdict']['reliable']}", file=sys.stderr,
                               flush=True))
        result = run_verdict_bench(quick=args.quick, progress=None if args.json else log)
        print(json.dumps(result, indent=2, allow_nan=False) if args.json else format_verdict_bench(result))
        return 0
    if args.name == "efficiency":
        from .bench.efficiency import format_efficiency_table, run_efficiency_bench

        log = (lambda p: print(f"  {p['L']}x{p['L']} beta={p['beta']:g}: tau_int(Q) HMC {p['hmc']['tau_int_q']:.3g}"
                               f"{' (lower bound)' if p['hmc']['tau_int_lower_bound'] else ''}, NMCMC "
                               f"{p['nmcmc']['tau_int_q']:.3g}; acceptance {p['nmcmc']['acceptance']:.2f}",
                               file=sys.stderr, flush=True))
        result = run_efficiency_bench(quick=args.quick, settings=None if args.seconds is None else
                                      {"hmc_seconds": args.seconds}, plot=args.plot or "bench_efficiency.png",
                                      progress=None if args.json else log)
        print(json.dumps(result, indent=2, allow_nan=False) if args.json else format_efficiency_table(result))
        return 0
    if args.name == "forward":
        from .bench.forward import format_forward_table, run_forward_bench

        result = run_forward_bench(quick=args.quick, seconds=args.seconds, seeds=(args.seeds or "0,1,2").split(","),
                                   cases=[c for c in args.targets.split(",") if c.strip()] if args.targets else None,
                                   threads=args.threads, dtype=args.dtype, plot=args.plot or "bench_forward.png", lr=args.lr,
                                   progress=None if args.json else (lambda m: print("  " + m, file=sys.stderr, flush=True)))
        print(json.dumps(result, indent=2, allow_nan=False) if args.json else format_forward_table(result))
        return 0
    if args.name == "quality":
        from .bench.quality import format_quality_table, run_quality_bench

        log = (lambda r: print(f"  {r['target']} {r['family']} seed {r['seed']}: t={r['wall_time']:.1f}s "
                               f"step {r['step']} ESS {r['ess']}", file=sys.stderr, flush=True))
        result = run_quality_bench(targets=args.targets, families=args.families, seeds=args.seeds,
                                   seconds=args.seconds, quick=args.quick, dtype=args.dtype, device=args.device,
                                   threads=args.threads, plot_dir=args.plot_dir, progress=None if args.json else log)
        print(json.dumps(result, indent=2, allow_nan=False) if args.json else format_quality_table(result))  # strict already
        return 0
    if args.name == "training":
        from .bench.training import (format_training_seed_summary, format_training_table, run_training_bench,
                                     training_seed_summary)

        log = (lambda r: print(f"  {r.get('theory')} {r.get('estimator')}: t={r.get('wall_time', 0):.0f}s step {r.get('step')} "
                               f"ESS {r.get('ess')}", file=sys.stderr, flush=True))
        seeds = [int(s) for s in (args.seeds or "0").split(",") if s.strip()]
        results = []
        for seed in seeds:
            base = args.plot or "bench_training.png"
            plot = base if len(seeds) == 1 else base.replace(".png", f"_seed{seed}.png")
            results.append(run_training_bench(seconds=60.0 if args.seconds is None else args.seconds, plot_path=plot,
                                              dtype={"float32": torch.float32, "float64": torch.float64}[args.dtype],
                                              device=args.device, progress=None if args.json else log, seed=seed,
                                              threads=args.threads, interleave=not args.sequential))
        if len(results) == 1:
            print(json.dumps(results[0], indent=2) if args.json else format_training_table(results[0]))
        else:
            summary = training_seed_summary(results)
            if args.json:
                print(json.dumps({"benchmark": "training", "seeds": seeds, "runs": results, "summary": summary}, indent=2))
            else:
                print("\n\n".join(format_training_table(r) for r in results))
                print(format_training_seed_summary(summary))
        return 0

    from .bench import default_cases, format_gradient_table, run_gradient_bench
    from .pipeline import resolve_device

    resolve_device(args.device)
    objectives = ("reverse_kl", "forward_kl") if args.objective == "both" else (args.objective,)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    log = (lambda r: print(f"  {r['case']} {r['objective']}: " + ", ".join(
        f"{e} {v['ratio_to_standard']:.2f}" for e, v in r["estimators"].items()), file=sys.stderr, flush=True))
    results = run_gradient_bench(default_cases(args.quick), objectives=objectives, repeats=args.repeats or 10, dtype=dtype,
                                 device=args.device, progress=None if args.json else log)
    if args.json:
        print(json.dumps({"benchmark": "gradients", "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "results": results}, indent=2))
    else:
        print(format_gradient_table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``latticeflow`` console script."""
    args = build_parser().parse_args(argv)
    from .distributed import get_world, shutdown

    try:
        world = get_world()
    except RuntimeError as err:  # launched by mpiexec, but MPI is not usable
        print(f"latticeflow: error: {err}", file=sys.stderr)
        return 2
    if not world.distributed or args.command == "bench":
        return _main(args)
    from .distributed import abort_on_error

    if not world.is_main:  # results are printed once, by rank 0; warnings and errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    try:
        status = _main(args, reraise=True)
    except KeyboardInterrupt:
        print("latticeflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 — any failure of one rank must end every rank
        if os.environ.get("LATTICEFLOW_DEBUG"):
            import traceback

            traceback.print_exc()
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        user = _is_user_error(err)
        abort_on_error(world, msg if user else f"{type(err).__name__}: {msg}", 2 if user else 1)
    shutdown(world)
    return status


def _is_user_error(err: BaseException) -> bool:
    from .config import ConfigError
    from .io import EnsembleMismatchError

    return isinstance(err, (ConfigError, EnsembleMismatchError, FileNotFoundError, ValueError, OSError))


def _main(args, reraise: bool = False) -> int:
    from .config import ConfigError
    from .io import EnsembleMismatchError

    try:
        if args.command == "train":
            return _cmd_train(args)
        if args.command in ("sample", "run"):
            return _cmd_sample(args, then_analyze=args.command == "run")
        if args.command == "analyze":
            return _cmd_analyze(args)
        if args.command == "bench":
            return _cmd_bench(args)
    except (ConfigError, EnsembleMismatchError, FileNotFoundError, ValueError, OSError) as err:
        if reraise or os.environ.get("LATTICEFLOW_DEBUG"):
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"latticeflow: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latticeflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
