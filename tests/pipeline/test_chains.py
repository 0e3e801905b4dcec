"""The generic chain pipeline (any registered chain sampler): resume is bit-identical, including the cluster
sampler's update schedule, and the summary's acceptance counts every trajectory."""
import h5py
import numpy as np
import pytest

from latticeflow.config import ConfigError, config_from_dict
from latticeflow.pipeline import sample


def _cfg(out, n_samples, **sampler):
    return config_from_dict({"seed": 5, "action": {"theory": "phi4", "shape": [4, 4], "kappa": 0.3, "lam": 0.05},
                             "sampler": {"n_samples": n_samples, "n_chains": 4, "n_thermalize": 11,
                                         "batch_size": 8, **sampler}, "output": {"dir": str(out)}})


@pytest.mark.parametrize("sampler", [{"name": "hmc", "save_every": 2}, {"name": "cluster", "cluster_every": 3}])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, sampler):
    whole = sample(_cfg(tmp_path / "a", 96, **sampler), progress=False)
    sample(_cfg(tmp_path / "b", 40, **sampler), progress=False)
    resumed = sample(_cfg(tmp_path / "b", 96, **sampler), progress=False)
    assert resumed.resumed and resumed.n_rows == whole.n_rows == 96
    with h5py.File(whole.path) as f, h5py.File(resumed.path) as g:
        for key in ("samples", "action", "mc_index", "chain", "accepted"):
            assert np.array_equal(f[key][:], g[key][:]), key


def test_resume_refuses_another_cluster_schedule(tmp_path):
    sample(_cfg(tmp_path, 16, name="cluster", cluster_every=2), progress=False)
    with pytest.raises(ConfigError, match="cluster_every is 3 but the ensemble was written with cluster_every=2"):
        sample(_cfg(tmp_path, 32, name="cluster", cluster_every=3), progress=False)


def test_acceptance_counts_every_trajectory_not_every_stored_configuration(tmp_path):
    one = sample(_cfg(tmp_path / "a", 2000, save_every=1, step_size=0.6, n_thermalize=0,
                      target_acceptance=0.5), progress=False)
    two = sample(_cfg(tmp_path / "b", 2000, save_every=2, step_size=0.6, n_thermalize=0,
                      target_acceptance=0.5), progress=False)
    assert 0.2 < one.acceptance < 0.95
    assert abs(two.acceptance - one.acceptance) < 0.05  # 'any of two accepted' would be ~1 − (1 − a)²
