"""Damaged or crafted root attributes and run-directory configs (issue 24, review findings): an ``n_rows`` that is
negative or not an integer is damage that every reader, ``verify`` and a resume name in one line (a negative count
used to be reported "OK" and silently dropped every committed row on resume); a ``config.yaml`` kept in the run
directory in the README's own notation (``lr: 1e-3``) is the same config on resume."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from latticeflow.cli import main
from latticeflow.io import EnsembleWriter, open_ensemble, verify_ensemble
from tests.faults.test_damaged_files import KW, build, sha


@pytest.mark.parametrize("value", [np.int64(-5), "12", np.float64(3.5)])
def test_damaged_n_rows_not_a_row_count_is_named_by_every_reader(tmp_path, value):
    path = build(tmp_path / "e.h5")
    with h5py.File(path, "r+") as f:
        del f.attrs["n_rows"]
        f.attrs["n_rows"] = value
    before = sha(path)
    report = verify_ensemble(path)
    assert not report.ok and "not a row count" in report.lines()[0]
    with pytest.raises(ValueError, match="not a row count"):
        open_ensemble(path)
    with pytest.raises(ValueError, match="not a row count"):
        EnsembleWriter(path, **KW).append(**__import__("tests.faults.test_damaged_files", fromlist=["batch"]).batch(9))
    assert sha(path) == before
    assert main(["verify", str(path)]) == 2


def test_config_yaml_with_exponent_notation_is_the_same_config_on_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = ("name: c\nseed: 1\naction: {theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}\n"
            "flow: {family: z2affine, n_layers: 2, hidden: [4]}\n"
            "train: {steps: 2, batch_size: 8, log_every: 1, lr: 1e-3}\noutput: {dir: out}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.yaml").write_text(text)  # the user's own copy kept in the run directory
    assert main(["train", "out/config.yaml", "--no-progress"]) == 0, capsys.readouterr().err
    assert main(["train", "out/config.yaml", "--no-progress", "--set", "train.steps=3"]) == 0, capsys.readouterr().err
