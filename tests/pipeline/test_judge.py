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


def test_exact_value_judges_not_a_reference_that_is_off():
    flow = _analysis([_row("<cos P>", 0.91255, 0.00009, exact=0.912455), _row("Q", 0.0, 0.003)])
    hmc = _analysis([_row("<cos P>", 0.91162, 0.00019, exact=0.912455), _row("Q", 0.0, 0.1)], reliable=True)
    v = flow.judge(reference=hmc)
    assert v["reliable"], v
    assert "<cos P> (vs reference)" not in flow.extra["checks"]["pulls"]
    assert "Q (vs reference)" in flow.extra["checks"]["pulls"]


def test_unreliable_reference_is_ignored_and_a_reliable_one_still_judges():
    flow = _analysis([_row("chi", 1.0, 0.01)])
    frozen = _analysis([_row("chi", 1.2, 0.01)], reliable=False)
    assert flow.judge(reference=frozen)["reliable"]
    assert "unreliable" in flow.extra["checks"]["reference_ignored"]
    good = _analysis([_row("chi", 1.2, 0.01)], reliable=True)
    v = flow.judge(reference=good)
    assert not v["reliable"] and any("vs reference" in r for r in v["reasons"]), v
