"""`latticeflow run` on the Schwinger model with a flow, an HMC reference and a winding-HMC reference: the three
ensembles side by side, the cost comparison without exact values, and the stored action with the determinant."""
from __future__ import annotations

import json

import numpy as np
import torch

from actions import Schwinger
from latticeflow.cli import main
from latticeflow.io import open_ensemble

CONFIG = ("name: sw\n"
          "seed: 2\n"
          "dtype: float32\n"
          "action: {theory: schwinger, shape: [4, 4], beta: 2.0, kappa: 0.24}\n"
          "flow: {family: u1, n_layers: 2}\n"
          "train: {steps: 4, batch_size: 16, log_every: 2, checkpoint_every: 4}\n"
          "sampler: {name: nmcmc, n_samples: 256, batch_size: 128, n_chains: 4, reference_hmc: 64,"
          " reference_winding: 64, n_thermalize: 4, n_leapfrog: 3, integrator: omelyan}\n")


def test_run_prints_flow_hmc_and_winding_hmc_side_by_side(tmp_path, capsys):
    path = tmp_path / "sw.yaml"
    path.write_text(CONFIG + f"output: {{dir: {tmp_path / 'out'}}}\n")
    assert main(["run", str(path), "--no-progress", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "winding HMC / flow" in printed and "HMC / flow" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["ensembles"]) == {"nmcmc", "hmc", "winding_hmc"}
    assert {"cost_ratio", "winding_cost_ratio"} <= set(summary["cost"])
    assert summary["cost"]["winding_hmc"]["chi_t_exact"] is None
    theory = Schwinger((4, 4), beta=2.0, kappa=0.24)
    for name in ("ensemble.h5", "ensemble_hmc.h5", "ensemble_winding_hmc.h5"):
        with open_ensemble(tmp_path / "out" / name) as ens:
            x = torch.as_tensor(np.asarray(ens["samples"][:8]), dtype=torch.float64)
            stored = np.asarray(ens["action"][:8])
            assert "observables/condensate" in ens and "observables/pion_correlator" in ens
        # the stored action is the full effective action (float32 flow rows: to float32 precision)
        assert np.allclose(stored, theory.action(x).numpy(), rtol=1e-4, atol=1e-3)
