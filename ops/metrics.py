"""Node metrics through the OpenTelemetry SDK, exposed in Prometheus text at /metrics.

Each node gets its own MeterProvider and Prometheus registry (several nodes can live in one test
process). Gauges and counters are observed from the node's state at scrape time; histograms are
recorded as things happen."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from .node import Node

__all__ = ["NodeMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_INTERVAL_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class NodeMetrics:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.registry = CollectorRegistry()
        reader = PrometheusMetricReader(registry=self.registry, disable_target_info=True, scope_info_enabled=False)
        self.provider = MeterProvider(metric_readers=[reader], views=[
            View(instrument_name="ledgerlog_http_request_duration_seconds",
                 aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS)),
            View(instrument_name="ledgerlog_block_interval_seconds",
                 aggregation=ExplicitBucketHistogramAggregation(_INTERVAL_BUCKETS)),
        ])
        m = self.provider.get_meter("ledgerlog")
        gauge, counter = m.create_observable_gauge, m.create_observable_counter
        gauge("ledgerlog_chain_height", [self._height], description="Tip height admitted")
        gauge("ledgerlog_seconds_since_last_block", [self._since_block], description="Seconds since the tip block's timestamp")
        gauge("ledgerlog_mempool_size", [self._mempool], description="Transactions waiting in the mempool")
        gauge("ledgerlog_projection_lag_events", [self._lag], description="Log records a projection has yet to fold")
        gauge("ledgerlog_projection_height", [self._proj_height], description="Highest event height a projection reflects")
        counter("ledgerlog_events_admitted", [self._counts("admitted", "kind")], description="Lines admitted, by kind")
        counter("ledgerlog_events_rejected", [self._counts("rejected", "code")], description="Lines rejected, by code")
        counter("ledgerlog_events_duplicate", [self._counts("duplicate", "kind")], description="Duplicate lines, by kind")
        counter("ledgerlog_projection_events_folded", [self._folded], description="Events folded since start")
        self.block_interval = m.create_histogram("ledgerlog_block_interval_seconds", description="Time between consecutive blocks (header timestamps)")
        self.http_latency = m.create_histogram("ledgerlog_http_request_duration_seconds", description="HTTP request latency")
        self.http_requests = m.create_counter("ledgerlog_http_requests", description="HTTP requests, by route and status")
        self._last_block_ts: int | None = None

    # -- observed at scrape ---------------------------------------------------------------------
    def _height(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.node.tip().height)

    def _since_block(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(max(0.0, time.time() - self.node.tip().timestamp / 1000))

    def _mempool(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.node.mempool_size())

    def _lag(self, _: CallbackOptions) -> Iterable[Observation]:
        for name, lag in self.node.runner.lag().items():
            yield Observation(lag, {"projection": name})

    def _proj_height(self, _: CallbackOptions) -> Iterable[Observation]:
        for name, h in self.node.runner.handles.items():
            yield Observation(h.store.height, {"projection": name})

    def _folded(self, _: CallbackOptions) -> Iterable[Observation]:
        for name, h in self.node.runner.handles.items():
            yield Observation(h.events, {"projection": name})

    def _counts(self, what: str, label: str) -> Any:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            for (kind, key), n in list(self.node.admitter.counts.items()):
                if kind == what:
                    yield Observation(n, {label: key})
        return observe

    # -- recorded as it happens -----------------------------------------------------------------
    def on_block(self, timestamp_ms: int) -> None:
        if self._last_block_ts is not None and timestamp_ms > self._last_block_ts:
            self.block_interval.record((timestamp_ms - self._last_block_ts) / 1000)
        self._last_block_ts = timestamp_ms

    def on_request(self, route: str, method: str, status: int, seconds: float) -> None:
        attrs = {"route": route, "method": method, "status": str(status)}
        self.http_latency.record(seconds, attrs)
        self.http_requests.add(1, attrs)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown()
