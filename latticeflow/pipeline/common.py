"""What every sampling path of the pipeline shares: the run summary and the device of a config."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError

__all__ = ["SampleSummary", "resolve_device", "resolve_dtype"]


@dataclass
class SampleSummary:
    """What a sampling run did (printed by the CLI, written to ``summary.json``)."""

    path: str
    n_rows: int
    n_new: int
    acceptance: float
    exp_minus_delta_h: float
    step_size: float
    seconds: float
    resumed: bool
    winding_acceptance: float = float("nan")  # winding HMC: instanton moves accepted (this invocation)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_device(name: str) -> torch.device:
    """``torch.device`` for a config's ``device``; a clear error if CUDA is asked for but absent."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device is {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` for ``"float32"`` (configs and the CLI offer float32 and float64); a torch dtype as it is."""
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
