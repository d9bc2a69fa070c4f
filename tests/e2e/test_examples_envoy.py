"""Envoy itself (``envoy --mode validate``) accepts what every file in examples/ would serve.

``xds-control validate --envoy`` inlines the built snapshot into a static bootstrap (EDS clusters as
STATIC ones, RDS inline) and has the real Envoy validate it. The directory is listed at collection
time, so a new example is covered without touching this file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xds_control.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(p for p in EXAMPLES.iterdir() if p.is_file())

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_envoy_accepts_the_resources_an_example_serves(path: Path) -> None:
    cfg = load_config(path)
    pools = sum(len(s.pools) for s in cfg.services)
    p = subprocess.run([sys.executable, "-m", "xds_control.cli", "validate", "--envoy", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    n = len(cfg.listeners)
    assert f"valid (CDS={pools}, EDS={pools}, LDS={n}, RDS={n})" in p.stdout, p.stdout
