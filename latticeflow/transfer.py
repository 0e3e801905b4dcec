"""Transfer of flow weights between lattices, couplings and β (``train.init``): `transfer_state`."""
from __future__ import annotations

import torch

__all__ = ["ArchitectureMismatch", "transfer_state", "resample_momentum"]


class ArchitectureMismatch(ValueError):
    """A state dict does not fit a flow: another family, depth, width or kernel (not just another lattice)."""


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def resample_momentum(a: torch.Tensor, lattice: tuple[int, ...] | list[int]) -> torch.Tensor:
    """A function on the periodic momentum grid p_μ = 2πn_μ/L_μ (the last d = len(``lattice``) axes of ``a``, in FFT
    order) resampled onto the grid of ``lattice``: linear interpolation along each axis on the torus, so an old
    grid point that is also a new one keeps its value exactly (L → 2L: every other point).

    Example:
        >>> a = torch.tensor([0.0, 1.0, 2.0, 1.0])  # L = 4: p = 0, π/2, π, 3π/2
        >>> resample_momentum(a, [8]).tolist()
        [0.0, 0.5, 1.0, 1.5, 2.0, 1.5, 1.0, 0.5]
    """
    d = len(lattice)
    out = a
    for axis, n_new in zip(range(a.dim() - d, a.dim()), lattice):
        n_old = out.shape[axis]
        f = torch.arange(n_new, dtype=torch.float64, device=a.device) * (n_old / n_new)
        i0 = torch.floor(f)
        w = (f - i0).to(out.dtype)
        i0 = i0.long() % n_old
        i1 = (i0 + 1) % n_old
        shape = [1] * out.dim()
        shape[axis] = n_new
        w = w.view(shape)
        out = out.index_select(axis, i0) * (1 - w) + out.index_select(axis, i1) * w
    return out


def transfer_state(flow: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                   lattice: tuple[int, ...] | list[int] | None = None,
                   source_lattice: tuple[int, ...] | list[int] | None = None,
                   keep: tuple[type, ...] = (), source_init: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Load the flow weights ``state_dict`` of a flow of the same architecture, trained on a lattice of
    possibly another size (or coupling, or β), into ``flow``; returns the keys not copied as they were.

    Keys must be the same. A tensor of the same shape is copied (cast to ``flow``'s dtype and device):
    convolution weights and biases do not depend on the lattice size, nor do scalar scales. A tensor
    whose shape differs is lattice-dependent if it is a buffer (masks, index buffers ``idx_a``, ``idx_b``,
    ``plaquette_index``, ``frozen_plaquettes``, ...): ``flow`` keeps its own. A parameter whose shape
    differs is lattice-dependent only if its trailing dimensions are ``lattice`` (the new lattice
    extents; default ``flow.field_shape``, pass the action's shape for gauge fields), its leading ones
    agree and, when ``source_lattice`` (the extents the state dict was trained on) is given, the
    checkpoint's trailing dimensions are those: a per-site tensor (e.g. the per-site log-scale a_x of
    ``GlobalScaling``, shape (L0, L1)) becomes its lattice mean broadcast to the new lattice,
    ā = (1/V) Σ_x a_x; a momentum-space tensor (the log-scales a(p) of ``FourierScaling``, or any
    parameter over the half spectrum of ``torch.fft.rfftn``, trailing dims (L0, …, L_{d−1}//2 + 1)) keeps
    ``flow``'s own initialisation, e.g. the free-field a(p) of the new action (no interpolation of the
    learned correction). Anything else raises
    :class:`ArchitectureMismatch` naming the first differing key and both shapes (checkpoint vs ``flow``).
    Submodules of the types in ``keep`` keep ``flow``'s own values (checked for the same shapes), e.g.
    ``PlaquetteMarginal`` when β changed: its initialisation is the exact single-plaquette marginal at the
    new β, better than the learned one of another β (`init_flow_from` does this).

    Example:
        >>> from actions import Phi4
        >>> from latticeflow.flows import build_flow
        >>> small = build_flow({"family": "z2nice", "n_layers": 2}, Phi4((4, 4), kappa=0.2, lam=0.0))
        >>> big = build_flow({"family": "z2nice", "n_layers": 2}, Phi4((8, 8), kappa=0.2, lam=0.0))
        >>> transfer_state(big, small.state_dict())
        ['layers.0.mask', 'layers.0.idx_b', 'layers.0.net.idx_a', 'layers.0.net.idx_b', 'layers.1.mask', 'layers.1.idx_b', 'layers.1.net.idx_a', 'layers.1.net.idx_b']
    """
    from .flows.fourier import FourierScaling

    own = flow.state_dict()
    parameters = {name for name, _ in flow.named_parameters()}
    momentum = {f"{prefix}.{name}" if prefix else name for prefix, module in flow.named_modules()
                if isinstance(module, FourierScaling) for name, _ in module.named_parameters(recurse=False)}
    lattice = tuple(flow.field_shape if lattice is None else lattice)
    d = len(lattice)
    spectrum = (*lattice[:-1], lattice[-1] // 2 + 1) if d else ()
    source = tuple(source_lattice or ())
    source_spectrum = (*source[:-1], source[-1] // 2 + 1) if source else ()

    def mismatch(key: str, why: str) -> ArchitectureMismatch:
        return ArchitectureMismatch(f"another architecture (first differing key {key!r}: {why})")

    kept = {f"{prefix}.{name}" if prefix else name for prefix, module in flow.named_modules()
            if keep and isinstance(module, keep) for name, _ in module.named_parameters(recurse=True)}
    merged: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    for key, new in own.items():
        if key not in state_dict:
            vacua = " (trained without the vacuum start: set flow.vacua: false)" if key.endswith("base.shift") else ""
            raise mismatch(key, "not in the checkpoint" + vacua)
        old = torch.as_tensor(state_dict[key])
        if key == "base.shift" or key.endswith(".base.shift"):
            merged[key] = new  # the VacuumMixture shift follows from the new action (and its Fourier start)
            adapted.append(key)
            continue
        if key in kept:
            if old.shape != new.shape:
                raise mismatch(key, f"shape {_shape(old)} vs {_shape(new)}")
            merged[key] = new
            adapted.append(key)
            continue
        if old.shape == new.shape:
            merged[key] = old.to(device=new.device, dtype=new.dtype)
            continue
        lead_agrees = (old.dim() == new.dim() >= d and old.shape[:new.dim() - d] == new.shape[:new.dim() - d]
                       and (source_lattice is None or len(source_lattice) != d
                            or tuple(old.shape[new.dim() - d:]) in (source, source_spectrum)))
        if key not in parameters:
            merged[key] = new  # a lattice-dependent buffer: the new flow's own
        elif lead_agrees and key in momentum:
            merged[key] = new  # a momentum-space parameter: the new flow's initialisation (+ the learned correction)
            init = None if source_init is None else source_init.get(key)
            if init is not None and init.shape == old.shape and tuple(new.shape[new.dim() - d:]) == lattice:
                learned = (old.to(device=new.device, dtype=torch.float64)
                           - torch.as_tensor(init).to(device=new.device, dtype=torch.float64))
                merged[key] = new + resample_momentum(learned, lattice).to(new.dtype)
        elif lead_agrees and tuple(new.shape[new.dim() - d:]) == lattice and new.is_floating_point():
            dims = tuple(range(new.dim() - d, new.dim()))
            mean = old.to(device=new.device, dtype=new.dtype).mean(dim=dims, keepdim=True)
            merged[key] = mean.expand_as(new).clone()
        elif lead_agrees and tuple(new.shape[new.dim() - d:]) == spectrum:
            merged[key] = new  # a momentum-space parameter: the new flow's initialisation
        else:
            raise mismatch(key, f"shape {_shape(old)} vs {_shape(new)}")
        adapted.append(key)
    for key in state_dict:
        if key not in own:
            raise mismatch(key, "not in this flow")
    flow.load_state_dict(merged)
    return adapted
