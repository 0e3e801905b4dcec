"""Checkpoints cannot run code and do not carry NaN weights into a run (issue: crafted checkpoints): a pickle
with a payload in ``__reduce__`` is refused in one line without executing, as ``--checkpoint``, as
``train.init`` and as a resumed ``checkpoints/latest.pt``; non-finite flow weights are refused in one line."""
import os
import pickle
import subprocess
import sys

import pytest
import torch

from latticeflow.io import load_checkpoint, save_checkpoint

CONFIG = ("name: s\nseed: 1\naction: {theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}\n"
          "flow: {family: z2affine, n_layers: 2, hidden: [4]}\ntrain: {steps: 2, batch_size: 8, log_every: 1}\n"
          "sampler: {name: nmcmc, n_samples: 64, n_chains: 2, batch_size: 32}\noutput: {dir: out}\n")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path, marker):
    with open(path, "wb") as fh:
        pickle.dump({"flow": _Payload(marker)}, fh)


def test_S2_crafted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    _evil(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match="not a latticeflow checkpoint of tensors and plain metadata"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_non_finite_weights_are_refused(tmp_path):
    save_checkpoint(tmp_path / "nan.pt", {"flow": {"w": torch.tensor([1.0, float("nan")])}, "step": 3})
    with pytest.raises(ValueError, match="flow weight 'w' is not finite"):
        load_checkpoint(tmp_path / "nan.pt")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "latticeflow", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("how", ["--checkpoint", "train.init", "latest.pt"])
def test_S2_cli_refuses_a_crafted_checkpoint_in_one_line(tmp_path, how):
    marker = tmp_path / "pwned"
    (tmp_path / "c.yaml").write_text(CONFIG)
    _evil(tmp_path / "evil.pt", marker)
    if how == "--checkpoint":
        proc = _cli("sample", "c.yaml", "--checkpoint", "evil.pt", "--no-progress", cwd=tmp_path)
    elif how == "train.init":
        proc = _cli("train", "c.yaml", "--set", "train.init=evil.pt", "--no-progress", cwd=tmp_path)
    else:
        (tmp_path / "out" / "checkpoints").mkdir(parents=True)
        os.replace(tmp_path / "evil.pt", tmp_path / "out" / "checkpoints" / "latest.pt")
        proc = _cli("train", "c.yaml", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "not a latticeflow checkpoint" in proc.stderr
    assert not marker.exists()
