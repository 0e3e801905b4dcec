"""Command line: ``latticeflow sample|train|run CONFIG [--set key.sub=value …]``, ``latticeflow analyze FILE [--json]``,
``latticeflow scan CONFIG --over key=start:stop:count …`` (a grid of runs) and ``latticeflow scan --report DIR``.

User errors (bad config keys or values, missing files, an ensemble of another theory) print one line
``latticeflow: error: …`` and exit with status 2; there is no traceback unless ``LATTICEFLOW_DEBUG=1``.

Under ``mpiexec -n N`` (see :mod:`latticeflow.distributed`) only rank 0 prints results; an error on any
rank prints ``latticeflow: error on rank r of N: …`` and ends the whole job with ``MPI_Abort`` (status 2
for user errors, 1 otherwise), so no rank is left waiting in a collective.
"""
from __future__ import annotations

import argparse
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
        _threads_option(p)
        if name in ("train", "run"):
            p.add_argument("--sizes", default=None, metavar="L1,L2,…",
                           help="train over lattice sizes, the last the config's own, each from the previous one's "
                                "weights; train.seconds counts them all (sets train.sizes)")
        if name in ("sample", "run"):
            p.add_argument("--checkpoint", default=None, help="trained flow (default <output.dir>/checkpoints/latest.pt)")
        if name == "run":
            _verdict_options(p)
    p = sub.add_parser("analyze", help="observables of an ensemble with Gamma-method errors and exact values")
    p.add_argument("file", help="HDF5 ensemble written by latticeflow")
    _verdict_options(p)
    _threads_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--reference", default="auto", metavar="FILE",
                   help="HMC reference that judges the main observables without an exact value (default 'auto': "
                        "ensemble_hmc.h5 beside FILE, as `run` does; 'none': no reference)")
    p.add_argument("--S", type=float, default=2.0, help="Gamma-method window parameter S (Wolff 2004)")
    p.add_argument("--pyerrors", metavar="PATH", default=None,
                   help="also export every per-configuration observable (chains as replicas 'name|r01', …) "
                        "as a pyerrors json.gz file")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="also draw C(t) with the correlated cosh fit and m_eff(t) with the fitted mass")
    p = sub.add_parser("measure", help="add a per-configuration observable computed by your own function to an "
                                       "ensemble (observables/<name>, resumable; analyze includes it)")
    p.add_argument("file", help="HDF5 ensemble (or the master file of an MPI run)")
    p.add_argument("--observable", required=True, metavar="MODULE:FUNCTION",
                   help="function of a batch of fields (B, *field_shape) returning (B,) or (B, ...); "
                        "MODULE importable from here, or path/to/file.py")
    p.add_argument("--name", default=None, help="dataset name observables/<name> (default: the function's name)")
    p.add_argument("--numpy", action="store_true", help="pass numpy arrays instead of torch tensors")
    p.add_argument("--device", default="cpu", help="torch device of the fields (cpu, cuda)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                   help="configurations per call (default: ~32 MiB of fields, at most 4096)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _threads_option(p)
    p = sub.add_parser("verify", help="check ensemble files: structure and every batch's checksums "
                                      "(one line per damaged batch, exit 2 on damage)")
    p.add_argument("files", nargs="+", metavar="ENSEMBLE", help="HDF5 ensemble (or MPI master) files")
    _threads_option(p)
    p = sub.add_parser("scan", help="a resumable grid of runs over couplings and sizes (one run directory per point), "
                                    "or --report DIR: table, report.json and plots of a scan")
    p.add_argument("config", nargs="?", default=None, help="YAML run config (not with --report)")
    p.add_argument("--over", action="append", default=[], metavar="KEY=VALUES",
                   help="scanned key: start:stop:count (inclusive) or a comma list, e.g. action.kappa=0.30:0.345:10 or "
                        "'action.shape=[16,16],[32,32]' (repeatable: the Cartesian product)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key at every point, e.g. --set sampler.n_samples=20000 (repeatable)")
    p.add_argument("--report", default=None, metavar="DIR", help="report on the scan in DIR instead of running one")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--plot", default=None, metavar="PNG", help="the report's plot (default <scan dir>/scan.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _threads_option(p)
    from .bench import BENCHES

    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(f"{name} ({b.about})" for name, b in BENCHES.items()))
    p.add_argument("name", choices=list(BENCHES), help="which benchmark")
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
                                                "(bench_efficiency.png); forward: PNG of test NLL vs time (bench_forward.png); "
                                                "criticality: PNG of cost and tau_int(chi2) vs L (bench_criticality.png)")
    _threads_option(p)
    p.add_argument("--sequential", action="store_true",
                   help="training: run the estimators one after the other instead of interleaved slices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quick", action="store_true", help="a reduced grid (smoke test)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved timed repetitions after warm-up (gradients: 10, snf: 3)")
    p.add_argument("--lr", type=float, default=None, help="forward: Adam learning rate of every case (default: each case's own)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default=None,
                   help="criticality: comma-separated lattice sizes L (default 16,32,64,128; --quick: 8,16); "
                        "efficiency --theory schwinger: only these L of 8,16")
    p.add_argument("--theory", default=None, help="efficiency: u1 (default: pure gauge, exact values) or schwinger "
                                                  "(two Wilson fermions, bench_efficiency_schwinger.png)")
    p.add_argument("--train-seconds", dest="train_seconds", default=None, metavar="S|L:S,…",
                   help="criticality: the flow's training seconds at every L, or per L (16:300,32:1800); default --seconds")
    p.add_argument("--objective", choices=["reverse_kl", "forward_kl", "both"], default="both")
    p.add_argument("--flow", default=None, metavar="YAML",
                   help="criticality: the flow's options as a YAML mapping, e.g. '{family: spline, vacua: false}' "
                        "(default: the two-level decimated spline flow with colour couplings, '{family: spline, "
                        "vacua: false, decimate: 2, colours: true, n_layers: 16}')")
    p.add_argument("--runs", default=None, metavar="L:DIR,…",
                   help="criticality: flows trained by 'latticeflow train' to use at these L instead of training "
                        "one (every second of their training chain counted), e.g. 64:runs/phi4_critical_L64")
    return parser


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default=None, metavar="N",
                   help="torch compute threads (default: the config's 'threads', else as many as the cores "
                        "available to this process, at most torch's default; see latticeflow.resources)")


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


def _overrides(args) -> list[str]:
    """``--set`` overrides, and ``--sizes L1,L2,…`` as ``train.sizes``."""
    sizes = getattr(args, "sizes", None)
    if sizes is None:
        return list(args.overrides)
    from .config import ConfigError

    parts = [p.strip() for p in str(sizes).split(",")]
    if not all(p.isdigit() for p in parts):
        raise ConfigError(f"--sizes must be comma-separated lattice extents such as 16,32, got {sizes!r}")
    return [*args.overrides, f"train.sizes=[{', '.join(parts)}]"]


def _cmd_sample(args, then_analyze: bool) -> int:
    from .config import load_config
    from .pipeline import run, sample

    cfg, text = load_config(args.config, _overrides(args))
    _configure_threads(args, cfg)
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


def _configure_threads(args, cfg=None) -> None:
    """torch's threads, before any torch work: ``--threads``, else the config's ``threads:``, else the default."""
    from .resources import configure_threads

    configure_threads(args.threads if args.threads is not None or cfg is None else cfg.threads)


def _print_sampled(s: dict) -> None:
    if s["n_new"] == 0:
        print(f"{s['path']} already holds {s['n_rows']} configurations")
        return
    verb = "resumed" if s["resumed"] else "wrote"
    extra = f"acceptance {s['acceptance']:.3f}" if s["acceptance"] == s["acceptance"] else "i.i.d. flow samples"
    if s["exp_minus_delta_h"] == s["exp_minus_delta_h"]:  # HMC
        extra += f", <exp(-dH)> {s['exp_minus_delta_h']:.4f}, step size {s['step_size']:.4g}"
    if s.get("winding_acceptance", float("nan")) == s.get("winding_acceptance"):
        extra += f", winding moves accepted {s['winding_acceptance']:.3f}"
    print(f"{verb} {s['path']}: {s['n_rows']} configurations ({s['n_new']} new) in {s['seconds']:.1f} s; {extra}")


def _cmd_train(args) -> int:
    from .config import load_config
    from .pipeline import train

    cfg, text = load_config(args.config, _overrides(args))
    _configure_threads(args, cfg)
    command = " ".join(shlex.quote(a) for a in ["latticeflow", *sys.argv[1:]])
    summary = train(cfg, text, progress=not args.no_progress, command=command)
    final = summary["final"]
    print(f"trained {summary['steps']} steps (resumed from {summary['resumed_from']}) in {summary['seconds']:.1f} s: "
          f"KL up to log Z {final.get('loss', float('nan')):.4f}, reverse ESS/N {final.get('reverse_ess', float('nan')):.3f}, "
          f"{summary['n_skipped']} skipped steps; checkpoint {summary['checkpoint']}")
    for stage in summary.get("sizes", []):
        print(f"  L = {stage['L']}: {stage['steps']} steps of batch {stage.get('batch_size', '?')} in "
              f"{stage['wall_time']:.1f} s ({stage['seconds_per_step']:.3f} s/step)" if stage["steps"] else f"  L = {stage['L']}: no steps")
    if "wall_time_total" in summary:
        print(f"  schedule over sizes: {summary['wall_time_total']:.1f} s of training in all")
    return 0


def _cmd_analyze(args) -> int:
    from .pipeline import analyze

    if not Path(args.file).is_file():
        raise FileNotFoundError(f"ensemble file not found: {args.file!r}")
    reference = {"auto": "auto", "none": None}.get(args.reference, args.reference)
    result = analyze(args.file, S=args.S, thresholds=_thresholds(args), reference=reference)
    if args.pyerrors:
        from .pipeline.analyze import export_pyerrors

        print(f"wrote {export_pyerrors(args.file, args.pyerrors)}", file=sys.stderr)
    if args.plot:
        from .analysis.correlators import plot_correlator

        size = "x".join(map(str, result.shape))
        coup = ", ".join(f"{k}={v:g}" for k, v in result.couplings.items())
        print(f"wrote {plot_correlator(args.plot, result.extra, f'{result.theory} {size}, {coup}')}", file=sys.stderr)
    if args.json:
        from .io import dumps_json

        print(dumps_json(result.as_dict()))
    else:
        print(result.table())
    return 3 if args.strict and not result.extra["verdict"]["reliable"] else 0


def _cmd_measure(args) -> int:
    """``latticeflow measure FILE --observable MODULE:FUNCTION``: one summary line."""
    from .pipeline.measure import measure

    command = " ".join(shlex.quote(a) for a in ["latticeflow", *sys.argv[1:]])
    s = measure(args.file, args.observable, args.name, numpy_input=args.numpy, device=args.device,
                batch_size=args.batch_size, progress=not args.no_progress, command=command)
    resumed = sum(d["resumed_from"] for d in s["files"])
    shape = "scalar" if not s["shape"] else "shape " + "x".join(map(str, s["shape"]))
    print(f"measured {s['observable']} on {s['n_rows']} configurations ({shape}) into observables/{s['name']} of "
          f"{args.file}" + (f"; resumed after {resumed} rows" if resumed else ""))
    return 0


def _cmd_scan(args) -> int:
    """``latticeflow scan CONFIG --over KEY=VALUES …``: run the grid, then the report; ``scan --report DIR``: the
    report alone. Exit 1 if a point failed (the others still ran)."""
    from .io import dumps_json
    from .pipeline.scan import plan_scan, run_scan
    from .pipeline.scan_report import format_scan_report, scan_report

    if args.report is not None:
        if args.config is not None or args.over:
            raise ValueError("scan --report DIR takes no CONFIG and no --over")
        _configure_threads(args)
        report = scan_report(args.report, args.plot)
        print(dumps_json(report) if args.json else format_scan_report(report))
        return 0
    if args.config is None:
        raise ValueError("scan needs a CONFIG and --over KEY=VALUES (or --report DIR)")
    scan = plan_scan(args.config, args.over, args.overrides)
    _configure_threads(args, scan.points[0].cfg)
    command = " ".join(shlex.quote(a) for a in ["latticeflow", *sys.argv[1:]])
    out = run_scan(scan, command=command, progress=not args.no_progress, plot=args.plot)
    report = out.get("report")
    if report is not None:  # rank 0
        print(dumps_json(report) if args.json else format_scan_report(report))
        files = ", ".join(str(f) for f in (scan.dir / "scan.json", report.get("json"), report.get("plot")) if f)
        print(f"scan: {out['n_points']} points: {out['ran']} run, {out['skipped']} already finished, "
              f"{len(out['failed'])} failed, in {out['seconds']:.0f} s; wrote {files}", file=sys.stderr)
    for name, err in out["failed"].items():
        print(f"latticeflow: scan point {name} failed: {err} (rerun the same command to retry)", file=sys.stderr)
    return 1 if out["failed"] else 0


def _cmd_verify(args) -> int:
    """``latticeflow verify FILE…``: one line per damaged batch or structure, one summary line per file."""
    from .io import verify_ensemble

    status = 0
    for path in args.files:
        report = verify_ensemble(path)
        for line in report.lines():
            print(line)
        print(report.summary())
        status = status if report.ok else 2
    return status


def _cmd_bench(args) -> int:
    """``latticeflow bench NAME``: the entry of `latticeflow.bench.BENCHES` called with its flags, each flag
    validated here, once, for every benchmark (``--seeds`` becomes a list of integers)."""
    import importlib

    from .bench import BENCHES
    from .io import dumps_json

    where = f"bench {args.name}"
    if args.seconds is not None and not args.seconds > 0:
        raise ValueError(f"{where}: seconds must be > 0, got {args.seconds}")
    if args.lr is not None and not 0 < args.lr < 1:
        raise ValueError(f"{where}: lr must be a number in (0, 1), got {args.lr!r}")
    if args.seeds is not None:
        try:
            args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"{where}: seeds must be integers, got {args.seeds!r}") from None
        if not args.seeds:
            raise ValueError(f"{where}: no seeds given (--seeds)")
    bench = BENCHES[args.name]
    module = importlib.import_module(f"{__package__}.bench.{bench.module}")
    kwargs = {}
    for flag, _, keyword in (f.partition(":") for f in bench.flags.split()):
        if getattr(args, flag) is not None:
            kwargs[keyword or flag] = getattr(args, flag)
    if hasattr(module, "progress_line") and not args.json:
        kwargs["progress"] = lambda row: print("  " + module.progress_line(row), file=sys.stderr, flush=True)
    result = getattr(module, bench.run)(**kwargs)
    print(dumps_json(result) if args.json or bench.table is None else getattr(module, bench.table)(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``latticeflow`` console script."""
    from .resources import keep_heap, parse_threads

    keep_heap()  # the samplers' per-step tensors reuse the heap instead of page-faulting (resources docstring)
    args = build_parser().parse_args(argv)
    try:
        args.threads = parse_threads(getattr(args, "threads", None))
    except ValueError as err:
        print(f"latticeflow: error: {err}", file=sys.stderr)
        return 2
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
        rank = getattr(err, "collective_rank", None)
        if rank is not None:  # every rank raised this same refusal before writing: one line, no MPI_Abort
            if world.is_main:
                print(f"latticeflow: error on rank {rank} of {world.size}: {msg}", file=sys.stderr, flush=True)
            shutdown(world)
            return 2 if user else 1
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
        if args.command not in ("sample", "train", "run", "scan"):  # those read threads: from their config first
            _configure_threads(args)
        if args.command == "train":
            return _cmd_train(args)
        if args.command in ("sample", "run"):
            return _cmd_sample(args, then_analyze=args.command == "run")
        if args.command == "analyze":
            return _cmd_analyze(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "verify":
            return _cmd_verify(args)
        if args.command == "scan":
            return _cmd_scan(args)
        if args.command == "measure":
            return _cmd_measure(args)
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
