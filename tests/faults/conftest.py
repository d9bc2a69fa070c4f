"""The fault-injection suite (marker ``faults``): short forms in ``make test``, full forms in ``make faults``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import FORM, RESULTS  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault-injection suite (make faults; short forms in make test)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section(f"fault injection ({FORM} form)")
    for row in RESULTS:
        figures = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("scenario", "form", "at"))
        tr.write_line(f"{row['scenario']}: {figures}")
