"""Command line: ``latticeflow sample|run CONFIG [--set key.sub=value …]``, ``latticeflow analyze FILE [--json]``.

User errors (bad config keys or values, missing files, an ensemble of another theory) print one line
``latticeflow: error: …`` and exit with status 2; there is no traceback unless ``LATTICEFLOW_DEBUG=1``.
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
                            ("run", "sample, then analyse: table, summary.json and plots in <output.dir>")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", help="YAML run config")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set action.beta=2.0 (repeatable)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p = sub.add_parser("analyze", help="observables of an ensemble with Gamma-method errors and exact values")
    p.add_argument("file", help="HDF5 ensemble written by latticeflow")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--S", type=float, default=2.0, help="Gamma-method window parameter S (Wolff 2004)")
    return parser


def _cmd_sample(args, then_analyze: bool) -> int:
    from .config import load_config
    from .pipeline import analyze, sample

    cfg, text = load_config(args.config, args.overrides)
    command = " ".join(shlex.quote(a) for a in ["latticeflow", *sys.argv[1:]])
    summary = sample(cfg, text, command=command, progress=not args.no_progress)
    verb = "resumed" if summary.resumed else "wrote"
    print(f"{verb} {summary.path}: {summary.n_rows} configurations ({summary.n_new} new) in {summary.seconds:.1f} s; "
          f"acceptance {summary.acceptance:.3f}, <exp(-dH)> {summary.exp_minus_delta_h:.4f}, step size {summary.step_size:.4g}")
    if then_analyze:
        from .pipeline.report import write_report

        result = analyze(summary.path)
        print(result.table())
        written = write_report(result, summary, cfg.output_dir)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_analyze(args) -> int:
    from .pipeline import analyze

    if not Path(args.file).is_file():
        raise FileNotFoundError(f"ensemble file not found: {args.file!r}")
    result = analyze(args.file, S=args.S)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=float))
    else:
        print(result.table())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``latticeflow`` console script."""
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .io import EnsembleMismatchError

    try:
        if args.command in ("sample", "run"):
            return _cmd_sample(args, then_analyze=args.command == "run")
        if args.command == "analyze":
            return _cmd_analyze(args)
    except (ConfigError, EnsembleMismatchError, FileNotFoundError, ValueError, OSError) as err:
        if os.environ.get("LATTICEFLOW_DEBUG"):
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
