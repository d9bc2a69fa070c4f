"""A wheel built from the tree ships the presets and the admin proto, and runs from where it is installed.

The wheel is built from a copy of the tree (setuptools writes build/ and *.egg-info next to the sources),
offline (--no-index, --no-build-isolation: setuptools and wheel come from the venv), and installed with
``pip install --target``. The installed copy is then run from another directory with only PYTHONPATH
pointing at it; the test checks that it, not the venv's editable install, is what got imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.name for p in (ROOT / "xds_control" / "config" / "presets").glob("*.yaml"))


def _pip(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--disable-pip-version-check"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT / "xds_control", src / "xds_control",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*.tmp"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist, target = tmp / "dist", tmp / "site"
    _pip("wheel", "--no-build-isolation", "-w", str(dist), str(src))
    (wheel,) = dist.glob("xds_control-*.whl")
    _pip("install", "--target", str(target), str(wheel))
    return wheel, target


def test_wheel_contains_the_presets_and_the_admin_proto(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    assert len(PRESETS) == 5
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in PRESETS:
        assert f"xds_control/config/presets/{preset}" in names
    assert "xds_control/admin/admin.proto" in names
    assert "xds_control/cli/policy.py" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_installed_wheel_shows_the_shipped_preset(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = installed
    # A clean environment: only PATH and PYTHONPATH, run from a directory that holds no sources.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", "import xds_control; print(xds_control.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout  # not the editable install
    p = subprocess.run([sys.executable, "-m", "xds_control", "policy", "show", "threshold", "--json"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert Path(doc["source"]).is_relative_to(target)
    assert Path(doc["source"]) == target / "xds_control" / "config" / "presets" / "threshold.yaml"
    # the file's values; where they differ from the class defaults (gpu_mem_trigger 0.88, max_replicas 100,
    # load_index.kv_weight 0) this shows the installed preset file was read
    assert doc["spec"]["l_high"] == 0.8 and doc["spec"]["gpu_mem_trigger"] is None
    assert doc["spec"]["max_replicas"] == 64 and doc["spec"]["load_index"]["kv_weight"] == 0.15
    keys = {k["key"]: (k["value"], k["from"]) for k in doc["keys"]}
    assert keys["l_high"] == (0.8, "preset") and keys["gpu_mem_trigger"] == (None, "preset")
    listed = subprocess.run([sys.executable, "-m", "xds_control", "policy", "list", "--json"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert all(Path(r["preset"]).is_relative_to(target) for r in json.loads(listed.stdout))
