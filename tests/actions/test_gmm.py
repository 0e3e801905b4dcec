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


def test_product_mixture_is_the_explicit_64_mode_mixture():
    """The product form equals the 2^6-component `GaussianMixture` at (±1, …, ±1), σ = 0.5, everywhere:
    so it is normalised (ln Z = 0) and the KL of the exact density to itself is exactly 0."""
    import itertools

    from actions import ProductMixture

    pm = ProductMixture(dim=6, mu=1.0, sigma=0.5)
    corners = list(itertools.product([-1.0, 1.0], repeat=6))
    explicit = GaussianMixture(dim=6, means=corners, sigmas=[0.5] * 64)
    x = 1.5 * torch.randn(500, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:5] *= 20  # far tails: the stable log cosh must not overflow
    assert pm.n_modes == 64 and pm.log_z == 0.0
    assert torch.allclose(pm.action(x), explicit.action(x), rtol=1e-12, atol=1e-9)
    # 1D factor integrates to 1 (so the product does)
    g = torch.linspace(-8, 8, 16001, dtype=torch.float64)
    one_d = ProductMixture(dim=1, mu=1.0, sigma=0.5)
    assert math.isclose(float(torch.exp(-one_d.action(g[:, None])).sum() * (g[1] - g[0])), 1.0, rel_tol=1e-9)
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(pm.action(xr).sum(), xr)
    assert torch.allclose(pm.force(x), grad, atol=1e-12)
    # KL(p‖p) from exact samples: mean of log p − log p_explicit = 0
    s = pm.sample(4000, generator=torch.Generator().manual_seed(1))
    assert float((pm.action(s) - explicit.action(s)).abs().max()) < 1e-10


def test_product_mixture_samples_have_the_exact_moments():
    """200 000 samples: ⟨x⟩ = 0, ⟨x²⟩ = μ² + σ², ⟨x⁴⟩ = μ⁴ + 6μ²σ² + 3σ⁴, per coordinate, within 4σ;
    coordinates independent (⟨x_i x_j⟩ = 0) and the sign pattern uniform over the 64 modes."""
    from actions import ProductMixture

    pm = ProductMixture(dim=6, mu=1.0, sigma=0.5)
    n = 200_000
    x = pm.sample(n, generator=torch.Generator().manual_seed(2))
    mu, s2 = 1.0, 0.25
    for moment, exact in ((x, 0.0), (x ** 2, mu ** 2 + s2), (x ** 4, mu ** 4 + 6 * mu ** 2 * s2 + 3 * s2 ** 2)):
        mean, err = moment.mean(0), moment.std(0) / math.sqrt(n)
        assert bool(((mean - exact).abs() < 4 * err).all()), (mean, exact)
    cross = (x[:, 0] * x[:, 1])
    assert abs(float(cross.mean())) < 4 * float(cross.std()) / math.sqrt(n)
    modes = ((x > 0).long() * (2 ** torch.arange(6))).sum(1)
    counts = torch.bincount(modes, minlength=64).double()
    chi2 = float(((counts - n / 64) ** 2 / (n / 64)).sum())
    assert chi2 < 63 + 5 * math.sqrt(2 * 63)  # χ² with 63 degrees of freedom, ~5σ


def test_product_mixture_entropy():
    """H = −⟨log p⟩_p: the quadrature against the mean action of 200 000 exact samples (seed 3, within 4σ);
    μ = 0 is one Gaussian, ½ log(2πeσ²) per coordinate; well separated modes add ln 2 per coordinate."""
    from actions import ProductMixture

    pm = ProductMixture(dim=6, mu=1.0, sigma=0.5)
    s = pm.action(pm.sample(200_000, generator=torch.Generator().manual_seed(3)))
    assert abs(float(s.mean()) - pm.entropy) < 4 * float(s.std()) / math.sqrt(s.numel())
    gauss = 0.5 * math.log(2 * math.pi * math.e * 0.25)
    assert abs(ProductMixture(dim=3, mu=0.0, sigma=0.5).entropy - 3 * gauss) < 1e-9
    assert abs(ProductMixture(dim=2, mu=10.0, sigma=0.5).entropy - 2 * (gauss + math.log(2))) < 1e-9
    assert gauss + math.log(2) > pm.entropy / 6 > gauss  # overlapping modes: in between
