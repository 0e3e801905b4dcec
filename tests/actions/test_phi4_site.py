"""`Phi4.site_potential` and `Phi4.neighbour_field`: the one-site physics of the decimated flows."""
from __future__ import annotations

import pytest
import torch

from actions import Phi4


@pytest.mark.parametrize("shape,kappa,lam", [((6, 4), 0.331, 0.5), ((4, 4, 2), 0.12, 0.02), ((8,), 0.4, 1.1)])
def test_action_is_site_potential_minus_half_the_neighbour_term(shape, kappa, lam):
    """S = Σ_x [U(φ_x) − ½ b_x φ_x], b = 2κ Σ_{±μ} φ_{x±μ̂}, in float64 to 1e-12."""
    theory = Phi4(shape, kappa=kappa, lam=lam)
    phi = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    split = (theory.site_potential(phi) - 0.5 * theory.neighbour_field(phi) * phi).flatten(1).sum(-1)
    torch.testing.assert_close(split, theory.action(phi), rtol=0, atol=1e-12)


def test_one_site_change_costs_the_conditional_exponent():
    """S(φ') − S(φ) = U(φ'_x) − U(φ_x) − b_x (φ'_x − φ_x) when only site x changes: p(φ_x | rest) ∝ e^{−U + bφ}."""
    theory = Phi4((6, 6), kappa=0.3, lam=0.5)
    phi = torch.randn(1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    new = phi.clone()
    new[0, 2, 3] = 1.7
    b = theory.neighbour_field(phi)[0, 2, 3]
    old_x, new_x = phi[0, 2, 3], torch.tensor(1.7, dtype=torch.float64)
    expected = theory.site_potential(new_x) - theory.site_potential(old_x) - b * (new_x - old_x)
    torch.testing.assert_close(theory.action(new) - theory.action(phi), expected.reshape(1), rtol=0, atol=1e-12)
