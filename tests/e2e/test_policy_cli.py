"""``xds-control policy show|list`` as a user runs it (a subprocess): the table, --json, --set, exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xds_control.config.policy import PRESET_DIR
from xds_control.policies import POLICIES


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "xds_control", "policy", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env)


def _rows(table: str) -> dict[str, tuple[str, str]]:
    """key -> (value, from) from the rich table."""
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 3 and cells[0] not in ("", "key"):
            out[cells[0]] = (cells[1], cells[2])
    return out


def test_show_prints_every_key_with_its_value_and_origin(tmp_path: Path) -> None:
    p = run("show", "threshold", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert str(PRESET_DIR / "threshold.yaml") in p.stdout
    rows = _rows(p.stdout)
    assert rows["l_high"] == ("0.8", "preset")
    assert rows["gpu_mem_trigger"] == ("null", "preset")
    assert rows["load_index.alpha"] == ("0.35", "preset")
    assert rows["traffic.outlier.consecutive_5xx"] == ("5", "default")
    assert rows["policy"] == ('"threshold"', "preset")


def test_show_json_with_set_overrides(tmp_path: Path) -> None:
    p = run("show", "threshold", "--set", "max_replicas=8", "--set", "load_index.alpha=0.3",
            "--set", "load_index.gamma=0.4", "--set", "gpu_mem_trigger=0.9", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["policy"] == "threshold" and doc["source"] == str(PRESET_DIR / "threshold.yaml")
    assert doc["spec"]["max_replicas"] == 8 and doc["spec"]["load_index"]["alpha"] == 0.3
    assert doc["spec"]["load_index"]["beta"] == 0.15  # merged key by key
    keys = {k["key"]: (k["value"], k["from"]) for k in doc["keys"]}
    assert keys["max_replicas"] == (8, "override")
    assert keys["load_index.alpha"] == (0.3, "override")
    assert keys["load_index.beta"] == (0.15, "preset")
    assert keys["gpu_mem_trigger"] == (0.9, "override")
    assert keys["traffic.outlier.consecutive_5xx"] == (5, "default")
    assert [k["key"] for k in doc["keys"]][:3] == ["policy", "min_replicas", "max_replicas"]


def test_show_a_user_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("policy: kpa\nmax_replicas: 12\n")
    p = run("show", str(f), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    keys = {k["key"]: (k["value"], k["from"]) for k in doc["keys"]}
    assert doc["source"] == str(f) and doc["policy"] == "kpa"
    assert keys["max_replicas"] == (12, "file") and keys["policy"] == ("kpa", "file")
    assert keys["min_replicas"][1] == "default"


@pytest.mark.parametrize(("args", "needles"), [
    (["nope"], ["policy = 'nope'", "neither a preset nor a readable YAML file", "threshold, predictive"]),
    (["threshold", "--set", "max_replicas"], ["'max_replicas'", "is not KEY=VALUE"]),
    (["threshold", "--set", "load_index.alpha=5"], ["load_index.alpha = 5", "0.0 <= alpha <= 1.0"]),
    (["threshold", "--set", "max_replicas=0"], ["max_replicas = 0", "1 <= max_replicas <= 100000"]),
    (["threshold", "--set", "bogus=1"], ["bogus = 1", "unknown key", "l_high"]),
    (["threshold", "--set", "l_high=high"], ["l_high = 'high'", "valid number"]),
], ids=["unknown-preset", "missing-equals", "out-of-range", "below-range", "unknown-key", "bad-type"])
def test_bad_input_exits_2_naming_key_and_value(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    p = run("show", *args, cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout == ""
    for n in needles:
        assert n in p.stderr, p.stderr


def test_list_shows_every_preset_with_its_summary(tmp_path: Path) -> None:
    p = run("list", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for name in POLICIES:
        assert f"│ {name} " in p.stdout
    assert "Knative KPA, upstream defaults." in p.stdout
    p = run("list", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [r["name"] for r in doc] == list(POLICIES)
    assert all(r["summary"] == POLICIES[r["name"]].summary for r in doc)
    assert all(r["preset"] == str(PRESET_DIR / f"{r['name']}.yaml") for r in doc)
