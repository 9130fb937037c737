"""The Kafka-mode projection worker: faust-streaming owns group membership, the runner's folds do
the work, each worker keeping its stores in its own directory.

Unit of ownership: a whole projection. Folds need whole-chain views (chainstate reads the
one-partition ``ledger.blocks``; balances of one address come from five topics keyed differently;
chainstate's pending count and the digests are global), so splitting a projection by event
partition would need cross-worker joins (the one projection kept per account, balances, can instead be
spread over many workers through a repartition topic: streams/shards). Instead a *lease topic* with one partition per
projection (``sorted(projections.ALL)[p]`` owns partition ``p``) is consumed by a faust agent in
the worker group: Kafka's group protocol and faust's assignor hand each partition to exactly one
live member, so the projections split across workers, and a member that leaves (even by
``kill -9``: after the session timeout) has its share reassigned to the survivors. The lease
topic carries no records; faust's committed offsets are irrelevant.

For each owned projection a fold thread runs ``streams.runner.Runner.fold_batch`` over
``<worker_dir>/projections`` (the embedded runner's layout): read from the positions stored in
the projection's RocksDB, decode with ledgerlog's codec, fold, commit state + positions + digest
in one WriteBatch. The stored positions are the source of truth (exactly-once effect): a gained
projection resumes from what *this* worker's store holds (offset 0 if it never had it), never from
a group offset. A gained projection is ``catching_up`` until it has folded to the log end as of
the gain, then ``serving``; only serving projections answer queries.

Queries (served by ops/worker/http.py; the process is ops/worker/run.py): ``FoldEngine.status``
and ``answer``; the owner's URL, which faust's assignor shares among members
(``external_topic_distribution``, keyed by each worker's ``canonical_url``), is
``app.ledgerlog_route``. Derived events: the folds emit none (payouts are decided and recorded
at admission with deterministic ids), so a replay or a rebalance cannot emit twice.

Security: the chain's connection config (``KafkaConfig``, from its ``[kafka]`` table in librdkafka
names: ``security.protocol``, ``sasl.mechanisms``, ``sasl.username``/``sasl.password``,
``ssl.ca.location``, client certificates...) reaches faust as ``broker_credentials``
(``broker_credentials()``), so workers join TLS/SASL clusters with the settings the node's own
clients use."""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledgerlog import projections
from ledgerlog.engine.codec import Codec
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import ConfigError, LogError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.log.kafka_client import logged
from ledgerlog.engine.log.kafka_config import KafkaConfig, Tls

from . import catalog
from .runner import Runner

__all__ = ["NAMES", "FoldEngine", "broker_credentials", "build_app", "ensure_lease_topic",
           "group_id", "lease_app", "lease_names", "ssl_context"]

_log = logging.getLogger("ledgerlog.worker")

#: Lease partition p -> projection NAMES[p] for the built-ins; the data dir's user projections
#: (streams/catalog.py) follow in name order (``lease_names``).
NAMES: tuple[str, ...] = tuple(sorted(projections.ALL))


def lease_names(projections_dir: str | None) -> tuple[str, ...]:
    """The projections the workers fold, in lease partition order: the built-ins, then the user
    projections registered in the data dir (so registering one only adds a partition)."""
    users = sorted(n for n, m in catalog.modules(projections_dir).items() if catalog.is_user(m))
    return NAMES + tuple(users)


def group_id(config: Config, genesis: Genesis) -> str:
    """The faust app id / consumer group of a chain's workers. It starts with ``__`` so the lease
    topic (``<group>.leases``) stays out of the chain's topic listing (``KafkaLog.topics``)."""
    prefix = connection(config).topic_prefix
    return f"__ledgerlog-worker.{prefix}{genesis.hash[:16]}"


def connection(config: Config) -> KafkaConfig:
    """The chain's Kafka connection config (brokers, TLS, SASL); ConfigError off Kafka."""
    kafka = config.kafka_connection()
    if kafka is None:
        raise ConfigError(f"`ledgerlog stream-worker` needs a Kafka chain (log.url kafka://...), not {config.resolved_log_url!r}")
    return kafka


# -- TLS / SASL for faust/aiokafka, from the chain's connection config ------------------------------
_SASL_PASSWORD = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def ssl_context(tls: Tls) -> ssl.SSLContext:
    """An SSL context from the TLS settings: the CA (``ssl.ca.location``, a file or a directory,
    or ``ssl.ca.pem``; the system's trust store otherwise), a client certificate and key
    (``ssl.certificate.location``, ``ssl.key.location``, ``ssl.key.password``), and
    ``ssl.endpoint.identification.algorithm=none`` / ``enable.ssl.certificate.verification=false``."""
    ca = tls.ca_location
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=ca if ca and not os.path.isdir(ca) else None,
            capath=ca if ca and os.path.isdir(ca) else None, cadata=tls.ca_pem or None)
        if tls.certificate_location:
            ctx.load_cert_chain(tls.certificate_location, keyfile=tls.key_location or None,
                                password=tls.key_password or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"[kafka] TLS settings: {exc}") from exc
    if not tls.check_hostname:
        ctx.check_hostname = False
    if not tls.verify_certificate:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def broker_credentials(kafka: KafkaConfig) -> Any:
    """faust's ``broker_credentials`` for a chain's connection config, or None for plaintext.

    The worker is its group's consumer, so ``consumer.``-prefixed settings apply over the
    shared ones. ``security.protocol`` decides, as in librdkafka: SSL gives
    ``faust.SSLCredentials``; SASL_PLAINTEXT / SASL_SSL give ``faust.SASLCredentials`` (PLAIN,
    SCRAM-SHA-256/512 with ``sasl.username``/``sasl.password``) or ``faust.GSSAPICredentials``
    (GSSAPI, librdkafka's default mechanism; ``sasl.kerberos.service.name``), with an SSL context
    for SASL_SSL (``ssl_context``)."""
    import faust

    sec = kafka.security_for("consumer")
    if sec.protocol == "PLAINTEXT":
        return None
    if sec.protocol == "SSL":
        return faust.SSLCredentials(ssl_context(sec.tls))
    tls = ssl_context(sec.tls) if sec.uses_tls else None
    sasl = sec.sasl
    mechanism = sasl.mechanism or "GSSAPI"
    if mechanism in _SASL_PASSWORD:
        if not sasl.username or sasl.password is None:
            raise ConfigError(f"[kafka] SASL {mechanism} needs sasl.username and sasl.password")
        return faust.SASLCredentials(username=sasl.username, password=sasl.password, ssl_context=tls,
                                     mechanism=mechanism)
    if mechanism == "GSSAPI":
        return faust.GSSAPICredentials(kerberos_service_name=sasl.kerberos_service_name or "kafka",
                                       kerberos_domain_name=sasl.kerberos_domain_name or None,
                                       ssl_context=tls, mechanism=mechanism)
    raise ConfigError(f"[kafka] sasl.mechanisms {mechanism!r} is not supported by `ledgerlog worker` "
                      f"(use {', '.join(_SASL_PASSWORD)} or GSSAPI)")


def ensure_lease_topic(config: Config, topic: str, partitions: int = len(NAMES)) -> None:
    """Create the lease topic (one partition per projection), or grow it to that many when a user
    projection was registered since (a partition beyond the names leases nothing)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

    from ledgerlog.engine.log.kafka import TOPIC_CONFIG

    kafka = connection(config)
    admin = AdminClient(logged(kafka.librdkafka("admin")))
    replication = kafka.replication
    fut = admin.create_topics([NewTopic(topic, partitions, replication, config=dict(TOPIC_CONFIG))])[topic]
    try:
        fut.result(timeout=30)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise LogError(f"creating lease topic {topic}: {exc}") from exc
    deadline = time.monotonic() + 30
    while True:  # metadata may lag the creation
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and md.partitions:
            if len(md.partitions) < partitions:
                grow = admin.create_partitions([NewPartitions(topic, partitions)])[topic]
                try:
                    grow.result(timeout=30)
                except KafkaException as exc:  # another worker grew it first: the metadata says
                    _log.info("growing lease topic %s: %s", topic, exc)
                time.sleep(0.1)
                continue
            return
        if time.monotonic() > deadline:
            raise LogError(f"lease topic {topic} not in the metadata after 30 s")
        time.sleep(0.1)


@dataclass
class _Owned:
    gained_at: float
    state: str = "catching_up"           # -> "serving" once folded to the log end as of the gain
    target: dict[str, list[int]] | None = None
    catch_up_s: float | None = None
    resumed_from: int = 0                # records already in this worker's store at the gain
    snapshot: dict[str, Any] = field(default_factory=dict)


class FoldEngine:
    """Folds the owned projections on one thread; ownership changes come from the group."""

    def __init__(self, log: Log, codec: Codec, genesis: Genesis, projections_dir: str, *,
                 batch: int = 5000, idle_wait: float = 0.1, modules: dict[str, Any] | None = None) -> None:
        """``modules``: the user projections to fold beside the built-ins (the data dir's)."""
        self.log, self.codec, self.genesis = log, codec, genesis
        self.modules = dict(modules or {})
        self.projections_dir, self.batch, self.idle_wait = projections_dir, batch, idle_wait
        self._lock = threading.Lock()        # ownership and snapshots
        self._batch_lock = threading.Lock()  # held while a batch folds: a revoke waits for it
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._owned: dict[str, _Owned] = {}
        self._runners: dict[str, Runner] = {}
        self.gains: list[dict[str, Any]] = []  # history of gained projections and catch-up times
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="ledgerlog-fold", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def assign(self, names: set[str]) -> None:
        """The full new assignment: newly gained projections start catching up."""
        now = time.monotonic()
        with self._lock:
            for name in list(self._owned):
                if name not in names:
                    del self._owned[name]
            for name in names:
                if name not in self._owned:
                    self._owned[name] = _Owned(gained_at=now)
        _log.info("assigned %s", sorted(names))
        self._wake.set()

    def revoke(self, names: set[str]) -> None:
        """Stop folding ``names``; returns once no batch of theirs is in flight."""
        with self._lock:
            for name in names:
                self._owned.pop(name, None)
        with self._batch_lock:
            pass
        _log.info("revoked %s", sorted(names))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                folded = 0
                with self._lock:
                    names = sorted(self._owned)
                for name in names:
                    with self._batch_lock:
                        with self._lock:
                            own = self._owned.get(name)
                        if own is None or self._stop.is_set():
                            continue
                        folded += self._step(name, own)
                self._close_unowned()
                if not folded:
                    self._wake.wait(self.idle_wait)
                    self._wake.clear()
        except Exception as exc:  # noqa: BLE001 - surfaced on /status; the app's watch timer stops the worker
            _log.exception("fold thread failed")
            self.error = f"{type(exc).__name__}: {exc}"

    def _runner(self, name: str) -> Runner:
        r = self._runners.get(name)
        if r is None:
            r = self._runners[name] = Runner(self.log, self.codec, self.genesis, self.projections_dir,
                                             names=[name], batch=self.batch, modules=self.modules)
        return r

    def _step(self, name: str, own: _Owned) -> int:
        runner = self._runner(name)
        handle = runner.handles[name]
        ends = {t: self.log.end_offsets(t) for t in handle.module.TOPICS}
        if own.target is None:
            own.target = ends
            own.resumed_from = sum(handle.store.positions().values())
        n = runner.fold_batch(handle, until=ends)
        pos = handle.store.positions()
        if own.state == "catching_up" and Runner._reached(handle, own.target):
            own.state = "serving"
            own.catch_up_s = round(time.monotonic() - own.gained_at, 3)
            with self._lock:
                self.gains.append({"projection": name, "catch_up_s": own.catch_up_s,
                                   "resumed_from": own.resumed_from, "target": sum(pos.values())})
            _log.info("%s caught up in %.3f s", name, own.catch_up_s)
        snap = {"state": own.state, "digest": handle.store.digest_hex(), "height": handle.store.height,
                "positions": {t: [pos.get((t, p), 0) for p in range(len(e))] for t, e in ends.items()},
                "lag": sum(max(0, e - pos.get((t, p), 0)) for t, es in ends.items() for p, e in enumerate(es)),
                "events_folded": handle.events, "catch_up_s": own.catch_up_s, "resumed_from": own.resumed_from, "version": handle.version}
        with self._lock:
            own.snapshot = snap
        return n

    def _close_unowned(self) -> None:
        with self._lock:
            gone = [n for n in self._runners if n not in self._owned]
        for name in gone:
            self._runners.pop(name).close()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"owned": {n: dict(o.snapshot) or {"state": o.state} for n, o in sorted(self._owned.items())},
                    "gains": list(self.gains), "error": self.error}

    def answer(self, name: str) -> dict[str, Any] | None:
        """The projection's provenance if this worker owns and serves it, else None."""
        with self._lock:
            own = self._owned.get(name)
            return dict(own.snapshot) if own is not None and own.state == "serving" else None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for r in self._runners.values():
            r.close()
        self._runners.clear()


def build_app(config: Config, genesis: Genesis, engine: FoldEngine, *, worker_dir: str, url: str,
              session_timeout: float = 6.0, names: tuple[str, ...] = NAMES) -> Any:
    """The faust app: one agent on the lease topic; assignment signals drive the fold engine.
    ``names``: the projections by lease partition (``lease_names``); every worker of a chain must
    have the same (the same user projections registered)."""
    app_id = group_id(config, genesis)
    lease = f"{app_id}.leases"

    def names_of(parts: set[int]) -> set[str]:
        return {names[p] for p in parts if p < len(names)}

    app = lease_app(config, app_id=app_id, lease=lease, partitions=len(names),
                    assign=lambda parts: engine.assign(names_of(parts)),
                    revoke=lambda parts: engine.revoke(names_of(parts)),
                    failed=lambda: engine.error, worker_dir=worker_dir, url=url, session_timeout=session_timeout)
    owner = app.ledgerlog_owner
    app.ledgerlog_route = lambda name: owner(names.index(name)) if name in names else None
    return app


def lease_app(config: Config, *, app_id: str, lease: str, partitions: int, assign: Callable[[set[int]], None],
              revoke: Callable[[set[int]], None], failed: Callable[[], str | None], worker_dir: str, url: str,
              session_timeout: float = 6.0) -> Any:
    """A faust app whose one agent consumes the record-less ``lease`` topic in group ``app_id``:
    ``assign`` gets the full new set of lease partitions this member holds, ``revoke`` the ones it
    loses (called on an executor: it may wait for a batch). ``app.ledgerlog_owner(p)`` is the URL
    of the member holding lease partition ``p`` (faust's assignor shares each member's
    ``canonical_url``); ``failed()`` returning an error takes the worker down, releasing its leases."""
    import faust

    brokers = [f"kafka://{h.strip()}" for h in connection(config).bootstrap.split(",") if h.strip()]
    credentials = broker_credentials(connection(config))  # TLS / SASL from the [kafka] table
    app = faust.App(app_id, broker=brokers, broker_session_timeout=session_timeout,
                    **({"broker_credentials": credentials} if credentials is not None else {}),
                    broker_heartbeat_interval=min(1.0, session_timeout / 3), web_enabled=False,
                    canonical_url=url, topic_allow_declare=False, topic_disable_leader=True,
                    store="memory://", value_serializer="raw", consumer_auto_offset_reset="earliest",
                    datadir=os.path.join(worker_dir, "faust"), autodiscover=False)
    topic = app.topic(lease, partitions=partitions, value_serializer="raw", key_serializer="raw")

    @app.agent(topic, name="lease")
    async def _lease(stream: Any) -> None:  # the lease topic carries no records
        async for _ in stream:
            pass

    def parts_of(tps: Any) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == lease and tp.partition < partitions}

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust: handler(sender, tps, signal=...)
    async def _revoked(sender: Any, revoked: Any, **_: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, revoke, parts_of(revoked))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: Any, **_: Any) -> None:
        assign(parts_of(assigned))

    def owner(p: int) -> str | None:
        for member, tps in dict(getattr(app.assignor, "external_topic_distribution", None) or {}).items():
            if p in tps.get(lease, ()):
                return str(member)
        return None

    @app.timer(1.0)
    async def _watch() -> None:  # a failed fold thread takes the worker down, releasing its leases
        error = failed()
        if error is not None:
            await app.crash(RuntimeError(f"fold thread failed: {error}"))

    app.ledgerlog_owner = owner  # type: ignore[attr-defined]
    app.ledgerlog_lease = lease  # type: ignore[attr-defined]
    return app
