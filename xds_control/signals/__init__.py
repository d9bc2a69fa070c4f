"""Signal sources: where per-endpoint load samples come from.

* :class:`~xds_control.signals.scrape.ScrapeSource` — scrape each endpoint's ``/metrics`` directly (default);
* :class:`~xds_control.signals.prometheus.PrometheusSource` — PromQL against a Prometheus server.

Both implement :class:`~xds_control.signals.base.SignalSource` and return a
:class:`~xds_control.signals.base.SignalReport` that marks failed and stale reads.

The gateway arrival rate per pool (``ServiceSignals.request_rate``) has its own port,
:class:`~xds_control.signals.envoy_stats.RequestRateSource`, returning a
:class:`~xds_control.signals.envoy_stats.RateReport`:

* :class:`~xds_control.signals.envoy_stats.EnvoyAdminRateSource` — each Envoy's admin ``/stats``;
* :meth:`PrometheusSource.read_rates <xds_control.signals.prometheus.PrometheusSource.read_rates>` — PromQL;

and :func:`~xds_control.signals.envoy_stats.make_rate_source` builds the one ``controller.signals`` asks for.
"""

from xds_control.signals.base import EndpointReading, SignalReport, SignalSource
from xds_control.signals.envoy_stats import RateReport, RequestRateSource, make_rate_source

__all__ = ["EndpointReading", "SignalReport", "SignalSource", "RateReport", "RequestRateSource", "make_rate_source"]
