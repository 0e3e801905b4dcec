"""The fault suite prints how many failure points it injected, and how many rows were lost or miscounted."""
from __future__ import annotations

from tests.faults.injector import TOTALS


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if TOTALS["cases"]:
        terminalreporter.write_line(
            f"fault suite: {TOTALS['points']} failure points injected in {TOTALS['cases']} cases; "
            f"{TOTALS['lost']} rows lost, miscounted or silently wrong")
