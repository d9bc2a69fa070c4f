"""A real Prometheus (Debian's package) scraping targets listed in a file_sd file the test keeps current."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from support.ports import free_port

PROMETHEUS = shutil.which("prometheus")


class FileSdPrometheus:
    """A real Prometheus scraping the targets in a file_sd file; stop() and start() keep port and data."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="xds-faults-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = self.dir / "targets.json"
        self.set_targets([])
        (self.dir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: replicas\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n"
            f"    file_sd_configs: [{{files: ['{self.targets}'], refresh_interval: 1s}}]\n")
        self.log = open(self.dir / "prometheus.log", "ab")
        self.proc: subprocess.Popen[bytes] | None = None

    def set_targets(self, targets: list[str]) -> None:
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets}]))
        tmp.replace(self.targets)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [PROMETHEUS or "prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def up_count(self) -> int:
        """How many targets the last scrape found up (0 while Prometheus is not answering)."""
        url = f"{self.url}/api/v1/query?query={urllib.parse.quote('sum(up)')}"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                res = json.load(r)["data"]["result"]
            return int(float(res[0]["value"][1])) if res else 0
        except (OSError, ValueError, KeyError, IndexError):
            return 0
