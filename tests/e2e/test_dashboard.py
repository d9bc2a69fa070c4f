"""The live dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright from PyPI).

A control plane with an autoscaled pool of local replicas and a real Envoy: the page shows the replicas, plots,
decisions and the proxy's sync state; raising ``min_replicas`` through the admin API adds replica rows to the
page within seconds, without a reload. ``serve`` prints the dashboard's URL, and the page loads nothing from
outside the control plane.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, sync_playwright

from support.admin import ROOT, Served, md, pb, token_config
from support.envoy import Envoy
from support.ports import free_port

from xds_control.config import parse_config
from xds_control.runtime.admin_port import RuntimeAdminPort
from xds_control.runtime.app import ControlPlane

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"


def chromium_or_skip() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        pytest.skip("Chromium not installed: the dashboard test needs Debian's chromium "
                    "(apt-get install -y --no-install-recommends chromium, as .ci/run does)")
    return path


def config(listener: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener}],
        "services": [
            {"name": "llm", "tenant": "team-a", "pools": [{
                "name": "gpu",
                "autoscale": {
                    "policy": "threshold", "initial_replicas": 1,
                    "overrides": {"min_replicas": 1, "max_replicas": 4, "gpu_mem_trigger": 0.99,
                                  "traffic": {"warmup_s": 0, "ramp_window_s": 0, "drain_timeout_s": 3}},
                    "replica": {"profile": "tiny", "load_delay_s": 0.5, "zones": ["zone-a", "zone-b"]},
                },
            }]},
        ],
        "controller": {"tick_s": 0.25},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
        "admin": {"port": 0, "tokens": token_config()},
    }


class ServedWithDashboard(Served):
    """:class:`Served` with the metrics port open (it serves the dashboard)."""

    async def _start(self, cfg: dict[str, Any], kw: dict[str, Any]) -> ControlPlane:
        cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=0, admin_port=0, **kw)
        await cp.start()
        return cp


def rows(page: Page) -> list[str]:
    return page.locator('section.pool[data-pool="gpu"] tbody tr[data-replica]').evaluate_all(
        "rs => rs.map(r => r.dataset.replica)")


def test_dashboard_shows_the_fleet_and_follows_a_scale_up() -> None:
    chromium = chromium_or_skip()
    with ServedWithDashboard(config(free_port())) as sv:
        url = sv.cp.dashboard_url
        assert url == f"http://127.0.0.1:{sv.cp.ports.metrics}/"
        envoy = Envoy("dashboard-test", sv.cp.ports.xds).start()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, headless=True)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    outside: list[str] = []
                    page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
                    errors: list[str] = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page.goto(url)
                    assert page.title() == "xds-control dashboard"

                    # one replica, as the admin port sees it, in the fleet table
                    page.wait_for_function("() => document.querySelectorAll("
                                           "'section.pool[data-pool=\"gpu\"] tbody tr[data-replica]').length === 1",
                                           timeout=20_000)
                    view = sv.run(lambda: RuntimeAdminPort(sv.cp).pool_view("gpu"))
                    assert rows(page) == [view.last_tick.endpoints[0].replica_id]
                    row = page.locator('section.pool[data-pool="gpu"] tbody tr[data-replica]').first
                    page.wait_for_function("() => document.querySelector("
                                           "'section.pool[data-pool=\"gpu\"] tbody tr[data-replica]')"
                                           "?.innerText.includes('serving')", timeout=20_000)
                    assert "zone-a" in row.inner_text()
                    headers = page.locator('section.pool[data-pool="gpu"] thead th').all_inner_texts()
                    assert headers == ["Replica", "Endpoint", "Zone", "State", "Phase", "Weight", "Load", "Running",
                                       "Queue", "KV %", "TTFT"]
                    # the proxy and its sync state; decisions with explanations; the plots
                    page.wait_for_selector('#proxy-rows tr[data-node="dashboard-test"]', timeout=20_000)
                    page.wait_for_function("() => document.querySelector('#proxy-rows').innerText"
                                           ".includes('SYNCED')", timeout=10_000)
                    page.wait_for_selector("#decision-rows tr td.explain", timeout=10_000)
                    assert page.locator("#decision-rows td.explain").first.inner_text().strip()
                    page.wait_for_selector("#plot-pools figure.chart svg path.line", state="attached",
                                           timeout=10_000)
                    captions = page.locator("#plot-pools figcaption").all_inner_texts()
                    assert {"Offered load (gateway requests/s)", "Replicas", "EDS weight per replica",
                            "Mean time to first token (s)"} <= set(captions)
                    assert "signals lost" not in page.locator("#alert-list").inner_text()

                    # the fleet scales: rows appear on the page without a reload
                    sv.stub.SetReplicaBounds(pb.SetReplicaBoundsRequest(service="llm", min_replicas=3),
                                             metadata=md("a-operator"))
                    page.wait_for_function("() => document.querySelectorAll("
                                           "'section.pool[data-pool=\"gpu\"] tbody tr[data-replica]').length === 3",
                                           timeout=15_000)
                    assert len(set(rows(page))) == 3
                    page.wait_for_function("() => document.querySelector('#event-rows')"
                                           ".innerText.split('scale_up').length - 1 >= 3", timeout=10_000)
                    assert "Target\n3" in page.locator('section.pool[data-pool="gpu"] .summary').inner_text()
                    assert errors == [], errors
                    assert outside == [], f"the page loaded something from outside the control plane: {outside}"
                finally:
                    browser.close()
        finally:
            envoy.stop()


def test_serve_prints_the_dashboard_url(tmp_path: Path) -> None:
    cfg = tmp_path / "static.yaml"
    cfg.write_text(yaml.safe_dump({
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": free_port()}],
        "services": [{"name": "web", "pools": [{"name": "web", "endpoints": [{"address": "127.0.0.1", "port": 9}]}]}],
    }))
    proc = subprocess.Popen([sys.executable, "-m", "xds_control.cli", "serve", "--config", str(cfg),
                             "--xds-port", "0", "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["dashboard_url"] == f"http://127.0.0.1:{line['metrics_port']}/"
        with urllib.request.urlopen(line["dashboard_url"], timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/html") and b"dashboard.js" in r.read()
        with urllib.request.urlopen(line["dashboard_url"] + "api/state", timeout=5) as r:
            state = json.loads(r.read())
        # a static pool: its endpoints as published, no controller
        (pool,) = state["pools"]
        assert (pool["pool"], pool["autoscaled"], pool["endpoints"][0]["key"]) == ("web", False, "127.0.0.1:9")
        for name in ("dashboard.js", "dashboard.css"):
            with urllib.request.urlopen(line["dashboard_url"] + name, timeout=5) as r:
                assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
