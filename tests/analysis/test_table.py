"""Result rows, pulls and the plain-text table."""
from __future__ import annotations

import math

import pytest

from latticeflow.analysis import GammaResult, ObservableRow, format_table, format_value_error


def result(mean: float, error: float, tau: float = 1.23, dtau: float = 0.045) -> GammaResult:
    return GammaResult(mean=mean, error=error, error_of_error=0.1 * error, tau_int=tau,
                       tau_int_error=dtau, window=12, n=10_000, n_replicas=2)


@pytest.mark.parametrize("value, error, text", [
    (0.44712, 0.00231, "0.4471(23)"),
    (-3.14159, 0.012, "-3.142(12)"),
    (1.0, 0.0999, "1.00(10)"),
    (12.34, 2.3, "12.3(2.3)"),
    (12345.6, 123.4, "12346(123)"),
    (1.2346e-7, 5.6e-9, "1.235(56)e-07"),
    (2.5e7, 3.1e5, "2.500(31)e+07"),
    (0.5, 0.0, "0.5(0)"),
])
def test_format_value_error(value, error, text):
    assert format_value_error(value, error) == text


def test_pull():
    assert ObservableRow("x", result(1.1, 0.05)).pull() is None
    assert ObservableRow("x", result(1.1, 0.05), exact=1.0).pull() == pytest.approx(2.0)
    assert ObservableRow("x", result(0.9, 0.05), exact=1.0).pull() == pytest.approx(-2.0)
    assert ObservableRow("c", result(1.0, 0.0), exact=1.0).pull() == 0.0
    assert ObservableRow("c", result(1.5, 0.0), exact=1.0).pull() == math.inf
    assert ObservableRow("c", result(0.5, 0.0), exact=1.0).pull() == -math.inf


def test_format_table_content_and_alignment():
    rows = [
        ObservableRow("<phi^2>", result(0.44712, 0.00231), exact=0.4471),
        ObservableRow("chi_2", result(12.34, 0.56, tau=9.47, dtau=0.77)),
        ObservableRow("const", result(1.0, 0.0, tau=0.5, dtau=0.0), exact=1.0),
    ]
    text = format_table(rows, title="phi^4, L = 8")
    lines = text.splitlines()
    assert lines[0] == "phi^4, L = 8"
    assert len(lines) == 2 + 1 + len(rows)  # title, header, rule, rows
    assert len({len(line) for line in lines[1:]}) == 1  # all columns aligned
    assert lines[1].split(" | ")[0].strip() == "observable"
    assert "0.4471(23)" in lines[3] and "1.230 ± 0.045" in lines[3]
    assert "+0.01σ" in lines[3] and "0.4471" in lines[3]
    assert "12.34(56)" in lines[4] and "9.47 ± 0.77" in lines[4]
    assert lines[4].rstrip().endswith("—")  # no exact value, no pull
    assert "+0.00σ" in lines[5]
    assert format_table([]).splitlines()[0].startswith("observable")
