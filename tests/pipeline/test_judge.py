"""The verdict against an HMC reference: an exact value judges where it exists, and an unreliable reference
(frozen topology) never calls a correct ensemble wrong (the README's main job, U(1) β = 6)."""
from latticeflow.analysis import GammaResult, ObservableRow
from latticeflow.pipeline.analyze import EnsembleAnalysis


def _row(name, mean, error, exact=None):
    return ObservableRow(name, GammaResult(mean=mean, error=error, error_of_error=0.0, tau_int=0.5,
                                           tau_int_error=0.0, window=1, n=10000, n_replicas=16), exact)


def _analysis(rows, reliable=True):
    a = EnsembleAnalysis(path="x.h5", theory="t", couplings={}, shape=(8, 8), n_rows=10000, rows=rows,
                         extra={"checks": {}}, main=tuple(r.name for r in rows))
    a.extra["verdict"] = {"reliable": reliable, "reasons": []}
    return a


def test_V_exact_value_judges_not_a_reference_that_is_off():
    flow = _analysis([_row("<cos P>", 0.91255, 0.00009, exact=0.912455), _row("Q", 0.0, 0.003)])
    hmc = _analysis([_row("<cos P>", 0.91162, 0.00019, exact=0.912455), _row("Q", 0.0, 0.1)], reliable=True)
    v = flow.judge(reference=hmc)
    assert v["reliable"], v
    assert "<cos P> (vs reference)" not in flow.extra["checks"]["pulls"]
    assert "Q (vs reference)" in flow.extra["checks"]["pulls"]


def test_V_unreliable_reference_is_ignored_and_a_reliable_one_still_judges():
    flow = _analysis([_row("chi", 1.0, 0.01)])
    frozen = _analysis([_row("chi", 1.2, 0.01)], reliable=False)
    assert flow.judge(reference=frozen)["reliable"]
    assert "unreliable" in flow.extra["checks"]["reference_ignored"]
    good = _analysis([_row("chi", 1.2, 0.01)], reliable=True)
    v = flow.judge(reference=good)
    assert not v["reliable"] and any("vs reference" in r for r in v["reasons"]), v


def _write(path, sigma, seed):
    """16 chains × 512 i.i.d. φ⁴ 4×4 configurations (κ = 0.25, λ = 0.5: only ⟨m⟩ = 0 is exact), φ ~ N(0, σ²)."""
    import numpy as np

    from actions import build_theory
    from latticeflow.io import EnsembleWriter

    import torch

    theory = build_theory("phi4", (4, 4), {"kappa": 0.25, "lam": 0.5})
    rng = np.random.default_rng(seed)
    n_chains, n_sweeps = 16, 512
    x = rng.normal(0.0, sigma, size=(n_sweeps * n_chains, 4, 4))
    xt = torch.as_tensor(x)
    obs = {k: v.numpy() for k, v in theory.observables(xt).items()}
    with EnsembleWriter(path, theory="phi4", couplings=theory.couplings, shape=(4, 4), field_shape=(4, 4),
                        sampler="hmc" if "hmc" in path.name else "nmcmc", seed=seed) as w:
        w.append(x, theory.action(xt).numpy(), accepted=np.ones(len(x), bool),
                 chain=np.tile(np.arange(n_chains), n_sweeps), mc_index=np.repeat(np.arange(n_sweeps), n_chains),
                 observables=obs)


def test_V_analyze_judges_with_the_reference_beside_the_file_as_run_does(tmp_path):
    """`run` judges a flow ensemble against ensemble_hmc.h5; `analyze` on the same file finds it too."""
    from latticeflow.pipeline.analyze import analyze

    _write(tmp_path / "ensemble_hmc.h5", 1.0, 1)
    _write(tmp_path / "ensemble.h5", 1.1, 2)  # χ₂ and |m| off by many σ, ⟨m⟩ = 0 still right
    ref = analyze(str(tmp_path / "ensemble_hmc.h5"))
    assert ref.extra["verdict"]["reliable"], ref.extra["verdict"]
    alone = analyze(str(tmp_path / "ensemble.h5"), reference=None)
    beside = analyze(str(tmp_path / "ensemble.h5"))
    explicit = analyze(str(tmp_path / "ensemble.h5"), reference=ref)
    assert alone.extra["verdict"]["reliable"], alone.extra["verdict"]
    assert not beside.extra["verdict"]["reliable"]
    assert any("vs reference" in r for r in beside.extra["verdict"]["reasons"])
    assert beside.extra["verdict"] == explicit.extra["verdict"]
    assert beside.extra["reference"] == str(tmp_path / "ensemble_hmc.h5")
