"""Wilson loops for the Creutz ratio: a user observable for ``latticeflow measure`` (README, "Measuring your own
observables").

    latticeflow measure runs/u1_8x8/ensemble.h5 --observable docs/examples/wilson_loops.py:wilson_loops

stores ``observables/wilson_loops`` (B, 4) = W(1×1), W(1×2), W(2×1), W(2×2) per configuration, with
W(R×T) = V⁻¹ Σ_x cos(sum of the R×T plaquette angles enclosed at x) (`actions.u1.U1Gauge.wilson_loop`).
The Creutz ratio χ(2, 2) = −ln[W(2×2) W(1×1) / (W(1×2) W(2×1))] is the string tension; in 2D U(1) in infinite
volume W(R×T) = (I₁(β)/I₀(β))^{RT}, so χ = −ln(I₁(β)/I₀(β)) exactly.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["wilson_loops", "creutz_ratio", "LOOPS"]

#: (R, T) of the stored columns
LOOPS = ((1, 1), (1, 2), (2, 1), (2, 2))


def wilson_loops(theta: torch.Tensor, theory) -> torch.Tensor:
    """W(R×T) for the `LOOPS`, ``(B, 4)``: the per-configuration observable ``latticeflow measure`` stores."""
    return torch.stack([theory.wilson_loop(theta, r, t) for r, t in LOOPS], dim=-1)


def creutz_ratio(w11: float, w12: float, w21: float, w22: float) -> float:
    """χ(2, 2) = −ln[W(2×2) W(1×1) / (W(1×2) W(2×1))] from the means (for `gamma_method_derived`)."""
    return -math.log(w22 * w11 / (w12 * w21))


if __name__ == "__main__":  # python docs/examples/wilson_loops.py ENSEMBLE: the Creutz ratio with its error
    import sys

    from scipy.special import i0e, i1e

    from actions.exact import u1_wilson_loop
    from latticeflow.analysis import gamma_method_derived
    from latticeflow.io import open_ensemble

    with open_ensemble(sys.argv[1]) as ens:
        reps = ens.replicas("wilson_loops")  # one (N_r, 4) series per Markov chain
        beta, volume = ens.couplings["beta"], int(np.prod(ens.shape))
    result = gamma_method_derived(creutz_ratio, [[r[:, k] for r in reps] for k in range(4)])
    exact = -float(np.log(i1e(beta) / i0e(beta)))
    w = {a: u1_wilson_loop(beta, volume, a) for a in (1, 2, 4)}
    torus = creutz_ratio(w[1], w[2], w[2], w[4])
    print(f"Creutz ratio chi(2,2) = {result.mean:.5f} ± {result.error:.5f} (tau_int {result.tau_int:.2f}); exact "
          f"{torus:.5f} on this torus ({(result.mean - torus) / result.error:+.1f} sigma), -ln(I1/I0) = {exact:.5f} "
          f"in infinite volume")
