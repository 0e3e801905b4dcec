"""`latticeflow analyze FILE --pyerrors out.json.gz --plot c.png` on a small φ⁴ HMC ensemble: every observable
exported (C(t) as a pyerrors Corr, G(x) as an Array), the correlated cosh fit in the table and the JSON."""
import json

import numpy as np
import pyerrors as pe

from latticeflow.io import open_ensemble
from latticeflow.pipeline import analyze

from .test_cli import run, write_config

PHI4 = ("name: t\nseed: 3\naction: {theory: phi4, shape: [8, 8], kappa: 0.2, lam: 0.0}\n"
        "sampler: {n_samples: 1024, n_chains: 4, n_thermalize: 20, n_leapfrog: 10, batch_size: 256}\noutput: {dir: out}\n")


def test_analyze_exports_correlator_and_two_point_to_pyerrors_and_plots_the_fit(tmp_path):
    run("sample", str(write_config(tmp_path, PHI4)), "--no-progress", cwd=tmp_path)
    out = run("analyze", "out/ensemble.h5", "--json", "--pyerrors", "obs.json.gz", "--plot", "c.png", cwd=tmp_path)
    res = json.loads(out.stdout)
    assert (tmp_path / "c.png").stat().st_size > 10_000
    data = pe.input.json.load_json(str(tmp_path / "obs.json.gz"), verbose=False, full_output=True)["obsdata"]
    by_tag = {(o.tag if isinstance(o, (pe.Obs, pe.Corr)) else o.ravel()[0].tag): o for o in data}
    corr, g = by_tag["zero_momentum_correlator"], by_tag["two_point"]
    assert isinstance(corr, pe.Corr) and corr.T == 8 and g.shape == (8, 8) and isinstance(by_tag["m"], pe.Obs)
    assert sorted(corr.content[0][0].names) == [f"ensemble|r{r:02d}" for r in range(1, 5)]
    with open_ensemble(tmp_path / "out" / "ensemble.h5") as ens:
        c, g_data = ens["observables/zero_momentum_correlator"], ens["observables/two_point"]
    np.testing.assert_allclose([corr.content[t][0].value for t in range(8)], c.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose([[o.value for o in row] for row in g], g_data.mean(axis=0), rtol=1e-12)
    m_eff = corr.m_eff("arccosh").content[1][0]
    assert abs(m_eff.value - res["effective_mass"][0]["mean"]) < 1e-12
    fit = res["correlator_fit"]
    assert (fit["t_min"], fit["t_max"], fit["T"], fit["dof"]) == (1, 4, 8.0, 2)
    assert abs(fit["mass"] - np.arccosh(1.5)) < 4 * fit["mass_error"]  # free field: cosh m = 1 + m0²/2, m0² = 1/κ − 4
    assert len(res["correlator"]) == 8
    table = analyze(str(tmp_path / "out" / "ensemble.h5")).table()
    assert "correlated cosh fit of C(t), t = 1..4 (T = 8): m = " in table and "m_eff(t) = arccosh" in table
