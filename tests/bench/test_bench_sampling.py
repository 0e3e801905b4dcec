"""`bench sampling` (quick): throughput fields, the HDF5 share and the diagnostics share are present and sane."""
import math

import torch

from latticeflow.bench.sampling import format_sampling_table, run_sampling_bench


def test_quick_sampling_bench_reports_throughput_and_the_diagnostics_share():
    torch.set_num_threads(1)
    result = run_sampling_bench(batch_size=256, quick=True)
    assert result["benchmark"] == "sampling"
    assert [r["case"] for r in result["results"]] == ["phi4 16x8 z2nice", "u1 8x8 ncp"]
    for r in result["results"]:
        assert all(v > 0 and math.isfinite(v) for v in r["configs_per_s"].values())
        assert 0 < r["hdf5_share"] < 1
        assert r["diagnostics_seconds"] > 0 and 0 < r["diagnostics_share"] < 1
    assert "diagnostics" in format_sampling_table(result)
