"""Node metrics through the OpenTelemetry SDK, exposed in Prometheus text at /metrics.

Each node gets its own MeterProvider and Prometheus registry (several nodes can live in one test
process). Gauges and counters are observed from the node's state at scrape time; histograms are
recorded as things happen. Every metric is named ``ledgerlog_*``, ending in its unit where it has
one (Prometheus base units: seconds, bytes, joules; ``promtool check metrics`` passes on the text).
The two per-request HTTP series are the exception: aggregated by ``HttpRequestMetrics`` in the same
registry and exposed the same way (an SDK record on every request cost more than the request).

Definitions worth stating:
- ``ledgerlog_projection_lag_events{projection}``: log records the projection has yet to fold.
- ``ledgerlog_projection_lag_seconds{projection}``: how long the oldest record the projection has
  not folded yet has been waiting: now minus the wall-clock time this node appended it (0 when
  the projection has folded everything). Records appended before the node started count from
  the node's start. Event timestamps are not used: they are the clients' clocks, and late shares
  or a replayed history carry old ones.
- ``ledgerlog_storage_bytes{component}``: sizes of the files under the data dir, per component
  (``log``, ``projection`` with a ``projection`` label covering all its builds, ``other``: logs,
  keys, snapshots...), summed at most every ``STORAGE_CACHE_SECONDS``.
- ``ledgerlog_storage_capacity_bytes`` / ``ledgerlog_storage_available_bytes``: the data dir's
  filesystem (``os.statvfs``), for the disk-usage alert.
- ``ledgerlog_storage_writable``: 0 while the disk refuses the stores' writes (EIO, ENOSPC; ingest
  answers 503 STORAGE_UNAVAILABLE), 1 otherwise; ``ledgerlog_storage_errors_total{kind}`` counts
  the refused writes and failed probes (``eio``, ``enospc``, ``other``).
- ``ledgerlog_oracle_reading_latency_seconds``: admission time minus the reading's own timestamp.
- ``ledgerlog_energy_traded_joules_total``: settled energy in joules (1 kWh = 3.6 MJ, so a
  milli-kWh is 3600 J); ``ledgerlog_energy_average_price_per_kwh`` stays per kWh, the unit
  prices are set in (base units of the coin).
- ``ledgerlog_tree_size{topic,partition}``: leaves of a partition's Merkle tree (PROTOCOL.md §9);
  ``ledgerlog_tree_head_age_seconds{topic,partition}``: for a partition whose tree is ahead of its
  newest signed head, now minus that head's timestamp (the node's start when it has none yet); 0
  when the newest head covers the whole tree. ``ledgerlog_tree_heads_published_total``: heads this
  node signed and appended to ``_checkpoints``.
- ``ledgerlog_snapshot_last_success_timestamp_seconds``: when the last snapshot of the chain this
  node took (on schedule or by the admin action) was created; at start the newest of the chain in
  snapshot.dir, else the node's start (so "none for 2x ``ledgerlog_snapshot_interval_seconds``"
  counts from there). ``ledgerlog_snapshot_failures_total{stage}``: scheduled snapshots
  (``create``) and prunes (``prune``) that failed.
- ``ledgerlog_pruned_below_height``: the height below which the log was pruned (no event below
  it is held any more; 0 while it never was); ``ledgerlog_prunes_total{outcome}``: retention runs
  of this node (``ok``, ``error``; docs/OPERATIONS.md, "Retention").
"""
from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from ledgerlog.engine import topics as T
from ledgerlog.engine.admission.rules import Out
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.diskfaults import HEALTH
from ledgerlog.ops.data.storage import storage_bytes
from ledgerlog.ops.node.energy_metrics import SettlementGauges
from ledgerlog.projections import energy, payouts

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["JOULES_PER_MILLI_KWH", "STORAGE_CACHE_SECONDS", "AppendTimes", "NodeMetrics"]

log = logging.getLogger("ledgerlog.metrics")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_INTERVAL_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
_READING_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)
STORAGE_CACHE_SECONDS = 5.0
JOULES_PER_MILLI_KWH = 3600  # 1 kWh = 3.6e6 J
MAX_PROVIDER_SERIES = 500   # ledgerlog_energy_settlements_total{provider}: the providers with most energy
_MAX_APPEND_ENTRIES = 10_000  # with _APPEND_GRAIN: about 17 minutes without a scrape
_APPEND_GRAIN = 0.1           # appends closer than this share one entry


class AppendTimes:
    """When records were appended on this node: (wall time, end offsets after the append) per
    admitted chunk (chunks within ``_APPEND_GRAIN`` share an entry), pruned once every projection
    has folded past them. Thread-safe."""

    def __init__(self, ends: Callable[[], dict[str, tuple[int, ...]]],
                 clock: Callable[[], float] = time.time) -> None:
        self._ends, self._clock = ends, clock
        self._lock = threading.Lock()
        self.base: tuple[float, dict[str, tuple[int, ...]]] = (clock(), ends())
        self.entries: deque[tuple[float, dict[str, tuple[int, ...]]]] = deque()

    def note(self) -> None:
        now, ends = self._clock(), self._ends()
        with self._lock:
            if self.entries and now - self.entries[-1][0] < _APPEND_GRAIN:
                self.entries[-1] = (self.entries[-1][0], ends)  # coalesce: ages over-read by < a grain
                return
            self.entries.append((now, ends))
            if len(self.entries) > _MAX_APPEND_ENTRIES:  # nobody scrapes: forget the oldest
                self.base = self.entries.popleft()

    @staticmethod
    def _behind(ends: dict[str, tuple[int, ...]], topics: Iterable[str], pos: dict[tuple[str, int], int]) -> bool:
        return any(e > pos.get((t, p), 0) for t in topics for p, e in enumerate(ends.get(t, ())))

    def oldest_unfolded(self, topics: Iterable[str], pos: dict[tuple[str, int], int]) -> float | None:
        """Append time of the oldest record in ``topics`` not below ``pos``; None if none known."""
        topics = tuple(topics)
        with self._lock:
            if self._behind(self.base[1], topics, pos):
                return self.base[0]
            for t, ends in self.entries:
                if self._behind(ends, topics, pos):
                    return t
        return None

    def prune(self, folded: list[tuple[tuple[str, ...], dict[tuple[str, int], int]]]) -> None:
        """Drop entries every (topics, positions) in ``folded`` has passed."""
        with self._lock:
            while self.entries and not any(self._behind(self.entries[0][1], t, p) for t, p in folded):
                self.base = self.entries.popleft()


#: RFC 9110's methods; any other counts as ``_OTHER`` (as OpenTelemetry's HTTP conventions have
#: it), so that no client mints series with methods of its own
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class HttpRequestMetrics:
    """``ledgerlog_http_request_duration_seconds`` (histogram, buckets ``_LATENCY_BUCKETS``) and
    ``ledgerlog_http_requests_total`` (counter), by ``method``, ``route`` and ``status``: a
    prometheus_client collector in the node's registry, exposed exactly as the OpenTelemetry
    exporter exposes the node's other instruments (same names, help, sorted labels, bucket
    bounds). They are aggregated here because they are recorded on every request: an SDK
    ``record`` + ``add`` costs ~40 µs (attribute cleaning and hashing, locks), more than a
    whole account lookup; this costs ~1 µs. Thread-safe."""

    LABELS = ("method", "route", "status")

    def __init__(self, bounds: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self._series: dict[tuple[str, str, str], list[Any]] = {}  # labels -> [bucket counts, sum]
        self._lock = threading.Lock()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (method if method in _HTTP_METHODS else "_OTHER", route, str(status))
        i = bisect.bisect_left(self.bounds, seconds)  # bucket i holds (bounds[i-1], bounds[i]]
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [[0] * (len(self.bounds) + 1), 0.0]
            series[0][i] += 1
            series[1] += seconds

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Requests so far by (method, route, status)."""
        with self._lock:
            return {k: sum(v[0]) for k, v in self._series.items()}

    def collect(self) -> Iterable[Any]:
        with self._lock:
            rows = [(k, list(v[0]), v[1]) for k, v in self._series.items()]
        if not rows:
            return
        hist = HistogramMetricFamily("ledgerlog_http_request_duration_seconds", "HTTP request latency",
                                     labels=list(self.LABELS), unit="")
        total = CounterMetricFamily("ledgerlog_http_requests", "HTTP requests, by route and status",
                                    labels=list(self.LABELS), unit="")
        for labels, counts, seconds in rows:
            cumulative = list(itertools.accumulate(counts))
            hist.add_metric(list(labels), buckets=[(f"{b}", n) for b, n in zip((*self.bounds, "+Inf"), cumulative)],
                            sum_value=seconds)
            total.add_metric(list(labels), cumulative[-1])
        yield hist
        yield total


class NodeMetrics:
    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        reader = PrometheusMetricReader(registry=self.registry, disable_target_info=True, scope_info_enabled=False)
        self.provider = MeterProvider(metric_readers=[reader], views=[
            View(instrument_name="ledgerlog_block_interval_seconds",
                 aggregation=ExplicitBucketHistogramAggregation(_INTERVAL_BUCKETS)),
            View(instrument_name="ledgerlog_oracle_reading_latency_seconds",
                 aggregation=ExplicitBucketHistogramAggregation(_READING_BUCKETS)),
        ])
        self._storage: tuple[float, dict[tuple[str, str], int]] = (0.0, {})
        self._storage_lock = threading.Lock()
        self._faucet: tuple[float, str | None] = (-1.0, None)  # (key file mtime, address)
        self._started = time.time()  # the head age of a partition that has no head yet counts from here
        log_ = node.chain.log
        self.appends = AppendTimes(lambda: {t: tuple(log_.end_offsets(t)) for t in log_.topics()})
        m = self.provider.get_meter("ledgerlog")
        gauge, counter = m.create_observable_gauge, m.create_observable_counter
        # chain and admission
        gauge("ledgerlog_node_info", [self._info], description="1, labelled with the chain id")
        gauge("ledgerlog_chain_height", [self._height], description="Tip height admitted")
        gauge("ledgerlog_last_block_age_seconds", [self._since_block], description="Seconds since the tip block's timestamp")
        gauge("ledgerlog_mempool_transactions", [self._mempool], description="Transactions waiting in the mempool")
        counter("ledgerlog_events_admitted", [self._counts("admitted", "kind")], description="Lines admitted, by kind")
        counter("ledgerlog_events_rejected", [self._counts("rejected", "code")], description="Lines rejected, by code")
        counter("ledgerlog_events_duplicate", [self._counts("duplicate", "kind")], description="Duplicate lines, by kind")
        gauge("ledgerlog_faucet_balance", [self._faucet_balance],
              description="Balance of the faucet address (<data_dir>/keys/faucet.key), when that key exists")
        # projections
        gauge("ledgerlog_projection_lag_events", [self._lag], description="Log records a projection has yet to fold")
        gauge("ledgerlog_projection_lag_seconds", [self._lag_seconds],
              description="Seconds the oldest record a projection has not folded has waited since it was appended (0: caught up)")
        gauge("ledgerlog_projection_failed", [self._failed],
              description="1 when the projection's fold raised on an event and it stopped (see /v1/status)")
        gauge("ledgerlog_projection_height", [self._proj_height], description="Highest event height a projection reflects")
        counter("ledgerlog_projection_events_folded", [self._folded], description="Events folded since start")
        # the verifiable log (PROTOCOL.md §9)
        counter("ledgerlog_tree_heads_published", [self._heads_published],
                description="Signed tree heads this node appended to _checkpoints")
        gauge("ledgerlog_tree_size", [self._tree_size], description="Leaves (data records) of a partition's Merkle tree")
        gauge("ledgerlog_tree_head_age_seconds", [self._head_age],
              description="Seconds since the newest signed head of a partition whose tree is ahead of it (0: covered)")
        # retention (ops/node/retention.py)
        gauge("ledgerlog_pruned_below_height", [self._pruned_below],
              description="Height below which the log was pruned (0: never pruned)")
        counter("ledgerlog_prunes", [self._prunes], description="Retention runs of this node, by outcome (ok, error)")
        self.prunes: dict[str, int] = {"ok": 0, "error": 0}
        # storage and process
        gauge("ledgerlog_storage_bytes", [self._storage_bytes], description="Bytes on disk per component of the data dir")
        gauge("ledgerlog_storage_capacity_bytes", [self._fs("capacity")], description="Size of the data dir's filesystem")
        gauge("ledgerlog_storage_available_bytes", [self._fs("available")],
              description="Bytes available to the node on the data dir's filesystem")
        gauge("ledgerlog_storage_writable", [self._writable],
              description="1 while the stores take writes, 0 while the disk refuses them (I/O error, full)")
        counter("ledgerlog_storage_errors", [self._storage_errors],
                description="Store writes the disk refused, by kind (eio, enospc, other)")
        # snapshots (ops/node/snapshots.py)
        gauge("ledgerlog_snapshot_interval_seconds", [self._snapshot_interval],
              description="snapshot.every in seconds (0: scheduled snapshots are off)")
        gauge("ledgerlog_snapshot_last_success_timestamp_seconds", [self._snapshot_last],
              description="Unix time of the last successful snapshot of the chain (the node's start when none is known)")
        counter("ledgerlog_snapshot_failures", [self._snapshot_failures],
                description="Scheduled snapshots (stage create) and prunes (stage prune) that failed")
        gauge("ledgerlog_process_resident_memory_bytes", [self._rss], description="Resident set size of the node process")
        gauge("ledgerlog_process_open_fds", [self._open_fds], description="Open file descriptors of the node process")
        # mining pool (projections.payouts.pool)
        gauge("ledgerlog_pool_workers", [self._pool("workers")], description="Pool worker addresses known")
        counter("ledgerlog_pool_shares", [self._pool("shares")], description="Valid pool shares folded")
        gauge("ledgerlog_pool_pending_payouts", [self._pool("pending")], description="Credited but unpaid pool rewards (base units)")
        counter("ledgerlog_pool_paid", [self._pool("paid")], description="Pool rewards paid out (base units)")
        # energy market
        gauge("ledgerlog_energy_providers", [self._market("providers")], description="Registered energy providers")
        gauge("ledgerlog_energy_average_price_per_kwh", [self._market("average_price_per_kwh")],
              description="Average price per kWh over registered providers (base units)")
        counter("ledgerlog_energy_traded_joules", [self._joules_traded], description="Settled (traded) energy, joules")
        counter("ledgerlog_energy_settlements", [self._settlements], description="Settlements recorded, by provider")
        settle = SettlementGauges(node)  # settlement backlog and lag (ops/node/energy_metrics.py)
        gauge("ledgerlog_energy_unsettled_joules", [settle.unsettled],
              description="Energy credited but not settled yet, all providers (1 milli-kWh = 3600 J)")
        gauge("ledgerlog_energy_provider_unsettled_age_seconds", [settle.provider_ages],
              description="Per provider: seconds since its oldest energy not settled yet was credited (chain time)")
        gauge("ledgerlog_energy_settlement_lag_seconds", [settle.lag],
              description="Seconds since the oldest energy not settled yet was credited, all providers (0: all settled)")
        gauge("ledgerlog_energy_last_settlement_age_seconds", [settle.since_settlement],
              description="Seconds since the chain time of the newest settlement (of genesis before any)")
        self.oracle_latency = m.create_histogram(
            "ledgerlog_oracle_reading_latency_seconds", description="Admission time minus the reading's timestamp")
        self.block_interval = m.create_histogram("ledgerlog_block_interval_seconds", description="Time between consecutive blocks (header timestamps)")
        self.http = HttpRequestMetrics()  # per request: aggregated here, not by the SDK (see its doc)
        self.registry.register(self.http)
        self._last_block_ts: int | None = None
        node.admitter.listeners.append(self._on_commit)

    # -- observed at scrape: chain and admission -------------------------------------------------
    def _info(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(1, {"chain_id": self.node.genesis.chain_id})

    def _height(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.node.tip().height)

    def _since_block(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(max(0.0, time.time() - self.node.tip().timestamp / 1000))

    def _mempool(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.node.mempool_size())

    def _counts(self, what: str, label: str) -> Any:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            for (kind, key), n in list(self.node.admitter.counts.items()):
                if kind == what:
                    yield Observation(n, {label: key})
        return observe

    def _faucet_balance(self, _: CallbackOptions) -> Iterable[Observation]:
        address = self._faucet_address()
        if address is not None:
            yield Observation(WriteState(self.node.chain.log).account(address).balance, {"address": address})

    def _faucet_address(self) -> str | None:
        path = os.path.join(self.node.config.keys_dir, "faucet.key")
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return None
        if mtime != self._faucet[0]:
            address = None
            try:
                with open(path, encoding="utf-8") as f:
                    info = json.load(f)
                address = info.get("address")
                if not address and info.get("seed"):
                    from ledgerlog.engine.signing import Signer
                    address = Signer.from_seed(info["seed"]).address
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("cannot read the faucet key %s: %s", path, exc)
            self._faucet = (mtime, address)
        return self._faucet[1]

    # -- projections ------------------------------------------------------------------------------
    def _lag(self, _: CallbackOptions) -> Iterable[Observation]:
        for name, lag in self.node.runner.lag().items():
            yield Observation(lag, {"projection": name})

    def _lag_seconds(self, _: CallbackOptions) -> Iterable[Observation]:
        now = time.time()
        folded = []
        for name, h in list(self.node.runner.handles.items()):
            pos = h.store.positions()
            folded.append((tuple(h.module.TOPICS), pos))
            since = self.appends.oldest_unfolded(h.module.TOPICS, pos)
            yield Observation(0.0 if since is None else max(0.0, now - since), {"projection": name})
        self.appends.prune(folded)

    def _failed(self, _: CallbackOptions) -> Iterable[Observation]:
        for name, h in list(self.node.runner.handles.items()):
            yield Observation(int(h.failed is not None), {"projection": name})

    def _proj_height(self, _: CallbackOptions) -> Iterable[Observation]:
        for name, h in self.node.runner.handles.items():
            yield Observation(h.store.height, {"projection": name})

    def _folded(self, _: CallbackOptions) -> Iterable[Observation]:
        for name, h in self.node.runner.handles.items():
            yield Observation(h.events, {"projection": name})

    # -- the verifiable log -------------------------------------------------------------------------
    def _heads_published(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.node.chain.heads.published)

    def _tree_states(self) -> dict[tuple[str, int], Any]:
        trees = self.node.chain.log.trees
        return {} if trees is None else trees.states()  # (a Kafka log keeps none yet)

    def _tree_size(self, _: CallbackOptions) -> Iterable[Observation]:
        for (topic, p), st in sorted(self._tree_states().items()):
            yield Observation(st.size, {"topic": topic, "partition": str(p)})

    def _head_age(self, _: CallbackOptions) -> Iterable[Observation]:
        now = time.time()
        latest = dict(self.node.chain.heads.latest)
        for (topic, p), st in sorted(self._tree_states().items()):
            head = latest.get((topic, p))
            size, at = (head["head"]["tree_size"], head["head"]["timestamp"] / 1000) if head else (0, self._started)
            yield Observation(max(0.0, now - at) if st.size > size else 0.0, {"topic": topic, "partition": str(p)})

    def _pruned_below(self, _: CallbackOptions) -> Iterable[Observation]:
        point = self.node.chain.log.prune_point()
        yield Observation(point.height if point is not None else 0)

    def _prunes(self, _: CallbackOptions) -> Iterable[Observation]:
        for outcome, n in sorted(self.prunes.items()):
            yield Observation(n, {"outcome": outcome})

    # -- storage and process ----------------------------------------------------------------------
    def storage(self) -> dict[tuple[str, str], int]:
        """``storage_bytes`` of the data dir, recomputed at most every STORAGE_CACHE_SECONDS."""
        with self._storage_lock:
            at, sizes = self._storage
            if time.monotonic() - at >= STORAGE_CACHE_SECONDS or not sizes:
                sizes = storage_bytes(self.node.config.data_dir)
                self._storage = (time.monotonic(), sizes)
            return sizes

    def _storage_bytes(self, _: CallbackOptions) -> Iterable[Observation]:
        for (component, name), n in self.storage().items():
            yield Observation(n, {"component": component, **({"projection": name} if name else {})})

    def _fs(self, which: str) -> Any:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            st = os.statvfs(self.node.config.data_dir)
            yield Observation(st.f_blocks * st.f_frsize if which == "capacity" else st.f_bavail * st.f_frsize)
        return observe

    def _writable(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(1 if HEALTH.writable else 0)

    def _storage_errors(self, _: CallbackOptions) -> Iterable[Observation]:
        for kind, n in HEALTH.error_counts().items():
            yield Observation(n, {"kind": kind})

    def _snapshot_interval(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.node.snapshots.every)

    def _snapshot_last(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.node.snapshots.last_success_or_start())

    def _snapshot_failures(self, _: CallbackOptions) -> Iterable[Observation]:
        for stage, n in dict(self.node.snapshots.failures).items():
            yield Observation(n, {"stage": stage})

    def _rss(self, _: CallbackOptions) -> Iterable[Observation]:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                yield Observation(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, IndexError):  # not Linux: the peak is what is known
            yield Observation(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def _open_fds(self, _: CallbackOptions) -> Iterable[Observation]:
        for d in ("/proc/self/fd", "/dev/fd"):
            try:
                yield Observation(len(os.listdir(d)))
                return
            except OSError:
                continue

    # -- pool and energy (from the projections) ---------------------------------------------------
    def _view(self, name: str) -> Any:
        return self.node.runner.handles[name].store.view()

    def _pool(self, key: str) -> Any:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(payouts.pool(self._view("payouts"))[key])
        return observe

    def _market(self, key: str) -> Any:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(energy.market(self._view("energy"))[key])
        return observe

    def _joules_traded(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(energy.market(self._view("energy"))["traded_milli_kwh"] * JOULES_PER_MILLI_KWH)

    def _settlements(self, _: CallbackOptions) -> Iterable[Observation]:
        for pid, settlements in energy.settlement_counts(self._view("energy"), MAX_PROVIDER_SERIES):
            yield Observation(settlements, {"provider": pid})

    # -- recorded as it happens -----------------------------------------------------------------
    def _on_commit(self, outs: list[Out]) -> None:
        if not outs:
            return
        self.appends.note()
        now_ms = time.time() * 1000
        for o in outs:
            if o.topic == T.READINGS:
                self.oracle_latency.record(max(0.0, (now_ms - o.timestamp) / 1000))

    def on_block(self, timestamp_ms: int) -> None:
        if self._last_block_ts is not None and timestamp_ms > self._last_block_ts:
            self.block_interval.record((timestamp_ms - self._last_block_ts) / 1000)
        self._last_block_ts = timestamp_ms

    def on_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http.observe(route, method, status, seconds)

    def render(self) -> bytes:
        start = time.perf_counter()
        data = generate_latest(self.registry)
        log.debug("metrics scraped in %.1f ms (%d bytes)", (time.perf_counter() - start) * 1000, len(data))
        return data

    def shutdown(self) -> None:
        self.provider.shutdown()
