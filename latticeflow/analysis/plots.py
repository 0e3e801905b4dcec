"""Figure boilerplate for the package's PNGs: a matplotlib figure on the Agg backend (no display needed),
a grid on every axes, tight layout, saved at 110 dpi and closed even when drawing fails."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["figure"]


@contextlib.contextmanager
def figure(path: str, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> Iterator[tuple[Any, np.ndarray]]:
    """A matplotlib figure (Agg) with an (nrows, ncols) array of axes, saved to ``path`` after the block;
    ``kwargs`` go to ``plt.subplots`` (e.g. ``figsize``).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "line.png")
        >>> with figure(path) as (fig, axes):
        ...     _ = axes[0, 0].plot([0, 1], [1, 0])
        >>> os.path.getsize(path) > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, squeeze=False, **kwargs)
    try:
        yield fig, axes
        for ax in axes.flat:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
