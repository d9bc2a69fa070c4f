"""Signal sources: where per-endpoint load samples come from.

* :class:`~xds_control.signals.scrape.ScrapeSource` — scrape each endpoint's ``/metrics`` directly (default);
* :class:`~xds_control.signals.prometheus.PrometheusSource` — PromQL against a Prometheus server.

Both implement :class:`~xds_control.signals.base.SignalSource` and return a
:class:`~xds_control.signals.base.SignalReport` that marks failed and stale reads.
"""

from xds_control.signals.base import EndpointReading, SignalReport, SignalSource

__all__ = ["EndpointReading", "SignalReport", "SignalSource"]
