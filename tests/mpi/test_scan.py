"""`latticeflow scan` on 2 ranks: the points are shared out as one-process runs (no collectives, the config's own
seed), every point finishes once, and rank 0 writes scan.json and the report."""
from __future__ import annotations

import json

from latticeflow.pipeline.scan import SCAN_FILE, plan_scan, run_scan


def test_scan_points_are_shared_among_ranks_and_rank_0_reports(world, shared_dir):
    config = shared_dir / "scan.yaml"
    if world.is_main:
        config.write_text("name: mpi_scan\nseed: 4\naction: {theory: phi4, shape: [4, 4], kappa: 0.3, lam: 0.5}\n"
                          "sampler: {name: cluster, n_samples: 128, n_chains: 4, n_thermalize: 10, n_leapfrog: 4}\n"
                          f"output: {{dir: {shared_dir / 'scan'}}}\n")
    world.barrier()
    scan = plan_scan(str(config), ["action.kappa=0.25:0.4:2", "action.shape=[4,4],[6,6]"])
    out = run_scan(scan, progress=False)
    assert out["ran"] == 4 and out["failed"] == {} and out["skipped"] == 0
    if world.is_main:
        state = json.loads((scan.dir / SCAN_FILE).read_text())
        assert [p["status"] for p in state["points"]] == ["finished"] * 4
        assert sorted({p["rank"] for p in state["points"]}) == [0, 1]  # both ranks ran points
        assert len(out["report"]["points"]) == 4 and "kappa_c" in out["report"]
        for p in scan.points:  # one-process runs: a plain ensemble file, no shards, the config's seed
            assert (p.dir / "ensemble.h5").is_file() and not list(p.dir.glob("ensemble.r*.h5"))
    else:
        assert "report" not in out
    again = run_scan(scan, progress=False)
    assert again["ran"] == 0 and again["skipped"] == 4
