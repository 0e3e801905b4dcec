"""Periodic padding: same values as torch's circular padding, exact gradient; convolutions evaluated on a coset."""
import pytest
import torch
import torch.nn.functional as F

from latticeflow.flows.conditioners import circular_pad


@pytest.mark.parametrize("pad,shape", [(1, (3, 2, 8, 4)), (2, (2, 3, 4, 6)), (3, (1, 1, 3, 5)), (1, (2, 1, 1, 4))])
def test_circular_pad_equals_torch_and_passes_gradcheck(pad, shape):
    if pad > min(shape[-2:]):
        with pytest.raises(ValueError, match="exceeds the lattice extent"):
            circular_pad(torch.zeros(shape), pad)
        return
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.equal(circular_pad(x, pad), F.pad(x, (pad,) * 4, mode="circular"))
    assert torch.autograd.gradcheck(lambda t: circular_pad(t, pad), (x,))


@pytest.mark.parametrize("pad,shape,ndim", [(1, (2, 3, 5), 1), (2, (1, 2, 4), 1), (1, (2, 2, 4, 3, 2), 3),
                                            (2, (1, 1, 4, 2, 6), 3)])
def test_circular_pad_in_1d_and_3d_equals_torch_and_passes_gradcheck(pad, shape, ndim):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    if pad > min(shape[-ndim:]):
        with pytest.raises(ValueError, match="exceeds the lattice extent"):
            circular_pad(x, pad, ndim)
        return
    assert torch.equal(circular_pad(x, pad, ndim), F.pad(x, (pad,) * 2 * ndim, mode="circular"))
    assert torch.autograd.gradcheck(lambda t: circular_pad(t, pad, ndim), (x,))


@pytest.mark.parametrize("ndim,shape,kernel_size,dilation", [(1, (8,), 3, 1), (2, (8, 4), 5, 1), (2, (8, 8), 3, 2),
                                                             (3, (4, 4, 2), 3, 1)])
def test_on_coset_equals_the_full_convolution_on_the_coset_with_its_gradient(ndim, shape, kernel_size, dilation):
    from latticeflow.flows.conditioners import PeriodicConv
    torch.manual_seed(0)
    conv = PeriodicConv(ndim, 3, 4, kernel_size, dilation=dilation).double()
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    offsets = [(0,) * ndim, (1,) * ndim, tuple(i % 2 for i in range(ndim))]
    for offset in offsets:
        part = conv.on_coset(x, offset, 2)
        full = conv(x)[(..., *(slice(o, None, 2) for o in offset))]
        assert part.shape == (2, 4, *(n // 2 for n in shape))
        assert float((part - full).abs().max()) < 1e-13
        w = torch.randn_like(part)
        g_part = torch.autograd.grad((part * w).sum(), [x, conv.weight])
        g_full = torch.autograd.grad((full * w).sum(), [x, conv.weight])
        assert all(float((a - b).abs().max()) < 1e-12 for a, b in zip(g_part, g_full))


def test_coset_of_finds_the_colour_cosets_and_rejects_checkerboards():
    from actions.lattice import checkerboard_mask
    from latticeflow.flows.phi4 import _coset_of
    from latticeflow.flows.two_level import colour_mask
    for coset in (0, 1):
        for colour in range(4):
            mask = colour_mask((8, 8), coset, colour)
            offset, idx = _coset_of(mask)
            coarse = torch.zeros(4, 4, dtype=torch.bool).flatten()
            coarse[idx] = True
            assert torch.equal(mask[offset[0]::2, offset[1]::2], coarse.view(4, 4))
            assert int(mask.sum()) == len(idx)  # every target on the coset
    assert _coset_of(checkerboard_mask((8, 8), 0)) is None
    assert _coset_of(torch.ones(8, 8, dtype=torch.bool)) is None
    assert _coset_of(torch.zeros(6, 5, dtype=torch.bool)) is None


@pytest.mark.parametrize("coset,colour", [(1, 2), (0, 1)])
def test_parity_conditioner_on_a_coset_equals_its_full_lattice_path(coset, colour):
    """The colour couplings' heads on their coset give the same spline parameters and gradients as the
    full-lattice heads gathered at the targets."""
    from latticeflow.flows.two_level import ColourSplineCoupling
    torch.manual_seed(1)
    layer = ColourSplineCoupling((16, 16), coset, colour, hidden=[4, 4], kernel_size=3).double()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    assert layer.net.coset is not None
    x = torch.randn(3, 16, 16, dtype=torch.float64, requires_grad=True)

    def params_and_grads():
        params = layer.conditioner_params(layer._frozen(x))
        loss = sum((p * torch.randn(p.shape, generator=torch.Generator().manual_seed(2), dtype=p.dtype)).sum()
                   for p in params)
        return params, torch.autograd.grad(loss, [x, *layer.parameters()])

    on_coset, grads_coset = params_and_grads()
    saved, layer.net.coset = layer.net.coset, None
    full, grads_full = params_and_grads()
    layer.net.coset = saved
    assert all(float((a - b).abs().max()) < 1e-12 for a, b in zip(on_coset, full))
    assert all(float((a - b).abs().max()) < 1e-11 for a, b in zip(grads_coset, grads_full))


@pytest.mark.parametrize("in_channels,dilation,bias", [(1, 1, True), (2, 1, False), (4, 1, True), (2, 2, False),
                                                       (5, 1, True)])
def test_periodic_conv2d_equals_torch_on_both_cpu_kernels(in_channels, dilation, bias):
    """`PeriodicConv2d` takes the im2col kernel for at most `NATIVE_MAX_IN_CHANNELS` input channels without
    dilation (a coupling's input layer) and oneDNN otherwise: both equal torch's circular padding + conv2d in
    float64, output, input and weight gradients, and hand on a channels-last output."""
    from latticeflow.flows.conditioners import NATIVE_MAX_IN_CHANNELS, PeriodicConv2d

    torch.manual_seed(3)
    conv = PeriodicConv2d(in_channels, 6, 5, bias=bias, dilation=dilation).double()
    x = torch.randn(3, in_channels, 12, 10, dtype=torch.float64, requires_grad=True)
    native = conv._native_cpu(x)
    assert native == (in_channels <= NATIVE_MAX_IN_CHANNELS and dilation == 1)
    y = conv(x)
    pad = dilation * 2
    ref = F.conv2d(F.pad(x, (pad,) * 4, mode="circular"), conv.weight, conv.bias, dilation=dilation)
    assert (y - ref).abs().max() < 1e-13
    assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(ref)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
        assert (a - b).abs().max() < 1e-12
