"""Gaussian-mixture target: normalisation and force."""
import math

import torch

from actions import GaussianMixture


def test_gmm_force_and_normalisation():
    gmm = GaussianMixture(dim=2, n_components=3, seed=1)
    x = (3 * torch.randn(20, 2, dtype=torch.float64)).requires_grad_()
    (grad,) = torch.autograd.grad(gmm.action(x).sum(), x)
    assert torch.allclose(gmm.force(x), grad, atol=1e-12)
    # ∫ e^{−S} = 1 on a grid covering all modes
    g = torch.linspace(-12, 12, 601, dtype=torch.float64)
    xx = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    integral = torch.exp(-gmm.action(xx)).sum() * (g[1] - g[0]) ** 2
    assert math.isclose(float(integral), 1.0, rel_tol=1e-6)
