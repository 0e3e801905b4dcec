"""`latticeflow scan` (issue 27): --over parsing, bad input, a tiny resumable φ⁴ scan with its report and κ_c, and
the U(1) report's exact curves."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from latticeflow.cli import main
from latticeflow.config import ConfigError
from latticeflow.pipeline.scan import POINT_FILE, SCAN_FILE, parse_over, plan_scan
from latticeflow.pipeline.scan_report import scan_report

PHI4 = ("name: tiny_scan\nseed: 3\n"
        "action: {theory: phi4, shape: [4, 4], kappa: 0.3, lam: 0.5}\n"
        "sampler: {name: cluster, n_samples: 256, n_chains: 4, n_thermalize: 10, n_leapfrog: 4}\n")
OVER = ["--over", "action.kappa=0.25:0.4:2", "--over", "action.shape=[4,4],[6,6]"]


@pytest.fixture
def phi4_config(tmp_path) -> Path:
    path = tmp_path / "scan.yaml"
    path.write_text(PHI4 + f"output: {{dir: {tmp_path / 'scan'}}}\n")
    return path


@pytest.mark.parametrize("item,key,values", [
    ("action.kappa=0.30:0.345:10", "action.kappa", (0.3, 0.305, 0.31, 0.315, 0.32, 0.325, 0.33, 0.335, 0.34, 0.345)),
    ("action.kappa=0.3:0.3:1", "action.kappa", (0.3,)),
    ("seed=0:8:5", "seed", (0, 2, 4, 6, 8)),
    ("action.beta=1,2.5, 4", "action.beta", (1, 2.5, 4)),
    ("action.shape=[16,16],[32,32]", "action.shape", ([16, 16], [32, 32])),
    ("action.shape=[8, 8]", "action.shape", ([8, 8],)),
    ("sampler.name=hmc,cluster", "sampler.name", ("hmc", "cluster")),
    ("device=cpu,cuda:0", "device", ("cpu", "cuda:0")),
])
def test_over_ranges_lists_and_shapes(item, key, values):
    axis = parse_over(item)
    assert axis.key == key and axis.values == values


@pytest.mark.parametrize("item,needle", [
    ("action.kappa=0.3:0.4", "start:stop:count"), ("action.kappa=0.3:0.4:1", "count"),
    ("action.kappa=0.3:0.4:x", "not a finite number"), ("action.shape=[4,4],[8,8", "unbalanced"),
    ("action.kappa", "expected KEY="), ("output.dir=a,b", "sets every point"), ("action.kappa=1,,2", "empty"),
    ("action.kappa=0.3,0.3", "repeated"),
])
def test_bad_over_is_a_config_error(item, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_over(item)


@pytest.mark.parametrize("extra,needle", [
    (["--over", "action.kapa=0.3,0.4"], "did you mean 'action.kappa'"),
    (["--over", "action.kappa=0.3:0.4"], "start:stop:count"),
    (["--over", "action.shape=4,8"], "action.shape must be a list of integers"),
    (["--over", "action.kappa=0.2,0.3", "--over", "action.lam=0.5,-1"], "lam=-1"),
    (["--over", "action.kappa=0.2,0.3", "--set", "action.kappa=0.1"], "also given by --set"),
    ([], "--over"),
])
def test_bad_scan_input_exits_2_in_one_line_and_writes_nothing(phi4_config, capsys, extra, needle):
    before = set(phi4_config.parent.rglob("*"))
    assert main(["scan", str(phi4_config), *extra, "--no-progress"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error:") and needle in lines[0], lines
    assert set(phi4_config.parent.rglob("*")) == before


def test_report_of_a_directory_without_scan_exits_2(tmp_path, capsys):
    assert main(["scan", "--report", str(tmp_path)]) == 2
    assert "no scan.json" in capsys.readouterr().err


def test_tiny_scan_resumes_a_killed_point_skips_finished_ones_and_reports_kappa_c(phi4_config, capsys):
    from latticeflow.pipeline import sample

    scan = plan_scan(str(phi4_config), OVER[1::2])
    assert [p.name for p in scan.points] == ["kappa=0.25_shape=4x4", "kappa=0.25_shape=6x6", "kappa=0.4_shape=4x4",
                                             "kappa=0.4_shape=6x6"]
    killed = scan.points[1]  # a point killed half way: half its ensemble, no scan_point.json
    half = type(killed.cfg.sampler)(**{**killed.cfg.sampler.__dict__, "n_samples": 128})
    sample(type(killed.cfg)(**{**killed.cfg.__dict__, "sampler": half}), progress=False)
    assert main(["scan", str(phi4_config), *OVER, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "4 points: 4 run, 0 already finished, 0 failed" in err
    summary = json.loads((killed.dir / "summary.json").read_text())
    assert summary["ensemble"]["resumed"] and summary["ensemble"]["n_new"] == 128 and summary["ensemble"]["n_rows"] == 256
    state = json.loads((scan.dir / SCAN_FILE).read_text())
    assert [p["status"] for p in state["points"]] == ["finished"] * 4
    assert state["over"] == {"action.kappa": [0.25, 0.4], "action.shape": [[4, 4], [6, 6]]}

    ensemble = scan.points[0].dir / "ensemble.h5"
    mtime = ensemble.stat().st_mtime_ns
    assert main(["scan", str(phi4_config), *OVER, "--no-progress"]) == 0
    assert "4 points: 0 run, 4 already finished" in capsys.readouterr().err
    assert ensemble.stat().st_mtime_ns == mtime

    assert main(["scan", "--report", str(scan.dir), "--json", "--plot", str(scan.dir / "p.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["points"]) == 4 and not report["pending"]
    assert report["observables"] == ["binder U", "chi = V(<m^2>-<|m|>^2)", "xi/L"]
    for p in report["points"]:
        assert all(p["observables"][o]["error"] is not None for o in report["observables"])
    kc = report["kappa_c"]
    assert set(kc) >= {"value", "error", "pairs"} and kc["n_boot"] == 1000 and kc["seed"] == 0
    assert kc["pairs"][0]["sizes"] == [[4, 4], [6, 6]]
    assert (scan.dir / "p.png").stat().st_size > 0 and (scan.dir / "report.json").is_file()


def test_u1_report_draws_the_exact_curves(tmp_path, capsys):
    config = tmp_path / "u1.yaml"
    config.write_text(f"name: u1_scan\nseed: 2\naction: {{theory: u1, shape: [4, 4], beta: 1.0}}\n"
                      f"sampler: {{n_samples: 128, n_chains: 4, n_thermalize: 10, n_leapfrog: 4}}\n"
                      f"output: {{dir: {tmp_path / 'u1'}}}\n")
    assert main(["scan", str(config), "--over", "action.beta=1,2", "--no-progress"]) == 0
    capsys.readouterr()
    assert (tmp_path / "u1" / "beta=1" / POINT_FILE).is_file()
    report = scan_report(tmp_path / "u1")
    assert report["observables"] == ["<cos P>", "chi_t = <Q^2>/V"]
    assert set(report["exact_curves"]) == {"<cos P>", "chi_t = <Q^2>/V"}
    assert "kappa_c" not in report and report["crossings"] == []
    assert all(p["observables"]["<cos P>"]["exact"] is not None for p in report["points"])
    assert Path(report["plot"]).stat().st_size > 0
