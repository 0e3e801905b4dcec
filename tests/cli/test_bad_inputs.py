"""Issue 24, item 10: every bad input ends in one line ``latticeflow: error: …`` naming the value, exit
status 2, and nothing written (no output directory, no ensemble, no checkpoint)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from latticeflow.cli import main

GOOD = ("name: bad_inputs\n"
        "action: {theory: phi4, shape: [8, 8], kappa: 0.2, lam: 0.0}\n"
        "sampler: {n_samples: 32, n_chains: 2, n_thermalize: 2}\n")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run in an empty directory (the default output is ./runs/<name>) and keep the environment as it was."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LATTICEFLOW_DEBUG", raising=False)


def _refused(capsys, tmp_path: Path, argv: list[str], *needles: str) -> str:
    """Run the CLI; assert exit 2, one stderr line naming every needle, and no new file or directory."""
    before = {p for p in tmp_path.rglob("*")}
    status = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert {p for p in tmp_path.rglob("*")} == before, "a refused command wrote something"
    assert not (tmp_path / "runs").exists()
    return lines[0]


def _write(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return name


@pytest.mark.parametrize("command", ["sample", "train", "run"])
def test_config_that_is_a_yaml_list_is_refused_in_one_line(capsys, tmp_path, command):
    cfg = _write(tmp_path, "list.yaml", "- action\n- sampler\n")
    _refused(capsys, tmp_path, [command, cfg], "'list.yaml'", "mapping", "a list")


def test_config_that_is_a_yaml_string_is_refused_in_one_line(capsys, tmp_path):
    cfg = _write(tmp_path, "string.yaml", "just some words\n")
    _refused(capsys, tmp_path, ["sample", cfg], "'string.yaml'", "a string", "just some words")


def test_binary_config_names_the_file(capsys, tmp_path):
    cfg = _write(tmp_path, "weights.yaml", b"\x80\x02ctorch\x00\x01\xff" * 20)
    _refused(capsys, tmp_path, ["sample", cfg], "'weights.yaml'", "not a text")


def test_directory_given_as_config_says_it_is_a_directory(capsys, tmp_path):
    (tmp_path / "configs").mkdir()
    line = _refused(capsys, tmp_path, ["run", "configs"], "'configs'", "is a directory")
    assert "not found" not in line


def test_missing_config_is_not_found(capsys, tmp_path):
    _refused(capsys, tmp_path, ["sample", "nothere.yaml"], "not found: 'nothere.yaml'")


def test_duplicate_yaml_key_is_refused_naming_key_and_line(capsys, tmp_path):
    cfg = _write(tmp_path, "dup.yaml", GOOD + "train:\n  lr: 0.001\n  steps: 10\n  lr: 0.01\n")
    _refused(capsys, tmp_path, ["sample", cfg], "'dup.yaml'", "duplicate key 'lr'", "line 7", "line 5")


def test_duplicate_top_level_section_is_refused(capsys, tmp_path):
    cfg = _write(tmp_path, "dup2.yaml", GOOD + "sampler: {n_samples: 64}\n")
    _refused(capsys, tmp_path, ["sample", cfg], "duplicate key 'sampler'", "line 4", "line 3")


def test_seed_1e23_names_the_key_seed(capsys, tmp_path):
    cfg = _write(tmp_path, "seed.yaml", GOOD + "seed: 1e23\n")
    _refused(capsys, tmp_path, ["sample", cfg], "seed must be an integer", "1e+23")


def test_seed_from_set_out_of_range_is_refused(capsys, tmp_path):
    cfg = _write(tmp_path, "c.yaml", GOOD)
    _refused(capsys, tmp_path, ["sample", cfg, "--set", "seed=-1"], "seed must be an integer in [0,", "-1")


def test_shape_100000_by_100000_is_refused_before_anything_is_written(capsys, tmp_path):
    cfg = _write(tmp_path, "huge.yaml", GOOD)
    _refused(capsys, tmp_path, ["sample", cfg, "--set", "action.shape=[100000,100000]", "--set", "sampler.n_chains=16"],
             "action.shape [100000, 100000]", "does not fit in memory", "sampler.n_chains")


def test_shape_that_fits_once_but_not_times_the_batch_is_refused(capsys, tmp_path, monkeypatch):
    import latticeflow.resources as resources

    monkeypatch.setattr(resources, "memory_bytes", lambda: 10**9)  # a 1 GB machine
    cfg = _write(tmp_path, "big.yaml", GOOD)  # 4096² float64 = 134 MB per configuration; 16 chains = 2.1 GB
    _refused(capsys, tmp_path, ["sample", cfg, "--set", "action.shape=[4096,4096]", "--set", "sampler.n_chains=16"],
             "16 (sampler.n_chains)", "1 GB")


@pytest.mark.parametrize("name", ["../../../x", "a/b", "", ".", ".."])
def test_name_must_be_a_plain_directory_name(capsys, tmp_path, name):
    cfg = _write(tmp_path, "name.yaml", GOOD.replace("name: bad_inputs", f"name: '{name}'"))
    _refused(capsys, tmp_path, ["sample", cfg], "name must be a plain directory name", repr(name))
    assert not (tmp_path.parent.parent.parent / "x").exists()


def test_lr_1000_is_refused_at_config_time(capsys, tmp_path):
    cfg = _write(tmp_path, "lr.yaml", GOOD + "train: {grad_clip: null}\n")
    _refused(capsys, tmp_path, ["train", cfg, "--set", "train.lr=1000"], "train.lr must be in (0, 1]", "1000")


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_threads_flag_must_be_a_positive_integer(capsys, tmp_path, value):
    cfg = _write(tmp_path, "c.yaml", GOOD)
    _refused(capsys, tmp_path, ["sample", cfg, "--threads", value], "--threads must be an integer >= 1", value)


@pytest.mark.parametrize("value", ["0", "-1", "two", "true"])
def test_threads_config_key_must_be_a_positive_integer(capsys, tmp_path, value):
    cfg = _write(tmp_path, "c.yaml", GOOD + f"threads: {value}\n")
    _refused(capsys, tmp_path, ["sample", cfg], "threads must be")


def test_set_into_an_empty_section_works(tmp_path):
    from latticeflow.config import load_config

    path = _write(tmp_path, "c.yaml", GOOD + "train:\n")
    cfg, _ = load_config(path, ["train.lr=1e-3"])
    assert cfg.train.lr == 1e-3


@pytest.mark.parametrize("value, needles", [("4,x", ("--sizes must be comma-separated", "4,x")),
                                            ("4,16", ("must end with the config's lattice extent", "[4, 16]"))])
def test_sizes_flag_is_checked_before_anything_is_written(capsys, tmp_path, value, needles):
    cfg = _write(tmp_path, "c.yaml", GOOD + "train: {seconds: 10}\n")
    _refused(capsys, tmp_path, ["train", cfg, "--sizes", value], *needles)
