"""Plain-text result tables: estimate ± error, tau_int ± delta tau_int, exact value, pull.

Estimates are printed in the compact ``0.4471(23)`` notation (two significant digits of the
error, in units of the last printed digit of the value); the pull is
``(mean - exact) / error`` in units of the error sigma. `text_table` lays out any table of
(name, format spec) columns, as the benchmarks print them.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .gamma import GammaResult

__all__ = ["ObservableRow", "format_table", "format_value_error", "format_cell", "text_table"]

_NONE = "—"


@dataclass
class ObservableRow:
    """One table row: an observable's Gamma-method result and, if known, its exact value."""

    name: str
    result: GammaResult
    exact: float | None = None

    def pull(self) -> float | None:
        """(mean - exact)/error; None without an exact value, ±inf (or 0) when error == 0."""
        if self.exact is None:
            return None
        diff = self.result.mean - float(self.exact)
        if math.isnan(self.result.error):
            return math.nan
        if self.result.error > 0:
            return diff / self.result.error
        if diff == 0:
            return 0.0
        return math.copysign(math.inf, diff)


def format_value_error(value: float, error: float, digits: int = 2) -> str:
    """``value(error)`` with ``digits`` significant digits of the error, e.g. 0.4471(23).

    An error >= 1 keeps its decimal point, 12.3(2.3); very large or small numbers get a common
    exponent, 1.234(56)e-07; a zero error prints as ``value(0)``.
    """
    value, error = float(value), float(error)
    if not math.isfinite(value):
        return str(value)
    if not math.isfinite(error) or error < 0:
        return f"{value:.6g}(?)"
    if error == 0:
        return f"{value:.6g}(0)"
    digits = max(1, int(digits))
    top = math.floor(math.log10(max(abs(value), error)))
    exp10 = top if (top >= 6 or top <= -5) else 0
    v, e = value / 10.0**exp10, error / 10.0**exp10
    decimals = digits - 1 - math.floor(math.log10(e))
    e_int = round(e * 10.0**decimals)
    if e_int >= 10**digits:  # rounding carried into a new digit, e.g. 0.0999 -> 0.10
        decimals -= 1
        e_int = round(e * 10.0**decimals)
    if decimals > 0 and e >= 1.0:  # error spans the decimal point: 12.3(2.3)
        text = f"{v:.{decimals}f}({e:.{decimals}f})"
    elif decimals > 0:
        text = f"{v:.{decimals}f}({e_int})"
    else:
        text = f"{v:.0f}({round(e)})"
    return text + (f"e{exp10:+03d}" if exp10 else "")


def _format_pm(value: float, error: float) -> str:
    """``value ± error`` with two significant digits of the error."""
    if not (math.isfinite(value) and math.isfinite(error)) or error <= 0:
        return f"{value:.3g} ± {error:.2g}"
    decimals = min(max(0, 1 - math.floor(math.log10(error))), 8)
    return f"{value:.{decimals}f} ± {error:.{decimals}f}"


def _cells(row: ObservableRow) -> list[str]:
    res = row.result
    pull = row.pull()
    return [
        str(row.name),
        format_value_error(res.mean, res.error),
        _format_pm(res.tau_int, res.tau_int_error),
        _NONE if row.exact is None else f"{float(row.exact):.6g}",
        _NONE if pull is None else f"{pull:+.2f}σ",
    ]


def format_table(rows: Sequence[ObservableRow], title: str = "") -> str:
    """Aligned plain-text table: name | estimate | τ_int ± δτ_int | exact | pull (in σ)."""
    header = ["observable", "estimate", "τ_int", "exact", "pull"]
    body = [_cells(row) for row in rows]
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return " | ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(header))
    out.append("-+-".join("-" * w for w in widths))
    out.extend(line(cells) for cells in body)
    return "\n".join(out)


def format_cell(value, spec: str) -> str:
    """``format(value, spec)``, or an em dash (right-aligned to the spec's width) for None and NaN.

    Example:
        >>> format_cell(0.25, "6.3f"), format_cell(None, "6.3f"), format_cell(float("nan"), ".3f")
        (' 0.250', '     —', '—')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = re.match(r"[<>^]?[+\- ]?(\d*)", spec).group(1)
        return format(_NONE, f">{width}") if width else _NONE
    return format(value, spec)


def text_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence | str], *,
               title: str | Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    """A text table: the ``title`` line(s), a header of ``columns`` ((name, format spec) pairs; each name
    aligned and padded as its spec), a rule, one line per row (a sequence of cells, ``format_cell(cell, spec)``
    joined by blanks; a string row is printed as it is), then the ``notes`` lines.

    Example:
        >>> print(text_table([("case", "<6"), ("ESS", "6.3f")], [["a", 0.5], ["b", None], "(a note row)"]))
        case      ESS
        -------------
        a       0.500
        b           —
        (a note row)
    """
    def aligned(name: str, spec: str) -> str:
        align, width = re.match(r"([<>^]?)[+\- ]?(\d*)", spec).groups()
        return format(name, (align or (">" if re.search(r"[defgn%]$", spec) else "<")) + width)

    head = " ".join(aligned(name, spec) for name, spec in columns)
    lines = [title] if isinstance(title, str) else list(title)
    lines += [head, "-" * len(head)]
    lines += [row if isinstance(row, str) else " ".join(format_cell(c, s) for c, (_, s) in zip(row, columns))
              for row in rows]
    return "\n".join(line.rstrip() for line in lines + list(notes))
